"""Exact Hamming searchers over one snapshot of packed codes.

Every searcher answers with *complete candidate sets*, so that the index can break distance ties
by id the same way whatever found them:
- ``knn(queries, k)``: for each query, every row whose distance is at most the k-th smallest
  distance ``d_k`` (so all rows tied at ``d_k`` are there), with its distance; or exactly the
  first k rows in (distance, ``tie_order``) order, when the searcher was given ``tie_order`` (the
  rows sorted by id) and can rank by it;
- ``radius(queries, r)``: for each query, every row at distance ``<= r``.
``k`` is at most the number of rows (the index caps it). Rows are int64, distances int32.

Searchers are registered by name (``create_searcher``/``list_searchers``); ``numpy`` is the
brute-force reference the others are tested against.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

from .. import codes as codes_mod
from ..errors import SchnError
from ..registry import Registry

Candidates = list[tuple[np.ndarray, np.ndarray]]
SEARCHERS: Registry[Callable[..., "Searcher"]] = Registry("searcher")


class Searcher:
    """Base: holds the packed codes (``(n, bytes)`` uint8), the code length and, optionally, the
    rows in the order that breaks distance ties (``tie_order``, rows sorted by id)."""

    name = "base"

    def __init__(self, packed: np.ndarray, bits: int, tie_order: np.ndarray | None = None):
        self.packed, self.bits, self.tie_order = packed, int(bits), tie_order

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

    FAISS keeps exactly k results. Given ``tie_order``, FAISS holds the codes in that order, and
    where this FAISS keeps the lowest positions among equal distances (checked once per process
    by :func:`faiss_ranks_ties_by_position`, never assumed) its k results are the answer.
    Otherwise ``knn`` asks for a few more (``k + tie_slack(k)``): when the last of those is still
    at the k-th distance, the tie may extend further and a range search at that distance collects
    every tied row (one more scan, for those queries only).
    """

    name = "faiss"

    def __init__(self, packed: np.ndarray, bits: int, tie_order: np.ndarray | None = None):
        super().__init__(packed, bits, tie_order)
        faiss = _faiss()
        self.index = faiss.IndexBinaryFlat(packed.shape[1] * 8)  # padding bits are 0 in every code
        if len(packed):
            self.index.add(np.ascontiguousarray(packed if tie_order is None else packed[tie_order]))
        self.ranks_ties = tie_order is not None and faiss_ranks_ties_by_position()

    def memory_bytes(self) -> int:
        return int(self.index.ntotal) * self.packed.shape[1]

    @staticmethod
    def threads() -> int:
        return _faiss().omp_get_max_threads()

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        positions = positions.astype(np.int64)
        return positions if self.tie_order is None else np.asarray(self.tie_order)[positions]

    @staticmethod
    def tie_slack(k: int) -> int:
        return max(16, k // 2)

    def knn(self, queries, k):
        queries = np.ascontiguousarray(queries)
        if self.ranks_ties:
            dist, positions = self.index.search(queries, k)
            rows = self._rows(positions)
            return [(rows[i], dist[i].astype(np.int32)) for i in range(len(queries))]
        kk = min(k + self.tie_slack(k), len(self))
        dist, positions = self.index.search(queries, kk)
        rows = self._rows(positions)
        found: Candidates = []
        for i in range(len(queries)):
            last = np.searchsorted(dist[i], dist[i, k - 1], side="right")  # rows up to the k-th distance
            found.append((rows[i, :last], dist[i, :last].astype(np.int32)))
        if kk > k:
            tied = np.flatnonzero(dist[:, kk - 1] == dist[:, k - 1])
            for i, (rows_i, dist_i) in zip(tied, self._range(queries[tied], dist[tied, k - 1])):
                found[i] = (rows_i, dist_i)
        return found

    def radius(self, queries, r):
        return self._range(np.ascontiguousarray(queries), np.full(len(queries), int(r)))

    def _range(self, queries, radii) -> Candidates:
        """Rows within ``radii[i]`` of query i; FAISS's range search is strict (``< r + 1``)."""
        found: Candidates = [None] * len(queries)  # type: ignore[list-item]
        for value in np.unique(radii):
            which = np.flatnonzero(radii == value)
            lims, dist, rows = self.index.range_search(queries[which], int(value) + 1)
            for j, i in enumerate(which):
                found[i] = (self._rows(rows[lims[j]:lims[j + 1]]), dist[lims[j]:lims[j + 1]].astype(np.int32))
        return found


@lru_cache(maxsize=1)
def faiss_ranks_ties_by_position() -> bool:
    """Whether this FAISS's ``IndexBinaryFlat.search`` returns, among equal distances, the lowest
    positions first (its heaps break ties by id since FAISS 1.7.3). Checked on codes with heavy
    ties, one query and a batch, small and large k; False sends ``knn`` the slow, safe way."""
    faiss = _faiss()
    rng = np.random.default_rng(0)
    db = rng.integers(0, 8, (5000, 1), dtype=np.uint8)  # 3 of 8 bits vary: thousands of ties
    queries = rng.integers(0, 8, (40, 1), dtype=np.uint8)
    index = faiss.IndexBinaryFlat(8)
    index.add(db)
    for k in (1, 7, 300):
        for nq in (1, len(queries)):
            _, positions = index.search(queries[:nq], k)
            for q, got in zip(queries[:nq], positions):
                dist = np.bitwise_count(db[:, 0] ^ q[0])
                if not np.array_equal(got, np.lexsort((np.arange(len(db)), dist))[:k]):
                    return False
    return True


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
