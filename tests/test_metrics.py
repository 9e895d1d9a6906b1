"""Vectorised metrics against plain per-query loops, and hand-computed rankings."""
import json
import math

import numpy as np
import pytest

from schn import metrics as M
from schn.errors import SchnError


# ---------- plain reference implementations (one query at a time, pure Python) ----------

def ref_rank(q, D):
    """Stable ranking by Hamming distance 0.5*(c - q.d)."""
    c = len(q)
    dist = [0.5 * (c - sum(int(a) * int(b) for a, b in zip(q, d))) for d in D]
    return sorted(range(len(D)), key=lambda j: dist[j]), dist


def ref_shared(ql, dl):
    return sum(int(a) * int(b) for a, b in zip(ql, dl))


def ref_map(qB, dB, qL, dL, depth=None, drop_last=False):
    aps = []
    for q, ql in zip(qB, qL):
        order, _ = ref_rank(q, dB)
        if drop_last:
            order = order[:-1]
        if depth is not None:
            order = order[:depth]
        hits, total = 0, 0.0
        for i, j in enumerate(order, start=1):
            if ref_shared(ql, dL[j]) > 0:
                hits += 1
                total += hits / i
        aps.append(total / hits if hits else 0.0)
    return sum(aps) / len(aps)


def ref_radius(qB, dB, qL, dL, r):
    """Per query (retrieved, relevant retrieved, relevant in database) within radius r."""
    rows = []
    for q, ql in zip(qB, qL):
        _, dist = ref_rank(q, dB)
        rel = [ref_shared(ql, dl) > 0 for dl in dL]
        inside = [j for j in range(len(dB)) if dist[j] <= r]
        rows.append((len(inside), sum(rel[j] for j in inside), sum(rel)))
    return rows


def ref_p_at(qB, dB, qL, dL, n):
    ps = []
    for q, ql in zip(qB, qL):
        order, _ = ref_rank(q, dB)
        ps.append(sum(ref_shared(ql, dL[j]) > 0 for j in order[:n]) / n)
    return sum(ps) / len(ps)


def ref_ndcg(qB, dB, qL, dL, k):
    out = []
    for q, ql in zip(qB, qL):
        order, _ = ref_rank(q, dB)
        rel = [ref_shared(ql, dl) for dl in dL]
        dcg = sum((2 ** rel[j] - 1) / math.log2(i + 2) for i, j in enumerate(order[:k]))
        ideal = sorted(rel, reverse=True)[:k]
        idcg = sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
        out.append(dcg / idcg if idcg > 0 else 0.0)
    return sum(out) / len(out)


def random_case(seed, nq=7, nd=40, bits=6, k=5, zeros=False):
    """Short codes force many ties; several labels per item make it multi-label."""
    rng = np.random.default_rng(seed)
    qB = rng.choice([-1, 1], size=(nq, bits)).astype(np.int8)
    dB = rng.choice([-1, 1], size=(nd, bits)).astype(np.int8)
    if zeros:  # the authors' sign(0) = 0
        qB[rng.random(qB.shape) < 0.2] = 0
        dB[rng.random(dB.shape) < 0.2] = 0
    qL = (rng.random((nq, k)) < 0.3).astype(np.uint8)
    dL = (rng.random((nd, k)) < 0.3).astype(np.uint8)
    qL[0] = 0  # a query with no relevant item
    return qB, dB, qL, dL


SEEDS = [0, 1, 2, 3]


