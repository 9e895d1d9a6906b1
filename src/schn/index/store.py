"""A Hamming index on local disk: packed codes, ids and per-item metadata, searched exactly.

Folder layout (``IDX/``)::

    manifest.json          what the index is and which data version is current (replaced atomically)
    v000003-1a2b3c/        the current data version
        codes.npy          (n, ceil(bits/8)) uint8, schn.codes packing (MSB first, zero padding)
        ids.npy            int64, or S<w> UTF-8 strings
        id_order.npy       argsort of ids (lookups by id without building anything)
        labels.npy         optional: (n, ceil(classes/8)) uint8, label rows packed like codes
        paths.npy          optional: S<w> UTF-8 source paths

Saving writes a complete new version folder, fsyncs it, then replaces manifest.json: a crash at
any point leaves the previous manifest pointing at the previous, untouched version. Opening checks
sizes always and SHA-256 checksums by default, and memory-maps the arrays.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import codes as codes_mod
from ..errors import SchnError
from ..fileio import fsync_dir, sha256_file, write_json
from . import ids as ids_mod
from .base import INDEX_BACKENDS, CodeIndex, Neighbors, label_text
from .searchers import create_searcher, select_knn, sort_found

FORMAT = "schn-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _save_array(path: Path, array: np.ndarray) -> dict:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


@contextmanager
def _locked(folder: Path):
    """One writer at a time per index folder (advisory lock, released on exit or crash)."""
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class HammingIndex(CodeIndex):
    """Packed binary codes with unique ids and optional labels and paths; exact k-NN and radius search.

    ``info`` carries what the codes came from (method, run, model checksum, ...) into the manifest.
    ``searcher``: a registered name: ``auto`` (multi-index hashing where it pays, else the FAISS
    flat scan), ``mih``, ``faiss`` or ``numpy``.
    """

    def __init__(self, bits: int, *, id_kind: str | None = None, class_names=None, info: dict | None = None,
                 searcher: str = "auto"):
        if int(bits) < 1:
            raise SchnError(f"code length must be at least 1 bit, got {bits}")
        if id_kind not in (None, *ids_mod.KINDS):
            raise SchnError(f"id kind must be one of {ids_mod.KINDS}, got {id_kind!r}")
        self.bits = int(bits)
        self.id_kind = id_kind
        self.class_names = list(class_names) if class_names is not None else None
        self.info = dict(info or {})
        self.searcher_name = searcher
        self.path: Path | None = None
        self._version = 0
        self._codes = np.zeros((0, codes_mod.packed_width(bits)), dtype=np.uint8)
        self._ids = ids_mod.to_stored([], id_kind or "int")
        self._labels: np.ndarray | None = None
        self._paths: np.ndarray | None = None
        self._order: np.ndarray | None = None
        self._lookup: ids_mod.IdLookup | None = None
        self._searchers: dict = {}

    # ---- contents -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._codes)

    @property
    def codes(self) -> np.ndarray:
        return self._codes

    @property
    def ids(self) -> np.ndarray:
        return ids_mod.to_user(self._ids)

    def _id_lookup(self) -> ids_mod.IdLookup:
        if self._lookup is None:
            self._lookup = ids_mod.IdLookup(self._ids, self._order)
        return self._lookup

    def rows_of(self, ids, missing: str = "error") -> np.ndarray:
        wanted = ids_mod.as_stored(ids, self.id_kind)
        rows = self._id_lookup().rows(wanted) if len(self) else np.full(len(wanted), -1, np.int64)
        if missing == "error" and (rows < 0).any():
            absent = ids_mod.to_user(wanted[rows < 0])
            raise SchnError(f"id {absent[0].item()!r} is not in the index ({int((rows < 0).sum())} of {len(rows)} ids missing)")
        return rows

    def __contains__(self, item_id) -> bool:
        return bool(self.rows_of([item_id], missing="ignore")[0] >= 0)

    def labels(self, rows) -> np.ndarray | None:
        """Label rows (0/1 uint8) of ``rows``, or None when the index has no labels."""
        if self._labels is None:
            return None
        return np.unpackbits(self._labels[np.asarray(rows)], axis=-1, count=len(self.class_names or []) or None)

    def label_text(self, row: int) -> str:
        labels = self.labels([row])
        if labels is None:
            return ""
        return label_text(np.flatnonzero(labels[0]), self.class_names)

    def source_path(self, row: int) -> str:
        return "" if self._paths is None else self._paths[row].decode("utf-8")

    def uses_path(self, path: str) -> bool:
        """Whether any item's path is ``path``."""
        return self._paths is not None and bool((self._paths == path.encode("utf-8")).any())

    @property
    def version(self) -> int:
        """The saved version this index was opened at or last saved as (0: never saved)."""
        return self._version

    def codes_of(self, ids) -> np.ndarray:
        return np.asarray(self._codes[self.rows_of(ids)])

    def items(self, ids) -> list[dict]:
        rows = self.rows_of(ids)
        stored = ids_mod.to_user(self._ids[rows])
        return [{"id": stored[i].item(), "label": self.label_text(int(r)), "path": self.source_path(int(r))}
                for i, r in enumerate(rows)]

    # ---- mutations ----------------------------------------------------------------------
    def _changed(self) -> None:
        self._order = self._lookup = None
        self._searchers = {}

    def _next_int_id(self) -> int:
        return int(self._ids.max()) + 1 if len(self) else 0

    def _check_batch(self, codes, ids, labels, paths):
        codes, stored, labels, paths = self._checked_batch(codes, ids, labels, paths)
        if labels is not None:
            labels = np.packbits(labels, axis=1)
        if paths is not None:
            paths = np.array([p.encode("utf-8") for p in paths] or [b""], dtype=bytes)[:len(codes)]
        return codes, stored, labels, paths

    def _column(self, have, new, new_rows: int, empty_row):
        """Append ``new`` to the optional column ``have`` (filling blanks for items without it)."""
        if have is None and new is None:
            return None
        if have is None:
            have = np.repeat(empty_row(new), len(self), axis=0)
        if new is None:
            new = np.repeat(empty_row(have), new_rows, axis=0)
        if have.dtype.kind == "S":
            return ids_mod.concat(have, new)
        return np.concatenate([have, new])

    def add(self, codes, ids=None, labels=None, paths=None) -> np.ndarray:
        """Append items; ids must be new. Returns their rows."""
        codes, stored, labels, paths = self._check_batch(codes, ids, labels, paths)
        if len(self):
            present = self._id_lookup().rows(stored)
            if (present >= 0).any():
                first = ids_mod.to_user(stored[present >= 0])[0].item()
                raise SchnError(f"id {first!r} is already in the index; use upsert to replace items")
        return self._append(codes, stored, labels, paths)

    def _append(self, codes, stored, labels, paths) -> np.ndarray:
        start, n = len(self), len(codes)
        self._labels = self._column(self._labels, labels, n, lambda a: np.zeros((1, a.shape[1]), np.uint8))
        self._paths = self._column(self._paths, paths, n, lambda a: np.array([b""], dtype="S1"))
        self._codes = np.concatenate([self._codes, codes])
        self._ids = ids_mod.concat(self._ids, stored) if len(self._ids) else stored
        self.id_kind = self.id_kind or ("str" if stored.dtype.kind == "S" else "int")
        self._changed()
        return np.arange(start, start + n)

    def delete(self, ids, missing: str = "error") -> int:
        """Remove items by id; returns how many were removed. Later items keep their order."""
        rows = self.rows_of(ids, missing=missing)
        rows = np.unique(rows[rows >= 0])
        if len(rows) == 0:
            return 0
        keep = np.ones(len(self), dtype=bool)
        keep[rows] = False
        self._codes, self._ids = self._codes[keep], self._ids[keep]
        if self._labels is not None:
            self._labels = self._labels[keep]
        if self._paths is not None:
            self._paths = self._paths[keep]
        self._changed()
        return len(rows)

    def upsert(self, codes, ids, labels=None, paths=None) -> tuple[int, int]:
        """Replace items whose id exists (in place), add the others. Returns (replaced, added)."""
        codes, stored, labels, paths = self._check_batch(codes, ids, labels, paths)
        rows = self._id_lookup().rows(stored) if len(self) else np.full(len(stored), -1, np.int64)
        old = rows >= 0
        if old.any():
            at = rows[old]
            self._codes = np.array(self._codes)  # writable copy (memory-mapped arrays are read-only)
            self._codes[at] = codes[old]
            if labels is not None:
                have = self._labels if self._labels is not None else np.zeros((len(self), labels.shape[1]), np.uint8)
                self._labels = np.array(have)
                self._labels[at] = labels[old]
            if paths is not None:
                have = self._paths if self._paths is not None else np.zeros(len(self), dtype="S1")
                self._paths = have.astype(f"S{max(have.dtype.itemsize, paths.dtype.itemsize)}")
                self._paths[at] = paths[old]
            self._changed()
        new = ~old
        if new.any():
            self._append(codes[new], stored[new], None if labels is None else labels[new],
                         None if paths is None else paths[new])
        return int(old.sum()), int(new.sum())

    # ---- search ---------------------------------------------------------------------------
    def searcher(self, name: str | None = None):
        name = name or self.searcher_name
        if name not in self._searchers:
            self._searchers[name] = create_searcher(name, self._codes, self.bits, tie_order=self._id_lookup().order)
        return self._searchers[name]

    def _queries(self, queries) -> np.ndarray:
        return codes_mod.check_packed(queries, self.bits)

    def search(self, queries, k: int, searcher: str | None = None) -> Neighbors:
        """The k nearest items of each packed query, ``(nq, min(k, n))``, ties broken by id."""
        queries = self._queries(queries)
        if int(k) < 1:
            raise SchnError(f"k must be at least 1, got {k}")
        k = min(int(k), len(self))
        if k == 0:
            empty = np.zeros((len(queries), 0), dtype=np.int64)
            return Neighbors(ids_mod.to_user(self._ids[:0]).reshape(len(queries), 0), empty.astype(np.int32), empty)
        rows, dist = select_knn(self.searcher(searcher).knn(queries, k), k, self._ids)
        return Neighbors(ids_mod.to_user(self._ids[rows.ravel()]).reshape(rows.shape), dist, rows)

    def radius_search(self, queries, r: int, searcher: str | None = None) -> list[Neighbors]:
        """Every item within Hamming distance ``r`` (inclusive) of each query, by (distance, id)."""
        queries = self._queries(queries)
        if int(r) < 0:
            raise SchnError(f"radius must be at least 0, got {r}")
        if len(self) == 0:
            return [Neighbors(self.ids[:0], np.zeros(0, np.int32), np.zeros(0, np.int64)) for _ in queries]
        r = min(int(r), self.bits)  # no code is farther; searchers take a C int
        found = sort_found(self.searcher(searcher).radius(queries, r), self._ids)
        return [Neighbors(ids_mod.to_user(self._ids[rows]), dist, rows) for rows, dist in found]

    # ---- persistence ----------------------------------------------------------------------
    def manifest(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "bits": self.bits,
            "bytes_per_code": codes_mod.packed_width(self.bits),
            "bit_order": "bit j in byte j//8 at position 7 - j%8 (numpy packbits, big); padding bits 0",
            "count": len(self), "id_kind": self.id_kind or "int", "class_names": self.class_names,
            **{k: v for k, v in self.info.items() if k not in ("count", "bits")},
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write the index atomically (see the module docstring). Returns its folder."""
        folder = Path(path) if path is not None else self.path
        if folder is None:
            raise SchnError("this index has no folder yet; pass a path to save()")
        if folder.exists() and not folder.is_dir():
            raise SchnError(f"{folder} exists and is not a folder; choose another index path")
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder):
            on_disk = _read_manifest(folder) if (folder / MANIFEST).exists() else None
            disk_version = on_disk.get("version", 0) if on_disk else 0
            if on_disk and folder == self.path and disk_version != self._version:
                raise SchnError(f"index {folder} changed on disk since it was opened (version {self._version} -> "
                                f"{disk_version}); open it again and repeat the change")
            version = disk_version + 1
            name = f"v{version:06d}-{secrets.token_hex(3)}"
            tmp = folder / f".tmp-{name}"
            tmp.mkdir()
            try:
                files = {"codes.npy": _save_array(tmp / "codes.npy", self._codes),
                         "ids.npy": _save_array(tmp / "ids.npy", self._ids),
                         "id_order.npy": _save_array(tmp / "id_order.npy", self._id_lookup().order)}
                if self._labels is not None:
                    files["labels.npy"] = _save_array(tmp / "labels.npy", self._labels)
                if self._paths is not None:
                    files["paths.npy"] = _save_array(tmp / "paths.npy", self._paths)
                fsync_dir(tmp)
                os.rename(tmp, folder / name)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            manifest, now = self.manifest(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            manifest.update(version=version, data=name, files=files,
                            created=(on_disk or {}).get("created", now), updated=now)
            write_json(folder / MANIFEST, manifest)
            fsync_dir(folder)
            for old in folder.iterdir():  # earlier versions and leftovers of crashed saves
                if old.is_dir() and old.name != name and (old.name.startswith("v") or old.name.startswith(".tmp-v")):
                    shutil.rmtree(old, ignore_errors=True)
        self.path, self._version = folder, version
        return folder

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True, mmap: bool = True, searcher: str = "auto") -> "HammingIndex":
        """Open a saved index; refuses a damaged or foreign one with one clear line."""
        folder = Path(path)
        if not folder.is_dir():
            raise SchnError(f"no index at {folder}; build one with `schn index build RUN -o {folder}`")
        manifest = _read_manifest(folder)
        data = folder / manifest["data"]
        arrays = {}
        for name, meta in manifest["files"].items():
            file = data / name
            if not file.is_file():
                raise SchnError(f"index {folder} is damaged: {manifest['data']}/{name} is missing; rebuild the index")
            if file.stat().st_size != meta["bytes"]:
                raise SchnError(f"index {folder} is damaged: {name} has {file.stat().st_size} bytes, the manifest says "
                                f"{meta['bytes']} (truncated?); rebuild the index")
            if verify and sha256_file(file) != meta["sha256"]:
                raise SchnError(f"index {folder} is damaged: the checksum of {name} differs from the manifest; "
                                "rebuild the index")
            try:
                # a plain ndarray view of the mapping: np.memmap's subclass hooks made every row
                # lookup of a search ~10x dearer (measured under `schn serve`)
                arrays[name] = np.asarray(np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False))
            except ValueError as exc:
                raise SchnError(f"index {folder} is damaged: cannot read {name} ({exc}); rebuild the index") from None
        index = cls(manifest["bits"], id_kind=manifest["id_kind"], class_names=manifest.get("class_names"),
                    info={k: v for k, v in manifest.items() if k in INFO_KEYS}, searcher=searcher)
        codes, stored = arrays["codes.npy"], arrays["ids.npy"]
        n = manifest["count"]
        if codes.shape != (n, codes_mod.packed_width(index.bits)) or codes.dtype != np.uint8 or len(stored) != n \
                or len(arrays["id_order.npy"]) != n:
            raise SchnError(f"index {folder} is damaged: its arrays do not match the manifest's {n} items of "
                            f"{index.bits} bits; rebuild the index")
        index._codes, index._ids, index._order = codes, stored, arrays["id_order.npy"]
        index._labels, index._paths = arrays.get("labels.npy"), arrays.get("paths.npy")
        index.path, index._version = folder, manifest["version"]
        return index

    def describe(self) -> dict:
        """The manifest's facts plus sizes, for ``schn index info``."""
        out = self.manifest()
        if self.path is not None and (self.path / MANIFEST).is_file():
            saved = _read_manifest(self.path)
            out.update({k: saved[k] for k in ("created", "updated", "files") if k in saved})
        out.update(path=str(self.path) if self.path else None, version=self._version,
                   code_bytes=int(self._codes.nbytes), id_bytes=int(self._ids.nbytes),
                   has_labels=self._labels is not None, has_paths=self._paths is not None)
        return out


@INDEX_BACKENDS.register("local")
def local_index(location, bits: int, overwrite: bool = False, **options) -> HammingIndex:
    """A new local index that saves to the folder ``location`` (replacing one there if ``overwrite``)."""
    if (Path(location) / MANIFEST).exists() and not overwrite:
        raise SchnError(f"{location} already holds an index; open it, pass --overwrite, or choose another path")
    index = HammingIndex(bits, **options)
    index.path = Path(location)
    if (index.path / MANIFEST).exists():
        index._version = _read_manifest(index.path)["version"]  # replaced by the next save
    return index


# Manifest keys describing where the codes came from (kept by open(), written by save()).
INFO_KEYS = ("method", "run", "model_checksum", "source", "dataset", "created_by")


def _read_manifest(folder: Path) -> dict:
    file = folder / MANIFEST
    if not file.is_file():
        raise SchnError(f"{folder} is not a schn index (no {MANIFEST}); build one with `schn index build`")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SchnError(f"index {folder} is damaged: {MANIFEST} is not valid JSON; rebuild the index") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SchnError(f"{folder} is not a schn index ({MANIFEST} has no format {FORMAT!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise SchnError(f"index {folder} was written by a newer schn (format {manifest['format_version']}); upgrade schn")
    missing = [k for k in ("bits", "count", "id_kind", "data", "files", "version") if k not in manifest]
    if missing or "codes.npy" not in manifest.get("files", {}):
        raise SchnError(f"index {folder} is damaged: {MANIFEST} lacks {missing or ['files.codes.npy']}; rebuild the index")
    return manifest
