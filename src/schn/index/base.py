"""What every index backend offers (local folder, Milvus), so callers never care which one it is.

Backends are registered by name (``create_index_backend``/``list_index_backends``); ``open_index``
picks one from a location: a Milvus URI (``http://...``, ``https://...``, ``tcp://...``) or a Milvus
Lite file (``*.db``) goes to Milvus, anything else is a local index folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import codes as codes_mod
from ..errors import SchnError
from ..registry import Registry
from . import ids as ids_mod

INDEX_BACKENDS: Registry[Callable[..., "CodeIndex"]] = Registry("index backend")
MILVUS_PREFIXES = ("http://", "https://", "tcp://", "unix:")


@dataclass
class Neighbors:
    """Search results: ``(nq, k)`` arrays for k-NN, 1-d arrays for one query's radius search.

    ``rows`` are positions in a local index (None from backends without rows)."""

    ids: np.ndarray
    distances: np.ndarray
    rows: np.ndarray | None = None


def label_text(classes, class_names) -> str:
    """Class indices as the names a user reads, joined by commas (the index where a name is missing)."""
    names = class_names or []
    return ",".join(names[i] if i < len(names) else str(i) for i in map(int, classes))


class CodeIndex:
    """Packed binary codes with unique ids (all int or all str) and optional labels and paths.

    Backends implement: ``__len__``, ``add``, ``upsert``, ``delete``, ``codes_of``, ``items``,
    ``search``, ``radius_search``, ``save``, ``describe``; attributes ``bits``, ``id_kind``,
    ``class_names``, ``info``. Results are exact; distance ties are broken by id.
    """

    bits: int
    id_kind: str | None
    class_names: list | None
    info: dict

    def __len__(self) -> int:
        raise NotImplementedError

    def __contains__(self, item_id) -> bool:
        raise NotImplementedError

    def add(self, codes, ids=None, labels=None, paths=None):
        raise NotImplementedError

    def upsert(self, codes, ids, labels=None, paths=None) -> tuple[int, int]:
        raise NotImplementedError

    def delete(self, ids, missing: str = "error") -> int:
        raise NotImplementedError

    def codes_of(self, ids) -> np.ndarray:
        raise NotImplementedError

    def items(self, ids) -> list[dict]:
        """``{"id", "label", "path"}`` of each id (label: class names joined by commas)."""
        raise NotImplementedError

    def search(self, queries, k: int) -> Neighbors:
        raise NotImplementedError

    def radius_search(self, queries, r: int) -> list[Neighbors]:
        raise NotImplementedError

    def save(self, path=None):
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError

    def _next_int_id(self) -> int:
        """The first automatic id: one past the largest stored integer id (0 when empty)."""
        raise NotImplementedError

    def _checked_batch(self, codes, ids, labels, paths):
        """A batch to add, checked the same way by every backend: packed codes, stored ids (int64 or
        UTF-8 ``S``; automatic integers when ``ids`` is None), 0/1 labels or None, paths or None."""
        codes = codes_mod.check_packed(codes, self.bits)
        n = len(codes)
        if ids is None:
            if self.id_kind == "str":
                raise SchnError("this index holds string ids; pass one id per code")
            start = self._next_int_id()
            stored = np.arange(start, start + n, dtype=np.int64)
        else:
            stored = ids_mod.as_stored(ids, self.id_kind)
        if len(stored) != n:
            raise SchnError(f"{n} codes but {len(stored)} ids; pass one id per code")
        dup = ids_mod.first_duplicate(stored)
        if dup is not None:
            raise SchnError(f"id {ids_mod.to_user(np.array([dup]))[0].item()!r} occurs twice in the batch; "
                            "ids must be unique")
        if labels is not None:
            labels = np.asarray(labels)
            classes = len(self.class_names) if self.class_names is not None else labels.shape[-1]
            if labels.ndim != 2 or labels.shape != (n, classes):
                raise SchnError(f"labels must be a ({n}, {classes}) 0/1 array, got shape {labels.shape}")
            if self.class_names is None:
                self.class_names = [str(i) for i in range(classes)]
            labels = (labels > 0).astype(np.uint8)
        if paths is not None:
            paths = [str(p) for p in paths]
            if len(paths) != n:
                raise SchnError(f"{n} codes but {len(paths)} paths; pass one path per code")
        return codes, stored, labels, paths

    def search_ids(self, ids, k: int, include_self: bool = False) -> Neighbors:
        """Neighbours of stored items, by id; the item itself is left out unless ``include_self``."""
        ids = ids_mod.id_list(ids)
        if int(k) < 1:
            raise SchnError(f"k must be at least 1, got {k}")
        found = self.search(self.codes_of(ids), min(int(k) + (0 if include_self else 1), len(self)))
        if include_self:
            return found
        keep_k = min(int(k), len(self) - 1)
        keep = np.zeros(found.ids.shape, dtype=bool)
        for i, item_id in enumerate(ids):
            keep[i, np.flatnonzero(found.ids[i] != item_id)[:keep_k]] = True
        shape = (len(ids), keep_k)
        return Neighbors(found.ids[keep].reshape(shape), found.distances[keep].reshape(shape),
                         None if found.rows is None else found.rows[keep].reshape(shape))


def is_milvus_location(location) -> bool:
    text = str(location)
    return text.startswith(MILVUS_PREFIXES) or text.endswith(".db")


def create_index_backend(name: str, location, **options) -> CodeIndex:
    """A new, empty index of backend ``name`` at ``location`` (``bits`` etc. in ``options``)."""
    return INDEX_BACKENDS.get(name)(location, **options)


def list_index_backends() -> list[str]:
    return INDEX_BACKENDS.names()
