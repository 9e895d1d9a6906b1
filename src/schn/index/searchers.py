"""Exact Hamming searchers over one snapshot of packed codes.

Every searcher answers with *complete candidate sets*, so that the index can break distance ties
by id the same way whatever found them:
- ``knn(queries, k)``: for each query, every row whose distance is at most the k-th smallest
  distance ``d_k`` (so all rows tied at ``d_k`` are there), with its distance;
- ``radius(queries, r)``: for each query, every row at distance ``<= r``.
``k`` is at most the number of rows (the index caps it). Rows are int64, distances int32.

Searchers are registered by name (``create_searcher``/``list_searchers``); ``numpy`` is the
brute-force reference the others are tested against.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .. import codes as codes_mod
from ..errors import SchnError
from ..registry import Registry

Candidates = list[tuple[np.ndarray, np.ndarray]]
SEARCHERS: Registry[Callable[..., "Searcher"]] = Registry("searcher")


class Searcher:
    """Base: holds the packed codes (``(n, bytes)`` uint8) and the code length."""

    name = "base"

    def __init__(self, packed: np.ndarray, bits: int):
        self.packed, self.bits = packed, int(bits)

    def __len__(self) -> int:
        return len(self.packed)

    def knn(self, queries: np.ndarray, k: int) -> Candidates:
        raise NotImplementedError

    def radius(self, queries: np.ndarray, r: int) -> Candidates:
        raise NotImplementedError

    def memory_bytes(self) -> int:
        """Bytes this searcher holds beyond the index's own codes and ids."""
        return 0


def create_searcher(name: str, packed: np.ndarray, bits: int, **options) -> Searcher:
    return SEARCHERS.get(name)(packed, bits, **options)


def list_searchers() -> list[str]:
    return SEARCHERS.names()


def kth_smallest(distances: np.ndarray, k: int) -> int:
    return int(np.partition(distances, k - 1)[k - 1])


@SEARCHERS.register("numpy")
class NumpySearcher(Searcher):
    """Brute force: XOR + popcount of every row, in blocks to bound memory. The reference."""

    name = "numpy"
    block_rows = 1 << 20

    def __init__(self, packed: np.ndarray, bits: int):
        super().__init__(packed, bits)

    def distances(self, query: np.ndarray) -> np.ndarray:
        q = codes_mod.to_words(query.reshape(1, -1))[0]
        out = np.empty(len(self.packed), dtype=np.int32)
        for start in range(0, len(out), self.block_rows):
            block = codes_mod.to_words(self.packed[start:start + self.block_rows])
            out[start:start + len(block)] = codes_mod.word_distances(q, block)
        return out

    def knn(self, queries, k):
        found = []
        for q in queries:
            d = self.distances(q)
            rows = np.flatnonzero(d <= kth_smallest(d, k))
            found.append((rows, d[rows]))
        return found

    def radius(self, queries, r):
        found = []
        for q in queries:
            d = self.distances(q)
            rows = np.flatnonzero(d <= r)
            found.append((rows, d[rows]))
        return found


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        raise SchnError("the faiss searcher needs faiss-cpu; pip install faiss-cpu") from None
    return faiss


@SEARCHERS.register("faiss")
class FaissSearcher(Searcher):
    """FAISS ``IndexBinaryFlat`` (exhaustive, multi-threaded scan).

    FAISS keeps exactly k results and breaks ties at the k-th distance its own way, so ``knn``
    asks for k+1: when the (k+1)-th distance equals the k-th, the tie may extend further and a
    range search at that distance collects every tied row (one more scan, for those queries only).
    """

    name = "faiss"

    def __init__(self, packed: np.ndarray, bits: int):
        super().__init__(packed, bits)
        faiss = _faiss()
        self.index = faiss.IndexBinaryFlat(packed.shape[1] * 8)  # padding bits are 0 in every code
        if len(packed):
            self.index.add(np.ascontiguousarray(packed))

    def memory_bytes(self) -> int:
        return int(self.index.ntotal) * self.packed.shape[1]

    def knn(self, queries, k):
        queries = np.ascontiguousarray(queries)
        kk = min(k + 1, len(self))
        dist, rows = self.index.search(queries, kk)
        found: Candidates = [(rows[i, :k].astype(np.int64), dist[i, :k].astype(np.int32)) for i in range(len(queries))]
        if kk > k:
            tied = np.flatnonzero(dist[:, k] == dist[:, k - 1])
            for i, (rows_i, dist_i) in zip(tied, self.radius(queries[tied], dist[tied, k - 1])):
                found[i] = (rows_i, dist_i)
        return found

    def radius(self, queries, r):
        """``r`` is one radius or one per query; FAISS's range search is strict (``< r + 1``)."""
        queries = np.ascontiguousarray(queries)
        radii = np.broadcast_to(np.asarray(r, dtype=np.int64), (len(queries),))
        found: Candidates = [None] * len(queries)  # type: ignore[list-item]
        for value in np.unique(radii):
            which = np.flatnonzero(radii == value)
            lims, dist, rows = self.index.range_search(queries[which], int(value) + 1)
            for j, i in enumerate(which):
                found[i] = (rows[lims[j]:lims[j + 1]].astype(np.int64), dist[lims[j]:lims[j + 1]].astype(np.int32))
        return found


def select_knn(found: Candidates, k: int, tie_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows per query from complete candidate sets, ties broken by ``tie_keys[row]``
    (the ids). Returns ``rows`` int64 and ``distances`` int32, both ``(nq, k)``."""
    rows_out = np.empty((len(found), k), dtype=np.int64)
    dist_out = np.empty((len(found), k), dtype=np.int32)
    for i, (rows, dist) in enumerate(found):
        order = np.lexsort((tie_keys[rows], dist))[:k]
        rows_out[i], dist_out[i] = rows[order], dist[order]
    return rows_out, dist_out


def sort_found(found: Candidates, tie_keys: np.ndarray) -> Candidates:
    """Each query's candidates ordered by (distance, id)."""
    out = []
    for rows, dist in found:
        order = np.lexsort((tie_keys[rows], dist))
        out.append((rows[order], dist[order]))
    return out
