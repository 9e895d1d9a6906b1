"""Multi-index hashing: exact Hamming k-NN in sublinear time (Norouzi, Punjani, Fleet, CVPR 2012).

A b-bit code is cut into m disjoint substrings; table j groups the rows by their j-th substring.
If two codes differ in at most ``m*r + j`` bits, then by the pigeonhole principle their substring
distance is at most r in some table among 0..j (or at most r-1 in a later one). So after probing
every key within radius r of the query's substring in tables 0..j, every row not yet seen is at
distance >= ``m*r + j + 1``: the search grows r table by table and stops once k distinct rows
closer than that bound are known. The result is exact; nothing is approximated.

m is ``ceil(b / log2 n)`` (substrings of at most log2 n bits), as the paper recommends: then a
table has at most as many buckets as rows, and a bucket holds about one row on uniform codes.

Each table is a bucket-sorted copy of the rows and their code words (CSR layout: ``offsets``
indexed directly by key), so one bucket is one contiguous slice and its distances are one
vectorised XOR + popcount.
"""
from __future__ import annotations

import math
import threading
from functools import lru_cache
from itertools import combinations

import numpy as np

from .. import codes as codes_mod
from ..errors import SchnError
from .searchers import SEARCHERS, Candidates, Searcher


# Substring keys are int64 and flip masks are enumerated: 32 bits is far beyond any useful length.
MAX_SUBSTRING_BITS = 32


