"""Item ids: user integers (int64) or user strings (stored as UTF-8 bytes, ``S`` arrays).

One index holds one kind. Ids are unique; lookups go through a sorted permutation, so an index
of millions of ids needs no Python dict. Ordering (used to break distance ties) is numeric for
integers and by code point for strings (UTF-8 byte order is code point order).
"""
from __future__ import annotations

import numpy as np

from ..errors import SchnError

KINDS = ("int", "str")


def id_kind_of(values) -> str:
    a = np.asarray(values)
    if a.dtype.kind in "iu":
        return "int"
    if a.dtype.kind in "USO" and len(a):
        if all(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in a.ravel()):
            return "str"
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in a.ravel()):
            return "int"
    raise SchnError(f"ids must be all integers or all strings, got {a.dtype} values like {a.ravel()[:3].tolist()}")


def to_stored(values, kind: str) -> np.ndarray:
    """User ids -> the stored array of ``kind`` (int64, or ``S`` UTF-8 bytes)."""
    values = list(values) if not isinstance(values, np.ndarray) else values
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64 if kind == "int" else "S1")
    got = id_kind_of(values)
    if got != kind:
        raise SchnError(f"this index holds {kind} ids; got {got} ids (one index holds one kind)")
    if kind == "int":
        a = np.asarray(values)
        try:
            if a.dtype == object or a.dtype == np.uint64:
                a = np.array([int(v) for v in a.ravel()], dtype=np.int64)
            return a.astype(np.int64).ravel()
        except OverflowError:
            raise SchnError("integer ids must fit in a signed 64-bit integer") from None
    encoded = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in np.asarray(values, dtype=object).ravel()]
    if any(len(v) == 0 or b"\0" in v for v in encoded):
        raise SchnError("string ids must be non-empty and must not contain NUL characters")
    return np.array(encoded, dtype=f"S{max(len(v) for v in encoded)}")


def id_list(ids):
    """One id, or a sequence of ids (a list or an array), as a sequence."""
    if isinstance(ids, (str, bytes)) or np.isscalar(ids):
        return [ids]
    return ids if isinstance(ids, np.ndarray) else list(ids)


def as_stored(ids, kind: str | None) -> np.ndarray:
    """One id or many as stored ids of ``kind`` (None, for an empty index: the ids' own kind)."""
    ids = id_list(ids)
    return to_stored(ids, kind or (id_kind_of(ids) if len(ids) else "int"))


def to_user(stored: np.ndarray) -> np.ndarray:
    """Stored ids as the user sees them: int64, or ``str`` (numpy unicode)."""
    if stored.dtype.kind == "S":
        return np.char.decode(stored, "utf-8")
    return np.asarray(stored)


def concat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "S":
        width = max(a.dtype.itemsize, b.dtype.itemsize, 1)
        return np.concatenate([a, b], dtype=f"S{width}")  # widened while copied, not copied twice
    return np.concatenate([a, b])


def first_duplicate(stored: np.ndarray):
    """A value that occurs twice in ``stored``, or None."""
    if len(stored) < 2:
        return None
    s = np.sort(stored)
    dup = np.flatnonzero(s[1:] == s[:-1])
    return s[dup[0]] if len(dup) else None


class IdLookup:
    """Rows of ids through the sorted permutation ``order`` of the stored ids."""

    def __init__(self, stored: np.ndarray, order: np.ndarray | None = None):
        self.stored = stored
        self.order = np.argsort(stored, kind="stable") if order is None else order
        self.sorted = stored[self.order]

    def rows(self, wanted: np.ndarray) -> np.ndarray:
        """Row of each wanted (stored-kind) id, -1 where absent."""
        out = np.full(len(wanted), -1, dtype=np.int64)
        if len(self.sorted) == 0 or len(wanted) == 0:
            return out
        if self.stored.dtype.kind == "S" and wanted.dtype.itemsize > self.sorted.dtype.itemsize:
            fits = np.char.str_len(wanted) <= self.sorted.dtype.itemsize  # longer ids cannot be present
            wanted_cmp = np.where(fits, wanted, b"").astype(self.sorted.dtype)
        else:
            fits = np.ones(len(wanted), dtype=bool)
            wanted_cmp = wanted.astype(self.sorted.dtype)
        pos = np.searchsorted(self.sorted, wanted_cmp).clip(0, len(self.sorted) - 1)
        hit = fits & (self.sorted[pos] == wanted_cmp)
        out[hit] = self.order[pos[hit]]
        return out