# ---------- against the loops ----------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("depth,drop_last", [(None, False), (None, True), (5, False), (100, True)])
def test_map_matches_loop(seed, depth, drop_last):
    case = random_case(seed, zeros=seed == 3)
    got = M.mean_average_precision(*case, depth=depth, drop_last=drop_last)
    assert got == pytest.approx(ref_map(*case, depth=depth, drop_last=drop_last), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_radius_metrics_match_loop(seed):
    qB, dB, qL, dL = case = random_case(seed, zeros=seed == 3)
    bits = qB.shape[1]
    pr = M.pr_curve_by_radius(*case)
    for r in range(bits + 1):
        rows = ref_radius(*case, r)
        with_ret = [g / n for n, g, _ in rows if n > 0]
        with_rel = [g / t for _, g, t in rows if t > 0]
        exp_p = sum(with_ret) / len(with_ret) if with_ret else float("nan")
        assert pr["precision"][r] == pytest.approx(exp_p, nan_ok=True)
        assert pr["recall"][r] == pytest.approx(sum(with_rel) / len(with_rel))
        assert pr["retrieved_fraction"][r] == pytest.approx(len(with_ret) / len(rows))
    rows = ref_radius(*case, 2)
    exp = sum(g / n if n else 0.0 for n, g, _ in rows) / len(rows)
    assert M.precision_within_radius(*case, radius=2) == pytest.approx(exp)


@pytest.mark.parametrize("seed", SEEDS)
def test_precision_at_n_and_ndcg_match_loop(seed):
    case = random_case(seed, zeros=seed == 3)
    got = M.precision_at_n(*case, ns=(1, 5, 17, 40))
    for n, v in got.items():
        assert v == pytest.approx(ref_p_at(*case, n))
    ns, p = M.precision_at_n_curve(*case)
    assert ns[-1] == 40 and len(ns) == len(p)
    assert p[3] == pytest.approx(ref_p_at(*case, int(ns[3])))
    for k in (1, 5, 40, 1000):
        assert M.ndcg_at_k(*case, k=k) == pytest.approx(ref_ndcg(*case, min(k, 40)))


@pytest.mark.parametrize("seed", SEEDS)
def test_evaluate_retrieval_agrees_with_single_functions(seed):
    case = random_case(seed)
    res = M.evaluate_retrieval(*case, depth=10, ns=(5, 20, 500), ndcg_k=8)
    assert res["map"] == pytest.approx(M.mean_average_precision(*case, depth=10))
    assert res["map_depth"] == 10
    assert res["precision_at_radius_2"] == pytest.approx(M.precision_within_radius(*case))
    assert set(res["precision_at_n"]) == {5, 20}  # 500 > database size: skipped
    assert res["precision_at_n"][20] == pytest.approx(ref_p_at(*case, 20))
    assert res["ndcg"] == pytest.approx(M.ndcg_at_k(*case, k=8))
    pr = M.pr_curve_by_radius(*case)
    assert res["pr_curve"]["recall"] == pytest.approx(list(pr["recall"]))
    json.dumps(res)  # JSON-ready: NaN became None


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_chunking_gives_same_result(chunk):
    case = random_case(5, nq=7)
    whole = M.evaluate_retrieval(*case, ndcg_k=10, chunk_size=100)
    part = M.evaluate_retrieval(*case, ndcg_k=10, chunk_size=chunk)
    assert json.dumps(part) == json.dumps(whole)


# ---------- hand-computed cases ----------

Q = np.array([[1, 1]])
# distances to the query: 1, 0, 1, 2, 0
D = np.array([[1, -1], [1, 1], [-1, 1], [-1, -1], [1, 1]])


def one_hot(ids, k=3):
    return np.eye(k, dtype=np.uint8)[ids]


def test_ties_broken_by_database_order():
    # stable ranking: items 1, 4 (d=0), then 0, 2 (d=1), then 3 (d=2)
    dL = one_hot([0, 1, 0, 0, 0])  # relevant to class 0: items 0, 2, 3, 4
    qL = one_hot([0])
    # relevance along ranking 1,4,0,2,3 -> 0,1,1,1,1; AP = (1/2 + 2/3 + 3/4 + 4/5) / 4
    exp = (1 / 2 + 2 / 3 + 3 / 4 + 4 / 5) / 4
    assert M.mean_average_precision(Q, D, qL, dL) == pytest.approx(exp)
    # item order matters: swapping items 1 and 4 puts the relevant one first
    D2, dL2 = D[[0, 4, 2, 3, 1]], dL[[0, 4, 2, 3, 1]]
    exp2 = (1 + 2 / 3 + 3 / 4 + 4 / 5) / 4  # ranking 4,1,0,2,3 -> 1,0,1,1,1
    assert M.mean_average_precision(Q, D2, qL, dL2) == pytest.approx(exp2)
    assert M.precision_at_n(Q, D, qL, dL, ns=(1, 2))[1] == 0.0
    assert M.precision_at_n(Q, D2, qL, dL2, ns=(1, 2))[1] == 1.0


def test_depth_below_relevant_count_and_drop_last():
    dL = one_hot([0, 1, 0, 0, 0])
    qL = one_hot([0])
    # top 3 of ranking 1,4,0 -> 0,1,1: R_3 = 2, AP@3 = (1/2 + 2/3) / 2
    assert M.mean_average_precision(Q, D, qL, dL, depth=3) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # drop_last removes item 3 (last ranked): (1/2 + 2/3 + 3/4) / 3
    assert M.mean_average_precision(Q, D, qL, dL, drop_last=True) == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)
    # and changes nothing when the depth is already below the database size
    assert M.mean_average_precision(Q, D, qL, dL, depth=3, drop_last=True) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_query_without_relevant_item_counts_zero():
    qL = one_hot([0, 2])
    dL = one_hot([0, 1, 0, 0, 0])  # nothing of class 2
    Qs = np.array([[1, 1], [1, 1]])
    one = M.mean_average_precision(Q, D, qL[:1], dL)
    assert M.mean_average_precision(Qs, D, qL, dL) == pytest.approx(one / 2)
    assert M.ndcg_at_k(Qs, D, qL, dL, k=5) == pytest.approx(M.ndcg_at_k(Q, D, qL[:1], dL, k=5) / 2)
    # recall is averaged only over queries with something relevant
    pr = M.pr_curve_by_radius(Qs, D, qL, dL)
    assert pr["recall"][2] == 1.0


