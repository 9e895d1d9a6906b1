"""Retrieval metrics over a Hamming ranking (definitions: shared/docs/method.md, protocols.md).

Inputs everywhere: query codes ``qB`` ``(nq, c)`` and database codes ``dB`` ``(nd, c)`` holding
+-1 (0 is accepted, for the authors' ``sign(0) = 0`` option), and multi-hot 0/1 label matrices
``qL`` ``(nq, K)``, ``dL`` ``(nd, K)``. An item is relevant to a query when they share a label.

Definitions chosen here:
- Distance ``0.5 * (c - q . d)``; with 0 entries it can be a half-integer, so it is kept as the
  integer ``2 * distance`` internally (exact, and lets the stable sort be a linear radix sort).
- Ranking: ascending distance; ``ties="stable"`` keeps database order among equal distances,
  ``ties="unstable"`` is plain ``np.argsort`` on the float distances (the authors' code).
- ``AP@k = (1/R_k) sum_{i<=k} P@i rel_i``; ``R_k = 0`` gives 0; mAP is the mean over all
  queries. ``drop_last=True`` removes the last-ranked item before the cut-off (the authors'
  mAP@all ``[:-1]``); it changes nothing when the depth is below the database size.
- PR curve over radius ``r = 0..c`` (retrieved: distance <= r): precision is averaged over the
  queries that retrieve at least one item (``retrieved_fraction`` says how many did; NaN where
  none did), recall over the queries with at least one relevant item in the database.
- Precision within radius 2: a query retrieving nothing counts 0, averaged over all queries.
- NDCG@k: relevance = number of shared labels, gain ``2^rel - 1``, discount ``log2(i + 1)`` at
  rank ``i``; IDCG from the database sorted by relevance; a query with no relevant item gives 0.

All work is done in chunks of queries so at most about ``MEMORY_BUDGET`` bytes of per-pair
arrays exist at once.
"""
from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .bounds import bounded
from .errors import SchnError


@functools.cache
def _counting_sort():
    """scipy.sparse's COO -> CSR conversion (a linear counting sort that keeps input order on ties),
    if its private entry point is there and still behaves so on a tiny case; else None, and the
    argsort path (the same ranking) runs. Resolved at first use, not at import: importing
    scipy.sparse takes ~0.1 s, which every importer of this module would pay."""
    try:
        from scipy.sparse._sparsetools import coo_tocsr
        keys, flags = np.array([1, 0, 1, 0], np.int32), np.array([True, False, False, True])
        starts, order, out = np.empty(3, np.int32), np.empty(4, np.int32), np.empty(4, bool)
        coo_tocsr(2, 4, 4, keys, np.arange(4, dtype=np.int32), flags, starts, order, out)
    except Exception:  # pragma: no cover - an older or newer scipy
        return None
    expected = np.argsort(keys, kind="stable")
    return coo_tocsr if (order == expected).all() and (out == flags[expected]).all() else None


TIES = ("stable", "unstable")
DEFAULT_PRECISION_AT = (100, 500, 1000, 5000)
DEFAULT_NDCG_K = 1000
MEMORY_BUDGET = 256 * 2**20
_BYTES_PER_PAIR = 64  # rough peak sum of the per-(query, item) temporaries below


@dataclass
class EvalConfig:
    map_depth: Optional[int] = bounded(None, 1, 10**9)  # None = mAP over the whole ranking
    radius: int = bounded(2, 0, 1024)
    precision_at: list[int] = bounded(lo=1, hi=10**9, default_factory=lambda: list(DEFAULT_PRECISION_AT))
    ndcg_k: Optional[int] = bounded(None, 1, 10**9)  # None: DEFAULT_NDCG_K for multi-label data, else no NDCG
    drop_last: bool = False  # True = the authors' mAP@all, which drops the last item
    ties: str = "stable"  # "unstable" = the authors' plain argsort
    symmetric: bool = True  # also score asymmetric methods with the database encoded by the network

    def __post_init__(self):
        _check_depth(self.map_depth, "eval.map_depth")
        if not isinstance(self.radius, int) or isinstance(self.radius, bool) or self.radius < 0:
            raise SchnError(f"eval.radius must be an integer >= 0, got {self.radius!r}")
        for n in self.precision_at:
            _check_depth(n, "eval.precision_at entries")
        _check_depth(self.ndcg_k, "eval.ndcg_k")
        if not isinstance(self.drop_last, bool):
            raise SchnError(f"eval.drop_last must be true or false, got {self.drop_last!r}")
        _check_ties(self.ties)

    def ndcg_depth(self, multi_label: bool) -> Optional[int]:
        """The NDCG cut-off to use: the configured one, else DEFAULT_NDCG_K for multi-label data."""
        if self.ndcg_k is not None:
            return self.ndcg_k
        return DEFAULT_NDCG_K if multi_label else None


