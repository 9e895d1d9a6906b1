"""Atomic file writes: write to a temporary file in the target folder, then rename.

A crash or Ctrl-C mid-write leaves either the previous file or nothing, never half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path, suffix: str = "", *, sync: bool = True, fixed_tmp: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else it is removed.

    ``suffix`` keeps writers that insist on an extension (``np.save``, ``savefig``) from renaming it.
    ``sync``: the bytes are fsynced before the rename (``False``: the caller makes many files
    durable at once). ``fixed_tmp``: the temporary is always ``.<name>.tmp`` (for one writer at a
    time), so a killed writer leaves at most that one file, which the next write replaces.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fixed_tmp:  # open() gives the mode the umask allows
        tmp = str(path.with_name(f".{path.name}.tmp{suffix}"))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        os.close(fd)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        try:  # mkstemp makes the file 0600; a written file gets the mode open() would give it
            os.fchmod(fd, 0o666 & ~current_umask())
        finally:
            os.close(fd)
    try:
        yield Path(tmp)
        if sync:
            fsync_path(tmp)  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it, which races with
    other threads creating files); Linux reports it in /proc/self/status."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str, **options) -> Path:
    """``text`` at ``path``, atomically and fsynced (``options``: those of :func:`atomic_path`)."""
    with atomic_path(path, **options) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj, **options) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n", **options)


def _torch_safe_globals() -> list:
    """What schn's torch files hold beside tensors and plain Python values: NumPy arrays of numbers
    (the sampler's queue, NumPy's RNG state). Object arrays stay refused: no ObjectDType here."""
    import numpy as np
    from numpy._core.multiarray import _reconstruct

    dtypes = [type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                          "uint64", "float16", "float32", "float64")]
    return [_reconstruct, np.ndarray, np.dtype, bytes, *dtypes]


def read_torch(path: str | Path, fmt: str, kind: str, remedy: str) -> dict:
    """A dict saved by ``torch.save`` whose ``format`` is ``fmt``; a damaged or foreign file ends
    in one line naming ``kind`` (``checkpoint``) and what to do (``remedy``).

    Read with ``weights_only=True``: a pickle that names any other callable (``os.system``, say)
    is refused before anything in it runs."""
    import pickle

    import torch

    from .errors import SchnError

    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's refusal of a global outside the allow-list
        what = str(exc).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0][:160]
        raise SchnError(f"refusing to read {path}: it is not a plain schn {kind} ({what}); "
                        f"only open {kind}s you wrote, or {remedy}") from None
    except Exception as exc:  # a truncated or foreign file
        raise SchnError(f"cannot read {path} ({type(exc).__name__}); the {kind} is damaged, {remedy}") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise SchnError(f"{path} is not a schn {kind} (format {fmt})")
    return obj


def fsync_path(path: str | Path) -> None:
    """Make a file's bytes, or a folder's entries (a rename into it), durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
