"""The write-ahead journal of a local index: the changes made since its base version was written.

``IDX/journal-<base>.log`` (``<base>`` the version folder it applies to, so a journal never meets
another base) is a header frame and then one frame per commit (one ``save()``), appended and
fsynced before the commit returns. A frame::

    b"SJR1" | payload length (uint64 LE) | CRC32 of length and payload (uint32 LE) | payload

The header's payload is JSON (``{"base": ..., "bits": ..., "id_kind": ...}``); a commit's payload
is a 4-byte length, JSON ``{"ops": [...]}`` describing each operation (``add``, ``delete``,
``upsert``) and its arrays (dtype, shape), then the arrays' raw bytes in that order. No pickle.

Reading stops at the first frame that is incomplete or fails its CRC: that is the tail of a commit
a crash interrupted, which was never acknowledged; the next writer truncates it before appending.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SchnError

MAGIC = b"SJR1"
FRAME = struct.Struct("<4sQI")
MAX_FRAME = 1 << 34  # a length beyond this is damage, not a commit
DTYPES = {"u1", "i8"}  # plus "S<n>" byte strings


@dataclass
class Op:
    """One change: ``add``/``upsert`` (codes, stored ids, packed label rows or None, path bytes or
    None) or ``delete`` (stored ids)."""

    kind: str
    ids: np.ndarray
    codes: np.ndarray | None = None
    labels: np.ndarray | None = None
    paths: np.ndarray | None = None
    class_names: list | None = None

    @property
    def items(self) -> int:
        return len(self.ids)


@dataclass
class Contents:
    ops: list = field(default_factory=list)
    end: int = 0  # bytes of valid frames (0: no journal)
    items: int = 0  # items the ops touch (what the compaction threshold counts)
    torn: bool = False  # bytes after ``end`` that are not a complete frame


class Changed(Exception):
    """Another writer appended to the journal since this index read it."""


def frame(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return FRAME.pack(MAGIC, len(payload), zlib.crc32(length + payload)) + payload


def _frames(raw: bytes, start: int = 0):
    """(offset after, payload) of each valid frame from ``start``, stopping at the first bad one."""
    at = start
    while at + FRAME.size <= len(raw):
        magic, length, crc = FRAME.unpack_from(raw, at)
        end = at + FRAME.size + length
        if magic != MAGIC or length > MAX_FRAME or end > len(raw):
            return
        payload = raw[at + FRAME.size:end]
        if zlib.crc32(struct.pack("<Q", length) + payload) != crc:
            return
        yield end, payload
        at = end


def header(base: str, bits: int, id_kind: str) -> bytes:
    return frame(json.dumps({"base": base, "bits": bits, "id_kind": id_kind}).encode())


def encode(ops: list[Op]) -> bytes:
    """One commit's frame."""
    metas, blobs = [], []
    for op in ops:
        arrays = []
        for name in ("ids", "codes", "labels", "paths"):
            a = getattr(op, name)
            if a is None:
                continue
            a = np.ascontiguousarray(a)
            arrays.append([name, a.dtype.str.lstrip("<>|="), list(a.shape)])
            blobs.append(a.tobytes())
        meta = {"op": op.kind, "arrays": arrays}
        if op.class_names is not None:
            meta["class_names"] = list(op.class_names)
        metas.append(meta)
    head = json.dumps({"ops": metas}).encode()
    return frame(struct.pack("<I", len(head)) + head + b"".join(blobs))


def _decode(payload: bytes, where) -> list[Op]:
    """The ops of a commit whose CRC matched; a frame that still does not parse is damage."""
    try:
        (n,) = struct.unpack_from("<I", payload)
        meta = json.loads(payload[4:4 + n])
        at, ops = 4 + n, []
        for m in meta["ops"]:
            if m["op"] not in ("add", "delete", "upsert"):
                raise ValueError(f"unknown op {m['op']!r}")
            arrays = {}
            for name, dtype, shape in m["arrays"]:
                if dtype not in DTYPES and not (dtype.startswith("S") and dtype[1:].isdigit()):
                    raise ValueError(f"dtype {dtype!r}")
                count = int(np.prod(shape)) if shape else 1
                size = np.dtype(dtype).itemsize * count
                if at + size > len(payload):
                    raise ValueError("arrays past the frame")
                arrays[name] = np.frombuffer(payload, dtype=dtype, count=count, offset=at).reshape(shape)
                at += size
            ops.append(Op(m["op"], arrays["ids"], arrays.get("codes"), arrays.get("labels"), arrays.get("paths"),
                          m.get("class_names")))
        return ops
    except (ValueError, KeyError, TypeError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchnError(f"index journal {where} is damaged ({exc}); restore the index from a backup or rebuild it") from None


def read(path: Path, base: str, bits: int) -> Contents:
    """The valid commits of the journal at ``path`` for base version ``base`` (none if absent)."""
    path = Path(path)
    if not path.is_file():
        return Contents()
    raw = path.read_bytes()
    frames = _frames(raw)
    first = next(frames, None)
    if first is None:  # a crash while the journal was created: nothing was acknowledged
        return Contents(torn=len(raw) > 0)
    end, payload = first
    try:
        head = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError):
        head = None
    if not isinstance(head, dict) or head.get("base") != base or head.get("bits") != bits:
        raise SchnError(f"index journal {path} does not belong to base version {base}; "
                        "restore the index from a backup or rebuild it")
    out = Contents(end=end)
    for end, payload in frames:
        ops = _decode(payload, path)
        out.ops.extend(ops)
        out.items += sum(op.items for op in ops)
        out.end = end
    out.torn = out.end < len(raw)
    return out


def append(path: Path, expected_end: int, prefix: bytes, commit: bytes) -> int:
    """Append one commit frame at ``expected_end`` (the end this writer read) and fsync it; returns
    the new end. ``prefix`` (the header) is written first when the journal is new. A torn tail
    after ``expected_end`` is cut off; a complete frame there means another writer committed:
    :class:`Changed`. The caller holds the index's writer lock."""
    path = Path(path)
    new = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size < expected_end:
            raise Changed()
        if size > expected_end:
            tail = os.pread(fd, size - expected_end, expected_end)
            if next(_frames(tail), None) is not None:
                raise Changed()
            os.ftruncate(fd, expected_end)
        data = (prefix if expected_end == 0 else b"") + commit
        written = os.pwrite(fd, data, expected_end)
        if written != len(data):
            raise OSError(f"short write to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        from ..fileio import fsync_path

        fsync_path(path.parent)
    return expected_end + len(data)