def _check_depth(k, what):
    if k is not None and (not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1):
        raise SchnError(f"{what} must be a positive integer (or null), got {k!r}")


def _check_ties(ties):
    if ties not in TIES:
        raise SchnError(f"ties must be one of {', '.join(TIES)}, got {ties!r}")


def _matrix(x, name):
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[0] == 0:
        raise SchnError(f"{name} must be a non-empty 2-d array, got shape {a.shape}")
    return a


def _inputs(qB, dB, qL, dL):
    """Validate and convert to float32 (exact for these small integers, and BLAS-fast)."""
    qB, dB = _matrix(qB, "query codes"), _matrix(dB, "database codes")
    qL, dL = _matrix(qL, "query labels"), _matrix(dL, "database labels")
    if qB.shape[1] != dB.shape[1]:
        raise SchnError(f"code lengths differ: queries {qB.shape[1]} bits, database {dB.shape[1]} bits")
    if qL.shape[1] != dL.shape[1]:
        raise SchnError(f"label widths differ: queries {qL.shape[1]}, database {dL.shape[1]}")
    if len(qB) != len(qL) or len(dB) != len(dL):
        raise SchnError(
            f"codes and labels disagree in length: queries {len(qB)} vs {len(qL)}, "
            f"database {len(dB)} vs {len(dL)}"
        )
    if qB.shape[1] > 16000:
        raise SchnError(f"codes of {qB.shape[1]} bits are too long (at most 16000)")
    for name, b in (("query codes", qB), ("database codes", dB)):
        if np.any((b != 1) & (b != -1) & (b != 0)):
            raise SchnError(f"{name} must hold -1/+1 (0 allowed); sign real outputs or unpack bits first")
    for name, lab in (("query labels", qL), ("database labels", dL)):
        if np.any((lab != 0) & (lab != 1)):
            raise SchnError(f"{name} must be 0/1 multi-hot rows")
    return tuple(np.asarray(a, dtype=np.float32) for a in (qB, dB, qL, dL))


