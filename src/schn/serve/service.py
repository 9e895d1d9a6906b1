"""The state behind ``schn serve``: one local index, the model that made its codes, its image store.

Searches never wait for a mutation. Each request reads ``self.index`` once and works on that
snapshot; a mutation (one at a time, under a lock) changes a shallow copy of the index (every
change makes new arrays, so the snapshot being searched is untouched), appends it to the index's
journal (one checksummed record, fsynced: see ``schn.index.store``), updates the small delta
searcher beside the base one, and only then swaps the reference. An item is acknowledged only
after that append, so a crash loses nothing that was acknowledged, and a failed write leaves the
service on the previous snapshot. Past a size threshold a background thread compacts the journal
into a new base version while searches go on reading the old snapshot. The service holds the
index's writer lock for its lifetime, so another writer (``schn index add``) is told so at once.
"""
from __future__ import annotations

import copy
import logging
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import SchnError
from ..index import HammingIndex, is_milvus_location
from ..index import images as images_mod


class ItemNotFound(SchnError):
    """No item with that id (HTTP 404)."""


class Conflict(SchnError):
    """The request clashes with the index's state: an id already there, a change on disk (409)."""


class NoEncoder(SchnError):
    """The service has no model to encode images with (409)."""


class SearchService:
    """``index_path``: a local index folder; ``run_dir``: the run that made its codes, if it moved
    (image search and adding images need it; searches by id do not)."""

    def __init__(self, index_path, run_dir=None, device: str | None = None, searcher: str = "auto",
                 verify: bool = True):
        if is_milvus_location(index_path):
            raise SchnError(f"schn serve needs a local index folder, not a Milvus location ({index_path}); "
                            "Milvus is a server of its own")
        self.folder = Path(index_path)
        # the writer lock for the service's lifetime: CLI writers then fail in one line instead of
        # changing the index under the service (which made every later mutation a 409)
        index = HammingIndex.open(self.folder, verify=verify, searcher=searcher, writer=True, long_lived=True)
        index.auto_compact = False  # compaction runs in the background (_compact), not inside a request
        self._write_lock = threading.Lock()
        self._compactor: threading.Thread | None = None
        try:
            self.index = self._warm(index)
        except BaseException:
            index.release_writer_lock()
            raise
        self.encoder, self.encoder_error = None, None
        try:
            from ..index.build import index_encoder

            self.encoder = index_encoder(self.index, run_dir, device)
        except SchnError as exc:  # id searches still work; image requests get this line
            self.encoder_error = str(exc)

    @staticmethod
    def _warm(index: HammingIndex) -> HammingIndex:
        """Build the id lookup and the searcher now, not inside the first (or a concurrent) search."""
        return index.warm()  # the base's searcher once; after a mutation only the small delta's words

    # ---- reads (any thread, concurrently) ------------------------------------------------
    def item_id(self, raw, index: HammingIndex | None = None):
        """A client's id (from a URL or JSON) in the index's kind: integers for an integer index."""
        index = index or self.index
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise SchnError(f"an id must be a string or an integer, got {type(raw).__name__}")
        if index.id_kind == "int":
            try:
                return int(raw)
            except ValueError:
                raise ItemNotFound(f"no item {_short(raw)}: this index has integer ids") from None
        return str(raw)

    def row_of(self, index: HammingIndex, item_id) -> int:
        row = int(index.rows_of([item_id], missing="ignore")[0])
        if row < 0:
            raise ItemNotFound(f"no item {_short(item_id)} in the index")
        return row

    def image_file(self, index: HammingIndex, row: int) -> Path | None:
        return images_mod.stored_file(self.folder, index.source_path(row))

    def encode(self, pictures) -> np.ndarray:
        if self.encoder is None:
            raise NoEncoder(f"this service cannot encode images: {self.encoder_error}")
        return self.encoder.encode(list(pictures), batch_size=64)

    # ---- mutations (one at a time) --------------------------------------------------------
    def add(self, pictures, kinds, data, ids=None, labels=None, replace: bool = False) -> tuple[list, int]:
        """Encode and add uploaded images (decoded ``pictures``, their formats and bytes), storing
        the bytes in the index's image store. Returns (the new items' ids, how many were replaced).
        The images are stored only once every check has passed (a refused request leaves no file),
        durably before the index that refers to them is committed, and removed if that commit fails."""
        codes = self.encode(pictures)
        paths = [images_mod.stored_path(raw, kind) for raw, kind in zip(data, kinds)]  # nothing written yet
        with self._write_lock:
            index = copy.copy(self.index)
            if ids is None:
                if index.id_kind == "str":  # the content names the item, so a re-upload is a duplicate
                    ids = [Path(p).stem[:16] for p in paths]
            else:
                ids = [self.item_id(i, index) for i in ids]
            label_rows = None if labels is None else self._label_rows(index, labels)
            replaced = 0
            if replace:
                if ids is None:
                    raise SchnError("replace=true needs ids: say which items the images replace")
                old_paths = [index.source_path(r) for r in index.rows_of(ids, missing="ignore") if r >= 0]
                replaced, _ = index.upsert(codes, ids, labels=label_rows, paths=paths)
            else:
                old_paths = []
                present = [] if ids is None else index.rows_of(ids, missing="ignore")
                if len(present) and (present >= 0).any():
                    first = ids[int((present >= 0).argmax())]
                    raise Conflict(f"item {first!r} is already in the index; pass replace=true to replace it")
                rows = index.add(codes, ids, labels=label_rows, paths=paths)
                ids = index.ids_at(rows).tolist() if ids is None else ids
            with self._stored(data, kinds, paths):
                self._commit(index, old_paths)
        return ids, replaced

    @contextmanager
    def _stored(self, data, kinds, paths):
        """Stores the images (fsynced) for the block; if it fails, removes the files this call
        created that the index being served does not refer to (the block's commit did not happen)."""
        created = [p for p in dict.fromkeys(paths) if not (self.folder / p).exists()]
        for raw, kind in zip(data, kinds):
            images_mod.store_bytes(self.folder, raw, kind)
        try:
            yield
        except BaseException:
            images_mod.remove_unreferenced(self.folder, created, self.index.uses_path)
            raise

    def delete(self, item_id) -> None:
        with self._write_lock:
            index = copy.copy(self.index)
            old_path = index.source_path(self.row_of(index, item_id))
            index.delete([item_id])
            self._commit(index, [old_path])

    def _commit(self, index: HammingIndex, dropped_paths) -> None:
        """Journal the change (one fsynced append: its cost does not grow with the index), then
        serve the new snapshot; past the journal's limit, compact in the background."""
        try:
            index.save()
        except SchnError as exc:  # e.g. the index on disk is not the one the service opened
            raise Conflict(str(exc)) from None
        try:
            self._warm(index)
        finally:  # saved is what the service serves, even if building the searcher failed
            self.index = index
        if dropped_paths:
            images_mod.remove_unreferenced(self.folder, dropped_paths, index.uses_path)
        if index.compaction_due() and (self._compactor is None or not self._compactor.is_alive()):
            self._compactor = threading.Thread(target=self._compact, name="schn-compact", daemon=True)
            self._compactor.start()

    def _compact(self) -> None:
        """Fold the journal into a new base version and build its searcher, then swap. Searches
        keep reading the previous snapshot meanwhile; mutations wait for the write lock. A crash
        midway leaves the previous base and journal, which the next open replays."""
        with self._write_lock:
            index = copy.copy(self.index)
            try:
                index.compact()
                index.warm()
            except Exception as exc:  # the journal still holds everything; the next commit retries
                logging.getLogger("schn.serve").warning("compaction of %s failed: %s", self.folder, exc)
                return
            self.index = index

    def close(self) -> None:
        """Wait for a running compaction and release the writer lock (the process's end does too)."""
        if self._compactor is not None:
            self._compactor.join()
        self.index.release_writer_lock()

    @staticmethod
    def _label_rows(index: HammingIndex, labels) -> np.ndarray:
        names = index.class_names or []
        rows = np.zeros((len(labels), len(names)), dtype=np.uint8)
        for i, text in enumerate(labels):
            for name in filter(None, (part.strip() for part in str(text).split(","))):
                if name not in names:
                    raise SchnError(f"unknown label {name!r}; this index's classes are: "
                                    f"{', '.join(names) if names else '(none)'}")
                rows[i, names.index(name)] = 1
        return rows

    def describe(self) -> dict:
        index = self.index
        return {"items": len(index), "bits": index.bits, "method": index.info.get("method"),
                "dataset": index.info.get("dataset"), "searcher": index.searcher_name, "index": str(self.folder),
                "version": index.version, "id_kind": index.id_kind or "int", "class_names": index.class_names,
                "can_encode_images": self.encoder is not None}


def _short(item_id) -> str:
    text = repr(item_id)
    return text if len(text) <= 80 else text[:77] + "..."


def hex_code(index: HammingIndex, row: int) -> str:
    return bytes(index.codes_at([row])[0]).hex()

