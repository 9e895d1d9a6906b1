"""Every searcher (and multi-index hashing at any m) against a plain-loop brute force."""
import numpy as np
import pytest

from schn import codes as codes_mod
from schn.errors import SchnError
from schn.index import create_searcher, list_searchers
from schn.index.mih import MultiIndexHashing, flip_masks, substring_bounds, substring_count, substring_keys
from schn.index.searchers import select_knn, sort_found


def random_codes(rng, n, bits):
    return codes_mod.pack(rng.choice([-1, 1], size=(n, bits)))


def loop_distance(a, b, bits):
    x = codes_mod.unpack(a[None], bits)[0]
    y = codes_mod.unpack(b[None], bits)[0]
    return sum(1 for i in range(bits) if x[i] != y[i])


def loop_knn(db, ids, query, k, bits):
    scored = sorted((loop_distance(query, db[i], bits), ids[i], i) for i in range(len(db)))
    return [row for _, _, row in scored[:k]], [d for d, _, _ in scored[:k]]


def loop_radius(db, ids, query, r, bits):
    scored = sorted((loop_distance(query, db[i], bits), ids[i], i) for i in range(len(db)))
    return [row for d, _, row in scored if d <= r], [d for d, _, _ in scored if d <= r]


@pytest.mark.parametrize("bits", [5, 12, 64, 100, 128])
def test_every_searcher_equals_the_loop(bits):
    rng = np.random.default_rng(bits)
    n = 300
    db = random_codes(rng, n, bits)
    db[50:60] = db[0]  # exact duplicates: ties at distance 0
    queries = np.concatenate([random_codes(rng, 4, bits), db[:2]])
    ids = rng.permutation(n).astype(np.int64)  # ties are broken by id, not by row
    for name, tie_order in [(name, order) for name in list_searchers() for order in (None, np.argsort(ids))]:
        searcher = create_searcher(name, db, bits, tie_order=tie_order)
        for k in (1, 7, n):
            rows, dist = select_knn(searcher.knn(queries, k), k, ids)
            for i, q in enumerate(queries):
                want_rows, want_dist = loop_knn(db, ids, q, k, bits)
                assert rows[i].tolist() == want_rows, (name, k)
                assert dist[i].tolist() == want_dist, (name, k)
        for r in (0, 1, bits // 3):
            for i, (rows, dist) in enumerate(sort_found(searcher.radius(queries, r), ids)):
                want_rows, want_dist = loop_radius(db, ids, queries[i], r, bits)
                assert rows.tolist() == want_rows and dist.tolist() == want_dist, (name, r)


@pytest.mark.parametrize("m", [2, 3, 7, 64])
def test_multi_index_hashing_is_exact_for_any_substring_count(m):
    rng = np.random.default_rng(m)
    bits, n = 64, 500
    centres = rng.choice([-1, 1], size=(5, bits))
    signed = centres[rng.integers(0, 5, n)] * np.where(rng.random((n, bits)) < 0.05, -1, 1)
    db = codes_mod.pack(signed)  # clustered like learned codes: many small, tied distances
    queries = db[rng.integers(0, n, 6)]
    ids = np.array([f"item-{i:04d}" for i in rng.permutation(n)], dtype="S")
    mih = MultiIndexHashing(db, bits, substrings=m)
    flat = create_searcher("numpy", db, bits)
    for k in (1, 10, 100):
        got = select_knn(mih.knn(queries, k), k, ids)
        want = select_knn(flat.knn(queries, k), k, ids)
        assert (got[0] == want[0]).all() and (got[1] == want[1]).all()
    for r in (0, 3, 9):
        got = sort_found(mih.radius(queries, r), ids)
        want = sort_found(flat.radius(queries, r), ids)
        assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(got, want))


def test_faiss_is_checked_for_ranking_ties_by_position(monkeypatch):
    from schn.index import searchers

    assert searchers.faiss_ranks_ties_by_position()  # FAISS >= 1.7.3 heaps: measured, not assumed
    db = np.zeros((50, 1), dtype=np.uint8)  # fifty equal codes
    order = np.arange(50)[::-1]
    assert create_searcher("faiss", db, 8, tie_order=order).knn(db[:1], 3)[0][0].tolist() == [49, 48, 47]
    searchers.faiss_ranks_ties_by_position.cache_clear()
    monkeypatch.setattr(np, "lexsort", lambda keys: np.arange(len(keys[0]))[::-1])  # the check now fails
    assert not searchers.faiss_ranks_ties_by_position()
    monkeypatch.undo()
    searchers.faiss_ranks_ties_by_position.cache_clear()