def test_nothing_within_radius():
    Qf = np.array([[1, 1, 1, 1]])
    Df = np.array([[-1, -1, -1, 1], [-1, -1, -1, -1]])  # distances 3 and 4
    lab = one_hot([0, 0])
    assert M.precision_within_radius(Qf, Df, lab[:1], lab, radius=2) == 0.0
    pr = M.pr_curve_by_radius(Qf, Df, lab[:1], lab)
    assert np.isnan(pr["precision"][:3]).all() and pr["retrieved_fraction"][2] == 0.0
    assert pr["precision"][3] == 1.0 and pr["recall"][3] == 0.5
    res = M.evaluate_retrieval(Qf, Df, lab[:1], lab)
    assert res["pr_curve"]["precision"][:3] == [None, None, None]


def test_zero_codes_give_half_distances():
    # sign(0) = 0: distance to [1, 1] from [0, 1] is 0.5, so it is not within radius 0
    Qz = np.array([[0, 1]])
    Dz = np.array([[1, 1], [-1, -1]])
    lab = one_hot([0, 1])
    pr = M.pr_curve_by_radius(Qz, Dz, lab[:1], lab)
    assert pr["retrieved_fraction"][0] == 0.0 and pr["precision"][1] == 1.0


def test_unstable_ties():
    # with ties, "unstable" may order equal distances differently but is still a valid mAP
    case = random_case(4)
    assert 0.0 <= M.mean_average_precision(*case, ties="unstable") <= 1.0
    # without ties both rankings are the same
    one = np.array([[1, 1, 1]])
    D3 = np.array([[1, 1, 1], [1, 1, -1], [1, -1, -1], [-1, -1, -1]])  # distances 0..3
    l3 = one_hot([0, 1, 0, 0])
    assert M.mean_average_precision(one, D3, l3[:1], l3, ties="unstable") == pytest.approx(
        M.mean_average_precision(one, D3, l3[:1], l3)
    )


def test_memory_bounded_chunks(monkeypatch):
    # with a tiny budget every query is its own chunk, results unchanged
    case = random_case(9)
    full = M.evaluate_retrieval(*case)
    monkeypatch.setattr(M, "MEMORY_BUDGET", 1)
    assert json.dumps(M.evaluate_retrieval(*case)) == json.dumps(full)


# ---------- validation and config ----------

def test_errors_are_schn_errors():
    case = random_case(0)
    qB, dB, qL, dL = case
    with pytest.raises(SchnError):
        M.mean_average_precision(qB[:, :3], dB, qL, dL)
    with pytest.raises(SchnError):
        M.mean_average_precision(qB * 0.5, dB, qL, dL)
    with pytest.raises(SchnError):
        M.mean_average_precision(*case, ties="random")
    with pytest.raises(SchnError):
        M.mean_average_precision(*case, depth=0)
    with pytest.raises(SchnError):
        M.precision_at_n(*case, ns=(41,))
    with pytest.raises(SchnError):
        M.mean_average_precision(qB, dB, qL[:2], dL)


