"""The local index: mutations, ids, persistence, refusals of damaged indexes, crash safety."""
import json

import numpy as np
import pytest

from schn import codes as codes_mod
from schn.errors import SchnError
from schn.index import HammingIndex, create_index_backend, list_index_backends, list_searchers, open_index
from schn.index import store as store_mod


def codes(rng, n, bits=16):
    return codes_mod.pack(rng.choice([-1, 1], size=(n, bits)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_searchers_agree_through_the_index(rng):
    index = HammingIndex(12)
    index.add(codes(rng, 400, 12), ids=[f"img{i}" for i in rng.permutation(400)])
    queries = codes(rng, 5, 12)
    results = [index.search(queries, 20, searcher=name) for name in list_searchers()]
    for other in results[1:]:
        assert (other.ids == results[0].ids).all() and (other.distances == results[0].distances).all()
    # distances ascend, and ids ascend within a distance
    for ids, dist in zip(results[0].ids, results[0].distances):
        assert list(zip(dist, ids)) == sorted(zip(dist, ids))


def test_add_assigns_ids_and_rejects_duplicates(rng):
    index = HammingIndex(16)
    assert index.add(codes(rng, 3)).tolist() == [0, 1, 2]
    index.add(codes(rng, 2))
    assert index.ids.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(SchnError, match="already in the index"):
        index.add(codes(rng, 1), ids=[2])
    with pytest.raises(SchnError, match="twice"):
        index.add(codes(rng, 2), ids=[9, 9])
    with pytest.raises(SchnError, match="holds int ids"):
        index.add(codes(rng, 1), ids=["a"])
    with pytest.raises(SchnError, match="16-bit"):
        index.add(codes(rng, 1, bits=24))
    with pytest.raises(SchnError, match="one id per code"):
        index.add(codes(rng, 2), ids=[10])
    assert len(index) == 5


def test_delete_and_upsert(rng):
    index = HammingIndex(16)
    batch = codes(rng, 5)
    index.add(batch, ids=["a", "b", "c", "d", "e"], paths=[f"/x/{c}.jpg" for c in "abcde"])
    assert index.delete(["b", "d"]) == 2
    assert index.ids.tolist() == ["a", "c", "e"] and "b" not in index and "c" in index
    with pytest.raises(SchnError, match="'zz' is not in the index"):
        index.delete(["zz"])
    assert index.delete(["zz"], missing="ignore") == 0
    new = codes(rng, 2)
    assert index.upsert(new, ids=["c", "f"], paths=["/y/c.jpg", "/y/f.jpg"]) == (1, 1)
    assert (index.codes_of(["c", "f"]) == new).all()
    assert [item["path"] for item in index.items(["a", "c", "f"])] == ["/x/a.jpg", "/y/c.jpg", "/y/f.jpg"]
    # the stored item itself is not its own neighbour unless asked
    found = index.search_ids(["c"], k=10)
    assert "c" not in found.ids[0].tolist() and len(found.ids[0]) == 3
    assert index.search_ids(["c"], k=1, include_self=True).ids[0].tolist() == ["c"]


def test_labels_and_paths_survive_a_round_trip(tmp_path, rng):
    index = HammingIndex(16, class_names=["cat", "dog", "car"], info={"method": "schn", "run": "runs/x"})
    labels = np.array([[1, 0, 0], [0, 1, 1]])
    index.add(codes(rng, 2), ids=[10, 20], labels=labels, paths=["a.jpg", "b/ü.jpg"])
    index.add(codes(rng, 1), ids=[30])  # no labels or paths: blank
    index.save(tmp_path / "idx")
    back = HammingIndex.open(tmp_path / "idx")
    assert back.items([20, 30]) == [{"id": 20, "label": "dog,car", "path": "b/ü.jpg"},
                                    {"id": 30, "label": "", "path": ""}]
    assert back.info["method"] == "schn" and back.describe()["count"] == 3
    assert isinstance(back.codes.base, np.memmap) and not back.codes.flags.writeable  # opened memory-mapped
    q = codes(rng, 3)
    assert (back.search(q, 2).ids == index.search(q, 2).ids).all()


def test_saving_replaces_versions_atomically(tmp_path, rng, monkeypatch):
    folder = tmp_path / "idx"
    index = HammingIndex(16)
    index.add(codes(rng, 10))
    index.save(folder)
    first = json.loads((folder / "manifest.json").read_text())
    index.add(codes(rng, 5))

    real_save = store_mod._save_array
    calls = {"n": 0}

    def crash_after_first_file(path, array):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # a crash in the middle of writing the new version
        return real_save(path, array)

    monkeypatch.setattr(store_mod, "_save_array", crash_after_first_file)
    with pytest.raises(KeyboardInterrupt):
        index.save()
    monkeypatch.setattr(store_mod, "_save_array", real_save)
    assert len(HammingIndex.open(folder)) == 10  # the previous index, intact
    assert json.loads((folder / "manifest.json").read_text()) == first
    index.save()
    assert len(HammingIndex.open(folder)) == 15
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [json.loads((folder / "manifest.json").read_text())["data"]]


def test_damaged_or_foreign_indexes_are_refused(tmp_path, rng):
    folder = tmp_path / "idx"
    index = HammingIndex(16)
    index.add(codes(rng, 50))
    index.save(folder)
    data = folder / json.loads((folder / "manifest.json").read_text())["data"]

    raw = bytearray((data / "codes.npy").read_bytes())
    raw[-1] ^= 0xFF
    (data / "codes.npy").write_bytes(bytes(raw))
    with pytest.raises(SchnError, match="checksum of codes.npy"):
        HammingIndex.open(folder)
    HammingIndex.open(folder, verify=False)  # sizes still checked; contents trusted

    (data / "ids.npy").write_bytes((data / "ids.npy").read_bytes()[:-8])
    with pytest.raises(SchnError, match="truncated"):
        HammingIndex.open(folder, verify=False)

    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(SchnError, match="not valid JSON"):
        HammingIndex.open(folder)
    with pytest.raises(SchnError, match="no index at"):
        HammingIndex.open(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    with pytest.raises(SchnError, match="not a schn index"):
        HammingIndex.open(tmp_path / "other")


def test_concurrent_writers_do_not_lose_updates(tmp_path, rng):
    folder = tmp_path / "idx"
    index = HammingIndex(16)
    index.add(codes(rng, 4))
    index.save(folder)
    one, two = HammingIndex.open(folder), HammingIndex.open(folder)
    one.add(codes(rng, 1))
    one.save()
    two.add(codes(rng, 1))
    with pytest.raises(SchnError, match="changed on disk"):
        two.save()


def test_queries_and_arguments_are_checked(rng):
    index = HammingIndex(16)
    index.add(codes(rng, 5))
    with pytest.raises(SchnError, match="16-bit"):
        index.search(codes(rng, 1, bits=8), 3)
    with pytest.raises(SchnError, match="k must be"):
        index.search(codes(rng, 1), 0)
    assert index.search(codes(rng, 2), 50).ids.shape == (2, 5)  # k capped at the item count
    assert len(HammingIndex(16).search(codes(rng, 1), 3).ids[0]) == 0
    with pytest.raises(SchnError, match="unknown searcher"):
        index.search(codes(rng, 1), 3, searcher="annoy")


@pytest.mark.parametrize("backend", list_index_backends())
def test_every_backend_fulfils_the_index_contract(tmp_path, rng, backend):
    if backend == "milvus":
        pytest.importorskip("pymilvus")
    location = tmp_path / ("c.db" if backend == "milvus" else "idx")
    index = create_index_backend(backend, str(location), bits=12, id_kind="str", class_names=["a", "b"],
                                 info={"method": "schn"})
    reference = HammingIndex(12, class_names=["a", "b"])
    batch, ids = codes(rng, 300, 12), [f"i{n}" for n in rng.permutation(300)]
    labels = rng.integers(0, 2, (300, 2))
    for target in (index, reference):
        target.add(batch, ids=ids, labels=labels, paths=[f"{i}.jpg" for i in ids])
        target.delete(ids[:10])
        target.upsert(codes(np.random.default_rng(5), 3, 12), ids=[ids[20], "new1", "new2"])
    index.save()
    index = open_index(str(location))
    queries = codes(rng, 4, 12)
    assert len(index) == len(reference) == 292
    got, want = index.search(queries, 15), reference.search(queries, 15)
    assert (got.ids == want.ids).all() and (got.distances == want.distances).all()
    for a, b in zip(index.radius_search(queries, 2), reference.radius_search(queries, 2)):
        assert a.ids.tolist() == b.ids.tolist() and a.distances.tolist() == b.distances.tolist()
    assert index.items([ids[30]]) == reference.items([ids[30]])
    assert index.search_ids(["new1"], 5).ids.tolist() == reference.search_ids(["new1"], 5).ids.tolist()
    assert index.describe()["bits"] == 12 and index.info["method"] == "schn"