def _per_query(qB, dB, qL, dL, *, cut=0, ns=(), hist=False, ndcg_k=None, ties="stable",
               chunk_size=None):
    """One pass over query chunks; returns per-query arrays for what was asked.

    ``cut``: mAP cut-off (0 = no mAP); ``ns``: precision@N values; ``hist``: counts of all and
    of relevant items per doubled distance (for radius metrics); ``ndcg_k``: NDCG cut-off.
    """
    _check_ties(ties)
    nq, bits = qB.shape
    nd = dB.shape[0]
    if chunk_size is None:
        chunk_size = max(1, MEMORY_BUDGET // (_BYTES_PER_PAIR * nd))
    ns = np.asarray(ns, dtype=np.int64)
    top = max([cut, ndcg_k or 0] + ns.tolist())  # ranked prefix that any metric reads
    need_rank = top > 0
    levels = 2 * bits + 1
    out = {}
    if cut:
        out["ap"] = np.zeros(nq)
    if ns.size:
        out["p_at"] = np.zeros((nq, ns.size))
    if hist:
        out["hist_all"] = np.zeros((nq, levels), dtype=np.int64)
        out["hist_rel"] = np.zeros((nq, levels), dtype=np.int64)
    if ndcg_k:
        out["ndcg"] = np.zeros(nq)
        disc = 1.0 / np.log2(np.arange(2, ndcg_k + 2))

    for s in range(0, nq, chunk_size):
        sl = slice(s, min(s + chunk_size, nq))
        m = sl.stop - sl.start
        # Twice the Hamming distance: an exact small integer even when codes hold 0.
        keys = np.rint(bits - qB[sl] @ dB.T).astype(np.int16)
        shared = qL[sl] @ dL.T  # number of shared labels
        rel = shared > 0
        if need_rank:
            if ties == "stable":
                order = np.argsort(keys, axis=1, kind="stable")  # radix sort for int16: linear
            else:
                order = np.argsort(keys.astype(np.float32) * np.float32(0.5), axis=1)
            order = order[:, :top]
            rel_top = np.take_along_axis(rel, order, axis=1)
            cum = np.cumsum(rel_top, axis=1, dtype=np.int32)  # relevant items in the top i
        if cut:
            hits = np.where(rel_top[:, :cut], cum[:, :cut], 0) / np.arange(1, cut + 1)
            r_k = cum[:, cut - 1]
            out["ap"][sl] = np.where(r_k > 0, hits.sum(axis=1) / np.maximum(r_k, 1), 0.0)
        if ns.size:
            out["p_at"][sl] = cum[:, ns - 1] / ns
        if hist:
            # Per-row histograms in one bincount by offsetting each row's keys.
            idx = keys.astype(np.int32) + (np.arange(m, dtype=np.int32) * levels)[:, None]
            out["hist_all"][sl] = np.bincount(idx.ravel(), minlength=m * levels).reshape(m, levels)
            out["hist_rel"][sl] = np.bincount(idx[rel], minlength=m * levels).reshape(m, levels)
        if ndcg_k:
            k = ndcg_k
            dcg = (np.exp2(np.take_along_axis(shared, order[:, :k], axis=1)) - 1) @ disc
            best = np.partition(shared, nd - k, axis=1)[:, nd - k:]  # the k largest, unordered
            best = -np.sort(-best, axis=1)
            idcg = (np.exp2(best) - 1) @ disc
            out["ndcg"][sl] = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1), 0.0)
    return out


def _map_cut(nd, depth, drop_last):
    _check_depth(depth, "depth")
    cut = nd if depth is None else min(int(depth), nd)
    if drop_last:
        cut = min(cut, nd - 1)
    if cut < 1:
        raise SchnError("drop_last needs a database of at least 2 items")
    return cut


def _check_ns(ns, nd):
    ns = [int(n) for n in ns]
    for n in ns:
        _check_depth(n, "precision@N values")
        if n > nd:
            raise SchnError(f"precision@{n} asked for a database of only {nd} items")
    return ns


def default_n_grid(nd: int, ns: Sequence[int] = ()) -> np.ndarray:
    """N values for a precision@N curve: 100..1000 by 100, 50 even steps up to ``nd``, plus ``ns``."""
    grid = np.concatenate([np.arange(100, 1001, 100), np.linspace(nd / 50, nd, 50).round(), ns])
    grid = grid[(grid >= 1) & (grid <= nd)].astype(np.int64)
    return np.unique(grid)


def _radius_stats(hist_all, hist_rel, bits):
    """Per-query retrieved and relevant-retrieved counts for radius 0..bits, and all relevant."""
    ret = np.cumsum(hist_all, axis=1)[:, ::2]  # doubled distance <= 2r
    got = np.cumsum(hist_rel, axis=1)[:, ::2]
    return ret[:, : bits + 1], got[:, : bits + 1], hist_rel.sum(axis=1)


def _pr_from_stats(ret, got, n_rel):
    has = ret > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        prec_q = np.where(has, got / np.maximum(ret, 1), 0.0)
        precision = prec_q.sum(axis=0) / has.sum(axis=0)  # NaN where no query retrieved anything
        rq = n_rel > 0
        recall = (got[rq] / n_rel[rq, None]).mean(axis=0) if rq.any() else np.full(ret.shape[1], np.nan)
    return precision, recall, has.mean(axis=0)


def _within_radius(ret, got, radius):
    r = min(radius, ret.shape[1] - 1)
    return float(np.mean(np.where(ret[:, r] > 0, got[:, r] / np.maximum(ret[:, r], 1), 0.0)))