def test_eval_config():
    cfg = M.EvalConfig()
    assert cfg.precision_at == [100, 500, 1000, 5000] and cfg.ties == "stable"
    assert cfg.ndcg_depth(True) == 1000 and cfg.ndcg_depth(False) is None
    assert M.EvalConfig(ndcg_k=50).ndcg_depth(False) == 50
    for bad in ({"map_depth": 0}, {"radius": -1}, {"precision_at": [0]}, {"ties": "x"},
                {"drop_last": "yes"}, {"ndcg_k": -3}):
        with pytest.raises(SchnError):
            M.EvalConfig(**bad)
    case = random_case(1)
    res = M.evaluate(*case, M.EvalConfig(map_depth=10, precision_at=[5], drop_last=True))
    assert res["map_depth"] == 10 and res["ndcg_k"] == 1000  # random_case is multi-label
    assert res["map"] == pytest.approx(ref_map(*case, depth=10))


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    qB, dB, qL, dL = random_case(2)
    t = [torch.as_tensor(a) for a in (qB, dB, qL, dL)]
    assert M.mean_average_precision(*t) == pytest.approx(M.mean_average_precision(qB, dB, qL, dL))


# ---------- the fast validation mAP (stable ties) against the general pass ----------

def ref_map_loop(qB, dB, qL, dL, depth=None, drop_last=False):
    """Plain per-query loop with NumPy: stable ranking by doubled integer distance, AP@cut."""
    qB, dB = np.asarray(qB, dtype=np.int64), np.asarray(dB, dtype=np.int64)
    nd = len(dB)
    cut = nd if depth is None else min(depth, nd)
    if drop_last:
        cut = min(cut, nd - 1)
    aps = []
    for q, ql in zip(qB, qL):
        dist2 = qB.shape[1] - dB @ q
        order = sorted(range(nd), key=lambda j: (dist2[j], j))[:cut]
        rel = [bool(np.any(np.logical_and(ql, dL[j]))) for j in order]
        hits, total = 0, 0.0
        for i, r in enumerate(rel, start=1):
            if r:
                hits += 1
                total += hits / i
        aps.append(total / hits if hits else 0.0)
    return float(np.mean(aps))


def fast_case(seed, nq=9, nd=60, bits=5, k=4, zeros=False, single=False):
    """Tiny codes (many ties), multi- or single-label, a query with nothing relevant, repeated
    queries (same code and labels, same code other labels)."""
    rng = np.random.default_rng(seed)
    qB = rng.choice([-1, 1], size=(nq, bits)).astype(np.float32)
    dB = rng.choice([-1, 1], size=(nd, bits)).astype(np.float32)
    if zeros:
        qB[rng.random(qB.shape) < 0.2] = 0
        dB[rng.random(dB.shape) < 0.2] = 0
    if single:
        qL = np.eye(k, dtype=np.float32)[rng.integers(0, k, nq)]
        dL = np.eye(k, dtype=np.float32)[rng.integers(0, k - 1, nd)]  # class k-1: nothing relevant
        qL[0] = np.eye(k)[k - 1]
    else:
        qL = (rng.random((nq, k)) < 0.4).astype(np.float32)
        dL = (rng.random((nd, k)) < 0.4).astype(np.float32)
        qL[0] = 0
    qB[1], qL[1] = qB[2], qL[2]  # a repeated query
    qB[3] = qB[4]  # same code, maybe other labels
    return qB, dB, qL, dL


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("depth,drop_last", [(None, False), (None, True), (1, False), (7, False),
                                             (30, True), (59, False), (60, False), (1000, False)])
def test_fast_map_equals_loop_and_general_pass(seed, depth, drop_last):
    case = fast_case(seed, zeros=seed == 4, single=seed % 2 == 1)
    fast = M.mean_average_precision(*case, depth=depth, drop_last=drop_last)
    assert fast == pytest.approx(ref_map_loop(*case, depth=depth, drop_last=drop_last), abs=1e-12)
    assert fast == M._mean_average_precision_reference(*case, depth=depth, drop_last=drop_last)