def test_string_ids_break_ties_by_code_point_order():
    db = np.zeros((3, 1), dtype=np.uint8)  # three identical 8-bit codes
    ids = np.array(["b", "a", "é"], dtype=object)
    stored = np.array([s.encode() for s in ids], dtype="S")
    rows, _ = select_knn(create_searcher("faiss", db, 8).knn(db[:1], 3), 3, stored)
    assert ids[rows[0]].tolist() == ["a", "b", "é"]


def test_substring_keys_read_bits_across_word_boundaries():
    rng = np.random.default_rng(0)
    bits = 130
    signed = rng.choice([-1, 1], size=(20, bits))
    words = codes_mod.to_words(codes_mod.pack(signed))
    bit_values = (signed > 0).astype(np.int64)
    for start, length in [(0, 7), (60, 10), (63, 2), (120, 10), (64, 31)]:
        want = [int("".join(map(str, row[start:start + length])), 2) for row in bit_values]
        assert substring_keys(words, start, length).tolist() == want


def test_substring_layout_and_flip_masks():
    assert substring_count(64, 10_000_000) == 3  # ceil(64 / log2(1e7)) = ceil(2.75)
    assert substring_count(128, 1_000_000) == 7
    assert substring_count(64, 1) == 2 and substring_count(8, 2) == 8 and substring_count(12, 1) == 1
    with pytest.raises(SchnError, match="substrings"):
        MultiIndexHashing(np.zeros((3, 8), np.uint8), 64, substrings=1)
    assert substring_bounds(64, 3) == [(0, 22), (22, 21), (43, 21)]
    masks = flip_masks(10, 3)
    assert len(masks) == 120 and len(set(masks.tolist())) == 120
    assert all(bin(int(x)).count("1") == 3 and x < 1024 for x in masks)
    assert len(flip_masks(4, 5)) == 0


def test_searchers_handle_one_item_and_k_equal_to_n():
    db = codes_mod.pack(np.ones((1, 16)))
    for name in list_searchers():
        rows, dist = select_knn(create_searcher(name, db, 16).knn(db, 1), 1, np.array([7]))
        assert rows.tolist() == [[0]] and dist.tolist() == [[0]]


def test_padding_bits_must_be_zero():
    codes = np.array([[0, 0b00000001]], dtype=np.uint8)  # a 12-bit code with a bit set in the padding
    with pytest.raises(SchnError, match="padding"):
        codes_mod.check_packed(codes, 12)
    codes_mod.check_packed(np.array([[0, 0b00010000]], dtype=np.uint8), 12)  # bit 11: a real bit
    with pytest.raises(SchnError, match="bytes"):
        codes_mod.check_packed(np.zeros((2, 3), np.uint8), 12)


@pytest.mark.parametrize("budget", [10**9, 50, 0])
def test_auto_searcher_is_exact_whichever_way_each_query_goes(monkeypatch, budget):
    from schn.index.mih import AutoSearcher

    monkeypatch.setattr(AutoSearcher, "min_items", 1)
    rng = np.random.default_rng(1)
    bits, n = 32, 400
    centres = rng.choice([-1, 1], size=(4, bits))
    db = codes_mod.pack(centres[rng.integers(0, 4, n)] * np.where(rng.random((n, bits)) < 0.05, -1, 1))
    queries = np.concatenate([db[:12], random_codes(rng, 12, bits)])  # near and far queries
    ids = rng.permutation(n)
    auto = create_searcher("auto", db, bits)
    auto.budget = budget  # everything by MIH, some queries by the scan, or all by the scan
    flat = create_searcher("numpy", db, bits)
    for k in (1, 10):
        got, want = select_knn(auto.knn(queries, k), k, ids), select_knn(flat.knn(queries, k), k, ids)
        assert (got[0] == want[0]).all() and (got[1] == want[1]).all()
    got, want = sort_found(auto.radius(queries, 4), ids), sort_found(flat.radius(queries, 4), ids)
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(got, want))