def mean_average_precision(qB, dB, qL, dL, depth=None, drop_last=False, ties="stable",
                           chunk_size=None, threads: int = 1) -> float:
    """mAP@depth (``None`` = all); ``drop_last`` = the authors' mAP@all without the last item.

    Same value, bit for bit, as :func:`_mean_average_precision_reference` (the general
    :func:`_per_query` pass), but only ranks what AP reads: see :func:`_ap_stable`; ``threads``
    splits the queries between threads (stable ties), with the same value.
    """
    qB, dB, qL, dL = _inputs(qB, dB, qL, dL)
    cut = _map_cut(len(dB), depth, drop_last)
    _check_ties(ties)
    if not (isinstance(threads, int) and threads >= 1):
        raise SchnError(f"threads={threads!r} must be a positive integer")
    if ties != "stable":  # plain argsort's tie order depends on the whole row: the general pass
        return float(_per_query(qB, dB, qL, dL, cut=cut, ties=ties, chunk_size=chunk_size)["ap"].mean())
    return float(_ap_stable(qB, dB, qL, dL, cut, chunk_size, threads).mean())


def _mean_average_precision_reference(qB, dB, qL, dL, depth=None, drop_last=False, ties="stable",
                                      chunk_size=None) -> float:
    """The general pass (full ranking of every row); what :func:`mean_average_precision` must equal."""
    qB, dB, qL, dL = _inputs(qB, dB, qL, dL)
    cut = _map_cut(len(dB), depth, drop_last)
    return float(_per_query(qB, dB, qL, dL, cut=cut, ties=ties, chunk_size=chunk_size)["ap"].mean())


_FAST_CHUNK_BYTES = 8 * 2**20  # bytes of one (query chunk x database) temporary in _ap_stable


def _narrow(words: np.ndarray, nbits: int) -> np.ndarray:
    """One-word :func:`schn.codes.to_words` rows of at most 8/16/32 bits as uint8/16/32 (the same
    leading bits, shifted down): a narrower XOR/AND and popcount, same counts."""
    if words.shape[1] != 1 or nbits > 32:
        return words
    width = 8 if nbits <= 8 else 16 if nbits <= 16 else 32
    return (words >> np.uint64(64 - width)).astype(np.dtype(f"uint{width}"))