def substring_count(bits: int, n: int) -> int:
    """m = ceil(b / log2 n), between ceil(b / 32) and b (a substring has 1 to 32 bits)."""
    m = math.ceil(bits / math.log2(n)) if n >= 2 else 1
    return max(-(-int(bits) // MAX_SUBSTRING_BITS), min(int(bits), m))


def substring_bounds(bits: int, m: int) -> list[tuple[int, int]]:
    """(start, length) of m substrings covering bits 0..b-1, lengths differing by at most 1."""
    base, extra = divmod(int(bits), m)
    bounds, start = [], 0
    for j in range(m):
        length = base + (1 if j < extra else 0)
        bounds.append((start, length))
        start += length
    return bounds


def substring_keys(words: np.ndarray, start: int, length: int) -> np.ndarray:
    """Integer value (int64) of bits ``start..start+length-1`` of each row of big-endian words."""
    w, offset = divmod(start, 64)
    mask = np.uint64((1 << length) - 1)
    if offset + length <= 64:
        keys = (words[:, w] >> np.uint64(64 - offset - length)) & mask
    else:  # the substring crosses into the next word
        high_bits = 64 - offset
        low_bits = length - high_bits
        high = words[:, w] & np.uint64((1 << high_bits) - 1)
        keys = (high << np.uint64(low_bits)) | (words[:, w + 1] >> np.uint64(64 - low_bits))
    return keys.astype(np.int64)


@lru_cache(maxsize=256)
def flip_masks(length: int, r: int) -> np.ndarray:
    """Every ``length``-bit integer with exactly ``r`` bits set (the keys at distance r from 0)."""
    if r > length:
        return np.zeros(0, dtype=np.int64)
    masks = [sum(1 << i for i in combo) for combo in combinations(range(length), r)]
    return np.array(masks, dtype=np.int64)


class _Table:
    """Rows grouped by one substring's key. ``offsets`` is indexed by the key itself when the key
    space is at most a few times the row count; otherwise by the key's place among the keys present."""

    def __init__(self, keys: np.ndarray, words: np.ndarray, length: int):
        # numpy sorts 16-bit integers by radix, O(n): rebuilding a table after a change stays cheap
        order = np.argsort(keys.astype(np.uint16) if length <= 16 else keys, kind="stable")
        self.rows = order.astype(np.int32 if len(order) < 2**31 else np.int64)
        self.words = words[order]
        self.length = length
        if (1 << length) <= max(1 << 16, 4 * len(keys)):
            self.present = None
            counts = np.bincount(keys, minlength=1 << length)
            self.keys = np.flatnonzero(counts)
        else:
            self.present, counts = np.unique(keys, return_counts=True)
            self.keys = self.present
        self.offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        """Index into ``offsets`` of each key; absent keys map to an empty bucket."""
        if self.present is None:
            return keys
        at = np.searchsorted(self.present, keys).clip(0, len(self.present) - 1)
        return np.where(self.present[at] == keys, at, len(self.present))  # offsets[-1]: empty

    def keys_at(self, key: int, r: int) -> np.ndarray:
        """The keys at distance exactly r from ``key``: enumerated, or, when there are more of
        them than non-empty buckets (long substrings, large r), picked from the buckets."""
        if math.comb(self.length, r) <= len(self.keys):
            return key ^ flip_masks(self.length, r)
        return self.keys[np.bitwise_count(self.keys ^ key) == r]

    def probe(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows and code words in the buckets of ``keys``."""
        keys = self._slots(keys)
        if len(keys) == 1:
            lo, hi = self.offsets[keys[0]], self.offsets[min(keys[0] + 1, len(self.offsets) - 1)]
            return self.rows[lo:hi], self.words[lo:hi]
        starts = self.offsets[keys]
        lengths = self.offsets[np.minimum(keys + 1, len(self.offsets) - 1)] - starts
        total = int(lengths.sum())
        if total == 0:
            return self.rows[:0], self.words[:0]
        # positions starts[i] .. starts[i]+lengths[i]-1 for every probed bucket, concatenated
        shift = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        at = np.arange(total, dtype=np.int64) + shift
        return self.rows[at], self.words[at]

    def memory_bytes(self) -> int:
        return self.offsets.nbytes + self.rows.nbytes + self.words.nbytes


@SEARCHERS.register("mih")
class MultiIndexHashing(Searcher):
    """Exact k-NN and radius search by multi-index hashing (see the module docstring)."""

    name = "mih"

    def __init__(self, packed: np.ndarray, bits: int, tie_order: np.ndarray | None = None,
                 substrings: int | None = None):
        super().__init__(packed, bits, tie_order)
        n = len(packed)
        self.m = int(substrings) if substrings else substring_count(bits, n)
        if not 1 <= self.m <= bits or -(-bits // self.m) > MAX_SUBSTRING_BITS:
            raise SchnError(f"multi-index hashing of {bits}-bit codes needs between {-(-bits // MAX_SUBSTRING_BITS)} "
                            f"and {bits} substrings, got {self.m}")
        self.bounds = substring_bounds(bits, self.m)
        words = codes_mod.to_words(packed) if n else np.zeros((0, -(-packed.shape[1] // 8)), np.uint64)
        self.tables = [_Table(substring_keys(words, start, length), words, length) for start, length in self.bounds]
        # scratch for de-duplicating rows found in several tables; one query at a time
        self._seen = np.zeros(n, dtype=bool)
        self._lock = threading.Lock()

    def memory_bytes(self) -> int:
        return sum(t.memory_bytes() for t in self.tables) + self._seen.nbytes

    def _search(self, query: np.ndarray, k: int | None, r: int | None, budget: int | None = None):
        """k-NN candidates (``k`` given) or every row within ``r``; see the module docstring.
        With a ``budget``, gives up (returns None) once more than that many bucket keys and
        candidate rows have been examined."""
        qw = codes_mod.to_words(query.reshape(1, -1))
        qkeys = [int(substring_keys(qw, start, length)[0]) for start, length in self.bounds]
        qw = qw[0]
        found_rows, found_dist = [], []
        histogram = np.zeros(self.bits + 1, dtype=np.int64)  # distinct rows found, by distance
        shortest = min(length for _, length in self.bounds)
        work = 0
        with self._lock:
            try:
                for radius in range(shortest + 1):
                    for j, table in enumerate(self.tables):
                        keys = table.keys_at(qkeys[j], radius) if radius <= table.length else []
                        if len(keys):
                            rows, words = table.probe(keys)
                            work += len(keys) + len(rows)
                            if budget is not None and work > budget:
                                return None
                            if len(rows):
                                new = ~self._seen[rows]
                                rows, words = rows[new], words[new]
                                self._seen[rows] = True
                                dist = codes_mod.word_distances(qw, words)
                                found_rows.append(rows)
                                found_dist.append(dist)
                                histogram += np.bincount(dist, minlength=self.bits + 1)
                        bound = self.m * radius + j + 1  # every unseen row is at least this far
                        if k is not None:
                            reached = np.cumsum(histogram[:bound])
                            if len(reached) and reached[-1] >= k:
                                return self._collect(found_rows, found_dist, int(np.searchsorted(reached, k)))
                        elif bound > r:
                            return self._collect(found_rows, found_dist, r)
                # a whole table probed at every radius: every row has been seen
                return self._collect(found_rows, found_dist, self.bits if k is None else None, k)
            finally:
                for rows in found_rows:
                    self._seen[rows] = False

    @staticmethod
    def _collect(found_rows, found_dist, limit, k=None):
        rows = np.concatenate(found_rows).astype(np.int64) if found_rows else np.zeros(0, np.int64)
        dist = np.concatenate(found_dist) if found_dist else np.zeros(0, np.int32)
        if limit is None:
            limit = int(np.partition(dist, k - 1)[k - 1])
        keep = dist <= limit
        return rows[keep], dist[keep]

    def knn(self, queries, k) -> Candidates:
        return [self._search(q, k, None) for q in queries]

    def radius(self, queries, r) -> Candidates:
        return [self._search(q, None, int(r)) for q in queries]


@SEARCHERS.register("auto")
class AutoSearcher(Searcher):
    """Multi-index hashing where it pays, the FAISS flat scan elsewhere; exact either way.

    Multi-index hashing costs ~40-90 ns per bucket key or candidate row it examines (NumPy), the
    flat scan ~1 ns per stored row (measured, benchmarks/RESULTS.md). So each query gets multi-index
    hashing with a budget of n/64 keys and rows (about where the two cost the same; divided by
    FAISS's thread count for a batch, which FAISS scans in parallel); past it, the query goes to
    the flat scan, so a query costs at most about two scans. Learned (clustered) codes stay far
    inside the budget; uniform random codes exceed it, and while most recent queries do, only one
    call in ``retry_every`` tries multi-index hashing first. Below ``min_items`` rows there are no
    tables: the scan wins.
    """

    name = "auto"
    min_items = 100_000
    retry_every = 8

    def __init__(self, packed: np.ndarray, bits: int, tie_order: np.ndarray | None = None):
        super().__init__(packed, bits, tie_order)
        from .searchers import FaissSearcher

        self.flat = FaissSearcher(packed, bits, tie_order)
        self.mih = MultiIndexHashing(packed, bits) if len(packed) >= self.min_items else None
        self.budget = max(1000, len(packed) // 64)
        self._overrun_rate, self._calls = 0.0, 0

    def memory_bytes(self) -> int:
        return self.flat.memory_bytes() + (self.mih.memory_bytes() if self.mih else 0)

    def _route(self, queries, by_mih, by_flat) -> Candidates:
        found: Candidates = [None] * len(queries)  # type: ignore[list-item]
        to_flat = []
        # while most recent queries overran the budget, only one call in retry_every tries
        # multi-index hashing, and a call stops trying as soon as its queries overrun
        self._calls += 1
        budget = self.budget if len(queries) == 1 else self.budget // max(1, self.flat.threads())
        use_mih = self.mih is not None and (self._overrun_rate <= 0.5 or self._calls % self.retry_every == 0)
        for i, query in enumerate(queries):
            found[i] = by_mih(query, budget) if use_mih else None
            if use_mih:
                self._overrun_rate = 0.75 * self._overrun_rate + 0.25 * (found[i] is None)
                use_mih = self._overrun_rate <= 0.5 or found[i] is not None
            if found[i] is None:
                to_flat.append(i)
        if to_flat:
            for i, candidates in zip(to_flat, by_flat(queries[to_flat])):
                found[i] = candidates
        return found

    def knn(self, queries, k) -> Candidates:
        return self._route(queries, lambda q, budget: self.mih._search(q, k, None, budget),
                           lambda qs: self.flat.knn(qs, k))

    def radius(self, queries, r) -> Candidates:
        r = int(r)
        return self._route(queries, lambda q, budget: self.mih._search(q, None, r, budget),
                           lambda qs: self.flat.radius(qs, r))