@pytest.mark.parametrize("bits", [1, 8, 9, 31, 32, 33, 64, 65, 130])
def test_fast_map_code_and_label_widths(bits):
    # one-word codes narrowed to 8/16/32 bits, several words, labels wider than 64
    rng = np.random.default_rng(bits)
    qB = rng.choice([-1, 1], size=(6, bits))
    dB = rng.choice([-1, 1], size=(50, bits))
    qL = (rng.random((6, 70)) < 0.05).astype(np.uint8)
    dL = (rng.random((50, 70)) < 0.05).astype(np.uint8)
    for depth in (None, 10):
        assert M.mean_average_precision(qB, dB, qL, dL, depth=depth) == \
            M._mean_average_precision_reference(qB, dB, qL, dL, depth=depth)


@pytest.mark.parametrize("path", ["counting", "sort"])
@pytest.mark.parametrize("seed", range(6))
def test_fast_map_counting_and_sort_paths_agree(monkeypatch, seed, path):
    # the counting sort (scipy's COO -> CSR, used from a quarter of the database on) and the
    # argsort path (below it, or without scipy's private module) give the same value, bit for bit
    if path == "sort":
        monkeypatch.setattr(M, "_counting_sort", lambda: None)
    else:
        assert M._counting_sort() is not None
        monkeypatch.setattr(M, "COUNTING_MIN_FRACTION", 0.0)
    case = fast_case(seed, zeros=seed == 4, single=seed % 2 == 1)
    for depth, drop_last in [(None, False), (None, True), (1, False), (7, False), (30, True), (1000, False)]:
        for threads in (1, 2):
            assert M.mean_average_precision(*case, depth=depth, drop_last=drop_last, threads=threads) == \
                M._mean_average_precision_reference(*case, depth=depth, drop_last=drop_last)


def test_fast_map_chunks_threads_and_unstable_untouched():
    case = fast_case(7)
    whole = M.mean_average_precision(*case)
    for chunk in (1, 2, 5):
        assert M.mean_average_precision(*case, chunk_size=chunk) == whole
    for threads in (2, 3, 64):  # more threads than queries too
        for chunk in (None, 1, 2):
            assert M.mean_average_precision(*case, chunk_size=chunk, threads=threads) == whole
    for depth in (1, 7):
        assert M.mean_average_precision(*case, depth=depth, threads=2) == M.mean_average_precision(*case, depth=depth)
    with pytest.raises(SchnError, match="threads"):
        M.mean_average_precision(*case, threads=0)
    # ties="unstable" still takes the general pass
    assert M.mean_average_precision(*case, ties="unstable") == \
        M._mean_average_precision_reference(*case, ties="unstable")


def test_fast_map_ties_keep_database_order():
    # the hand-computed stable-tie case above, through the fast path
    dL = one_hot([0, 1, 0, 0, 0])
    assert M.mean_average_precision(Q, D, one_hot([0]), dL) == pytest.approx((1 / 2 + 2 / 3 + 3 / 4 + 4 / 5) / 4)
    assert M.mean_average_precision(Q, D, one_hot([0]), dL, depth=2) == pytest.approx(1 / 2)


def test_fast_map_property():
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hyp.settings(max_examples=150, deadline=None, derandomize=True)
    @hyp.given(seed=st.integers(0, 2**32 - 1), nq=st.integers(1, 6), nd=st.integers(2, 40),
               bits=st.integers(1, 40), k=st.integers(1, 12), p=st.floats(0.0, 1.0),
               zeros=st.booleans(), depth=st.one_of(st.none(), st.integers(1, 45)),
               drop_last=st.booleans(), threads=st.integers(1, 3))
    def check(seed, nq, nd, bits, k, p, zeros, depth, drop_last, threads):
        rng = np.random.default_rng(seed)
        qB = rng.choice([-1, 1], size=(nq, bits))
        dB = rng.choice([-1, 1], size=(nd, bits))
        if zeros:
            qB[rng.random(qB.shape) < 0.3] = 0
        if nq > 1:
            qB[-1] = qB[0]
        qL = (rng.random((nq, k)) < p).astype(np.uint8)
        dL = (rng.random((nd, k)) < p).astype(np.uint8)
        kw = dict(depth=depth, drop_last=drop_last)
        assert M.mean_average_precision(qB, dB, qL, dL, threads=threads, **kw) == \
            M._mean_average_precision_reference(qB, dB, qL, dL, **kw)

    check()