def _ap_stable(qB, dB, qL, dL, cut, chunk_size=None, threads: int = 1) -> np.ndarray:
    """Per-query AP@cut under the stable ranking, equal to ``_per_query(...)["ap"]`` bit for bit.

    - Distances: +-1 codes are packed (:mod:`schn.codes`) and compared by XOR + popcount into
      uint8 distances; codes holding 0 keep the doubled integer distance of :func:`_per_query`.
      Either key gives the same stable order (one is twice the other).
    - Relevance depends only on a query's label row: queries are taken grouped by label row and
      the relevance row (``(q & d) != 0`` on packed label words) is computed once per group,
      not per query; a repeated (code, labels) query reuses its AP.
    - Ranking: NumPy's stable (radix) sort of the small integer keys, database order on ties as
      before; below the full depth only the items up to the distance holding rank ``cut`` (found
      by counting) are sorted; the relevance is then read along the ranking.
    - AP: ``cum / rank`` only at the relevant ranks, scattered into a zero row of length ``cut``
      and summed as the general pass sums its row, so the float result is identical.
    - ``threads`` > 1: contiguous slices of the grouped queries, one per thread; each query's AP
      is computed alone, so the result does not depend on the number of threads.
    """
    from .codes import pack, to_words

    nq, bits = qB.shape
    nd = dB.shape[0]
    signed = not ((qB == 0).any() or (dB == 0).any())
    levels = (bits if signed else 2 * bits) + 1
    kdt = np.uint8 if levels <= 256 else np.uint16
    if signed:
        q_words, d_words = _narrow(to_words(pack(qB)), bits), _narrow(to_words(pack(dB)), bits)
    ql_words, dl_words = _narrow(to_words(pack(qL)), qL.shape[1]), _narrow(to_words(pack(dL)), qL.shape[1])
    if chunk_size is None:
        # small chunks: the per-pair temporaries stay in cache (a few MiB), which is faster here
        # than the big blocks of the general pass
        widest = q_words.nbytes // len(q_words) if signed else 4
        chunk_size = max(1, min(MEMORY_BUDGET, _FAST_CHUNK_BYTES) // (widest * nd))
    # Queries grouped by label row; within a group, equal codes are next to each other (same
    # ranking) and an equal (code, labels) pair has the same AP, computed once.
    _, group = np.unique(ql_words, axis=0, return_inverse=True)
    group = group.ravel()
    if signed:
        _, code = np.unique(q_words, axis=0, return_inverse=True)
    else:
        _, code = np.unique(qB, axis=0, return_inverse=True)
    code = code.ravel()
    by_group = np.lexsort((code, group))
    ap = np.zeros(nq)
    parts = np.array_split(by_group, max(1, min(threads, nq)))

    def keys_of(chunk):
        if signed:
            return _word_popcount(q_words[chunk], d_words, np.bitwise_xor).astype(kdt, copy=False)
        return np.rint(bits - qB[chunk] @ dB.T).astype(kdt)

    def run(rows):
        _ap_rows(rows, keys_of, ap, group, code, ql_words, dl_words, cut, levels, chunk_size)

    if len(parts) == 1:
        run(parts[0])
    else:  # NumPy's sort, popcount and gathers release the GIL: contiguous slices, one per thread
        with ThreadPoolExecutor(len(parts)) as pool:
            list(pool.map(run, parts))
    return ap


def _ap_rows(rows, keys_of, ap, group, code, ql_words, dl_words, cut, levels, chunk_size) -> None:
    """AP of the queries ``rows`` (grouped by label row, equal codes adjacent) into ``ap``, the
    distances ``keys_of(chunk)`` computed ``chunk_size`` queries at a time."""
    ranks = np.arange(1, cut + 1)
    current = last_code = last_q = -1
    lo = levels // 2  # the distance holding rank cut, carried from query to query
    rel_mask, n_rel = None, 0
    counting = _CountingRank(len(dl_words), levels) if _use_counting(cut, len(dl_words)) else None
    for s in range(0, len(rows), chunk_size):
        chunk = rows[s:s + chunk_size]
        keys = keys_of(chunk)
        for i, q in enumerate(chunk):
            if group[q] == current and code[q] == last_code:
                ap[q] = ap[last_q]  # same labels, same code: same ranking and relevance
                continue
            last_code, last_q = code[q], q
            if group[q] != current:
                current = group[q]
                rel_mask = (dl_words & ql_words[q]).any(axis=1)
                n_rel = np.count_nonzero(rel_mask)
            if not n_rel:
                continue
            if counting is not None:
                ap[q] = _ap_along(counting(keys[i], rel_mask)[:cut], ranks, cut)
                continue
            order, lo = _stable_top(keys[i], cut, levels, lo)
            ap[q] = _ap_along(np.take(rel_mask, order), ranks, cut)


COUNTING_MIN_FRACTION = 0.25  # a cut-off below this share of the database: sort only the top


def _use_counting(cut: int, nd: int) -> bool:
    """The counting pass ranks the whole database in two linear passes; below a quarter of it
    :func:`_stable_top` sorts fewer items and is cheaper (measured: benchmarks/val_speed.py)."""
    return cut >= COUNTING_MIN_FRACTION * nd and _counting_sort() is not None


class _CountingRank:
    """The relevance row read along the stable ranking by small integer keys, by a counting sort:
    scipy's COO -> CSR conversion with the keys as rows and the database order as columns makes a
    histogram pass and a scatter pass in database order, so equal keys keep database order (the
    ranking of ``np.argsort(k, kind="stable")``) and the relevance flags travel with the items,
    with no index array to gather through. Its buffers are reused: one instance per thread."""

    def __init__(self, nd: int, levels: int):
        self.index = np.int32 if nd < 2**31 else np.int64
        self.nd, self.levels = nd, levels
        self.items = np.arange(nd, dtype=self.index)
        self.starts = np.empty(levels + 1, dtype=self.index)
        self.order = np.empty(nd, dtype=self.index)
        self.relevant = np.empty(nd, dtype=bool)
        self.convert = _counting_sort()

    def __call__(self, k: np.ndarray, rel_mask: np.ndarray) -> np.ndarray:
        # every key is below `levels` by construction (a popcount, or a doubled distance)
        self.convert(self.levels, self.nd, self.nd, k.astype(self.index), self.items, rel_mask,
                     self.starts, self.order, self.relevant)
        return self.relevant


def _stable_top(k: np.ndarray, cut: int, levels: int, lo: int) -> tuple[np.ndarray, int]:
    """The first ``cut`` database items of the stable ranking by the integer keys ``k``, and the
    key level ``lo`` holding rank ``cut`` (the smallest with count(k <= lo) >= cut), found by
    counting from the previous query's ``lo`` (usually one or two counts away). Items beyond it
    cannot enter the top, so only those up to it are sorted."""
    if cut >= len(k):
        return np.argsort(k, kind="stable"), lo
    while lo < levels - 1 and np.count_nonzero(k <= lo) < cut:
        lo += 1
    while lo > 0 and np.count_nonzero(k <= lo - 1) >= cut:
        lo -= 1
    if lo == levels - 1:
        return np.argsort(k, kind="stable")[:cut], lo
    cand = np.flatnonzero(k <= lo)  # in database order, then the same stable sort: same order
    return cand[np.argsort(k[cand], kind="stable")[:cut]], lo


def _ap_along(relevant: np.ndarray, ranks: np.ndarray, cut: int) -> float:
    """AP of one ranking from its relevance row, summed as the general pass sums its row of hits
    (0 where not relevant), so that the float result is the same."""
    pos = np.flatnonzero(relevant)  # relevant ranks - 1, in order
    if not len(pos):
        return 0.0
    hits = np.zeros(cut)
    hits[pos] = np.arange(1, len(pos) + 1, dtype=np.int32) / ranks[pos]
    return hits.sum() / np.int32(len(pos))


def _word_popcount(a_words, b_words, op) -> np.ndarray:
    """``popcount(op(a, b))`` summed over the uint64 words, ``(len(a), len(b))``: uint8 for one
    word, else uint16 (at most 16,000 bits)."""
    total = np.bitwise_count(op(a_words[:, 0, None], b_words[None, :, 0]))
    if a_words.shape[1] > 1:
        total = total.astype(np.uint16)
        for w in range(1, a_words.shape[1]):
            total += np.bitwise_count(op(a_words[:, w, None], b_words[None, :, w]))
    return total


def pr_curve_by_radius(qB, dB, qL, dL, chunk_size=None) -> dict:
    """Precision and recall at Hamming radius 0..c; see the module notes for the averaging."""
    qB, dB, qL, dL = _inputs(qB, dB, qL, dL)
    h = _per_query(qB, dB, qL, dL, hist=True, chunk_size=chunk_size)
    p, r, frac = _pr_from_stats(*_radius_stats(h["hist_all"], h["hist_rel"], qB.shape[1]))
    return {"radius": np.arange(qB.shape[1] + 1), "precision": p, "recall": r, "retrieved_fraction": frac}


def precision_within_radius(qB, dB, qL, dL, radius=2, chunk_size=None) -> float:
    """Mean precision of the items within Hamming radius; a query retrieving nothing counts 0."""
    if not isinstance(radius, (int, np.integer)) or radius < 0:
        raise SchnError(f"radius must be an integer >= 0, got {radius!r}")
    qB, dB, qL, dL = _inputs(qB, dB, qL, dL)
    h = _per_query(qB, dB, qL, dL, hist=True, chunk_size=chunk_size)
    ret, got, _ = _radius_stats(h["hist_all"], h["hist_rel"], qB.shape[1])
    return _within_radius(ret, got, int(radius))


def precision_at_n(qB, dB, qL, dL, ns=DEFAULT_PRECISION_AT, ties="stable", chunk_size=None) -> dict:
    """Mean precision of the top N, as ``{N: value}``; every N must be <= the database size."""
    qB, dB, qL, dL = _inputs(qB, dB, qL, dL)
    ns = _check_ns(ns, len(dB))
    p = _per_query(qB, dB, qL, dL, ns=ns, ties=ties, chunk_size=chunk_size)["p_at"].mean(axis=0)
    return {n: float(v) for n, v in zip(ns, p)}


def precision_at_n_curve(qB, dB, qL, dL, ns=None, ties="stable", chunk_size=None):
    """``(N values, mean precision@N)``; ``ns=None`` uses :func:`default_n_grid`."""
    qB, dB, qL, dL = _inputs(qB, dB, qL, dL)
    ns = default_n_grid(len(dB)) if ns is None else np.asarray(_check_ns(ns, len(dB)))
    p = _per_query(qB, dB, qL, dL, ns=ns, ties=ties, chunk_size=chunk_size)["p_at"].mean(axis=0)
    return ns, p


def ndcg_at_k(qB, dB, qL, dL, k, ties="stable", chunk_size=None) -> float:
    """Mean NDCG@k with relevance = shared labels, gain ``2^rel - 1`` (k capped at the database)."""
    _check_depth(k, "k")
    qB, dB, qL, dL = _inputs(qB, dB, qL, dL)
    k = min(int(k), len(dB))
    return float(_per_query(qB, dB, qL, dL, ndcg_k=k, ties=ties, chunk_size=chunk_size)["ndcg"].mean())


def _json_list(a):
    """Floats for JSON: NaN (undefined) becomes None."""
    return [None if math.isnan(v) else float(v) for v in np.asarray(a, dtype=float)]


def evaluate_retrieval(qB, dB, qL, dL, depth=None, radius=2, ns=DEFAULT_PRECISION_AT,
                       drop_last=False, ties="stable", ndcg_k=None, chunk_size=None) -> dict:
    """All metrics from one ranking per query chunk, as a JSON-ready dict.

    Keys: ``map``, ``map_depth`` ("all" or the int), ``precision_at_radius_<radius>``,
    ``precision_at_n`` ({N: value}, N above the database size skipped), ``ndcg`` and
    ``ndcg_k`` (when ``ndcg_k`` is given), ``pr_curve`` (lists by radius; None = undefined),
    ``p_at_n_curve`` (``n`` and ``precision`` lists), and the sizes and options used.
    """
    if not isinstance(radius, (int, np.integer)) or radius < 0:
        raise SchnError(f"radius must be an integer >= 0, got {radius!r}")
    _check_depth(ndcg_k, "ndcg_k")
    qB, dB, qL, dL = _inputs(qB, dB, qL, dL)
    nq, bits = qB.shape
    nd = len(dB)
    cut = _map_cut(nd, depth, drop_last)
    for n in ns:
        _check_depth(n, "precision@N values")
    asked = sorted({int(n) for n in ns if n <= nd})  # N above the database size: skipped
    grid = default_n_grid(nd, asked)
    k = min(int(ndcg_k), nd) if ndcg_k else None
    h = _per_query(qB, dB, qL, dL, cut=cut, ns=grid, hist=True, ndcg_k=k, ties=ties,
                   chunk_size=chunk_size)
    p_grid = h["p_at"].mean(axis=0)
    ret, got, n_rel = _radius_stats(h["hist_all"], h["hist_rel"], bits)
    precision, recall, frac = _pr_from_stats(ret, got, n_rel)
    result = {
        "map": float(h["ap"].mean()),
        "map_depth": "all" if depth is None else int(depth),
        f"precision_at_radius_{int(radius)}": _within_radius(ret, got, int(radius)),
        "precision_at_n": {n: float(p_grid[np.searchsorted(grid, n)]) for n in asked},
        "pr_curve": {
            "radius": list(range(bits + 1)),
            "precision": _json_list(precision),
            "recall": _json_list(recall),
            "retrieved_fraction": _json_list(frac),
        },
        "p_at_n_curve": {"n": [int(n) for n in grid], "precision": _json_list(p_grid)},
        "num_queries": nq,
        "num_database": nd,
        "bits": bits,
        "ties": ties,
        "drop_last": bool(drop_last),
    }
    if k:
        result["ndcg"] = float(h["ndcg"].mean())
        result["ndcg_k"] = int(ndcg_k)
    return result


def evaluate(qB, dB, qL, dL, config: Optional[EvalConfig] = None, multi_label: Optional[bool] = None,
             chunk_size=None) -> dict:
    """:func:`evaluate_retrieval` driven by an :class:`EvalConfig`.

    ``multi_label=None`` infers it from the labels (some item carries more than one label).
    """
    cfg = config or EvalConfig()
    if multi_label is None:
        multi_label = bool(np.asarray(qL).sum(axis=1).max() > 1 or np.asarray(dL).sum(axis=1).max() > 1)
    return evaluate_retrieval(
        qB, dB, qL, dL, depth=cfg.map_depth, radius=cfg.radius, ns=cfg.precision_at,
        drop_last=cfg.drop_last, ties=cfg.ties, ndcg_k=cfg.ndcg_depth(multi_label),
        chunk_size=chunk_size,
    )
