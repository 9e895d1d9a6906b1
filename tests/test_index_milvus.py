"""The ``milvus`` index backend on Milvus Lite and on a real Milvus server (``milvus_server_uri``):
same answers as the exact local index, ties included, same API."""
import itertools

import numpy as np
import pytest
from conftest import free_port
from milvus_standalone import wait_sealed

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from schn.codes import pack  # noqa: E402
from schn.errors import SchnError  # noqa: E402
from schn.index import HammingIndex, create_index_backend, open_index  # noqa: E402
from schn.index import milvus as milvus_mod  # noqa: E402
from schn.index.milvus import MilvusIndex, milvus_index, shown_uri  # noqa: E402

_names = itertools.count()


@pytest.fixture(scope="module", params=["lite", "server"])
def db(request, tmp_path_factory):
    """One Milvus location for the module, each test in its own collections: a Milvus Lite file,
    then the session's Milvus server (a URI with credentials)."""
    if request.param == "lite":
        return str(tmp_path_factory.mktemp("milvus") / "m.db")
    return request.getfixturevalue("milvus_server_uri")


def is_lite(db) -> bool:
    return db.endswith(".db")


def new_index(db, bits, **options) -> MilvusIndex:
    return milvus_index(db, bits, collection=f"c{next(_names)}", **options)


def random_codes(rng, n, bits):
    return pack(rng.choice([-1, 1], (n, bits)))


def assert_same(a, b):
    assert a.ids.dtype.kind == b.ids.dtype.kind
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.distances, b.distances)
    assert b.distances.dtype == np.int32


@pytest.fixture(scope="module", params=[(12, "int"), (12, "str"), (64, "int"), (64, "str")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request, db):
    """The same 2000 items in a local index and a Milvus collection (12 bits: many distance ties)."""
    bits, kind = request.param
    rng = np.random.default_rng(bits)
    n = 2000
    codes = random_codes(rng, n, bits)
    order = rng.permutation(5 * n)[:n]  # ids not in row order
    ids = order.astype(np.int64) - n if kind == "int" else np.array([f"id-{j}-ü\"\\" for j in order])
    local, remote = HammingIndex(bits), new_index(db, bits)
    local.add(codes, ids)
    remote.add(codes, ids)
    return local, remote, ids, random_codes(rng, 25, bits)


@pytest.mark.parametrize("k", [1, 10, 50])
def test_search_equals_local(pair, k):
    local, remote, _, queries = pair
    assert_same(local.search(queries, k), remote.search(queries, k))


def test_radius_search_and_search_ids_equal_local(pair):
    local, remote, ids, queries = pair
    for r in ((0, 1, 3) if local.bits == 12 else (22, 26)):
        found = remote.radius_search(queries, r)
        assert len(found) == len(queries)
        for a, b in zip(local.radius_search(queries, r), found):
            assert_same(a, b)
    assert_same(local.search_ids(ids[:7], 5), remote.search_ids(ids[:7], 5))
    assert_same(local.search_ids(ids[:3], 4, include_self=True), remote.search_ids(ids[:3], 4, include_self=True))
    assert_same(local.search(queries[:2], 5000), remote.search(queries[:2], 5000))  # k > n: all items


def test_results_past_milvus_row_cap(db):
    """Milvus returns at most 16384 rows per search: larger k and radii are fetched one distance at a time."""
    rng = np.random.default_rng(3)
    bits, n = 4, 20000
    codes, ids = random_codes(rng, n, bits), rng.permutation(n).astype(np.int64)
    local, remote = HammingIndex(bits), new_index(db, bits)
    local.add(codes, ids)
    remote.add(codes, ids)
    queries = codes[:2]
    assert_same(local.search(queries, 17000), remote.search(queries, 17000))
    for a, b in zip(local.radius_search(queries, 4), remote.radius_search(queries, 4)):
        assert_same(a, b)
    # more ties at one distance than Milvus can return: refused, not answered wrongly
    crowded = new_index(db, 1)
    crowded.add(random_codes(rng, 33000, 1))
    with pytest.raises(SchnError, match="16383 items lie at Hamming distance 0"):
        crowded.search(pack(np.ones((1, 1))), 3)


def test_mutations_like_local(db, monkeypatch):
    monkeypatch.setattr(milvus_mod, "INSERT_BYTES", 500)  # inserts in many small messages
    rng = np.random.default_rng(5)
    bits, names = 20, ["cat", "dog", "eel"]
    local, remote = HammingIndex(bits, class_names=names), new_index(db, bits, class_names=names)
    codes = random_codes(rng, 60, bits)
    labels = rng.integers(0, 2, (60, 3))
    paths = [f"img/{i}.jpg" for i in range(60)]
    for index in (local, remote):
        index.add(codes[:20], ids=[-5, 3] + list(range(10, 28)), labels=labels[:20], paths=paths[:20])
        index.add(codes[20:40])  # automatic ids continue after the largest id
        assert index.upsert(codes[40:55], ids=[*range(20, 28), *range(60, 67)], labels=labels[40:55]) == (8, 7)
        assert index.delete([3, 10, 12]) == 3
        assert index.delete([3, 11, 999], missing="ignore") == 1
    assert len(remote) == len(local) == 43
    assert 28 in remote and 66 in remote and 3 not in remote and 999 not in remote
    asked = [66, -5, 28, 24, 13]
    np.testing.assert_array_equal(remote.codes_of(asked), local.codes_of(asked))
    assert remote.items(asked) == local.items(asked)
    assert remote.items([24])[0]["path"] == "img/16.jpg"  # upsert without paths keeps the path
    queries = random_codes(rng, 5, bits)
    assert_same(local.search(queries, 8), remote.search(queries, 8))

    with pytest.raises(SchnError, match="already in the index"):
        remote.add(codes[:1], ids=[66])
    with pytest.raises(SchnError, match="occurs twice"):
        remote.add(codes[:2], ids=[100, 100])
    with pytest.raises(SchnError, match="not packed 20-bit codes"):
        remote.add(np.zeros((2, 2), np.uint8), ids=[100, 101])
    with pytest.raises(SchnError, match="holds int ids"):
        remote.add(codes[:1], ids=["x"])
    with pytest.raises(SchnError, match="not in the index"):
        remote.codes_of([66, 999])
    with pytest.raises(SchnError, match="not in the index"):
        remote.delete([999])
    assert len(remote) == 43


def test_string_ids(db):
    rng = np.random.default_rng(6)
    remote = new_index(db, 16)
    ids = ['we"ird', "back\\slash", "日本", "😀", "a b", "tab\tid", "x" * 1024]
    codes = random_codes(rng, len(ids), 16)
    remote.add(codes, ids)
    assert all(i in remote for i in ids) and "nope" not in remote
    np.testing.assert_array_equal(remote.codes_of(ids[::-1]), codes[::-1])
    assert remote.upsert(codes[:2], ids=["日本", "new"]) == (1, 1)
    assert remote.delete(ids[:3]) == 3 and len(remote) == 5
    with pytest.raises(SchnError, match="string ids"):
        remote.add(codes[:1], ids=["line\nbreak"])
    assert "line\nbreak" not in remote
    if is_lite(db):
        with pytest.raises(SchnError, match="Milvus Lite cannot delete"):
            remote.add(codes[:1], ids=["it's"])
        assert "it's" not in remote
    else:  # a server escapes ids itself
        remote.add(codes[:1], ids=["it's"])
        assert "it's" in remote and remote.delete(["it's"]) == 1 and "it's" not in remote
    with pytest.raises(SchnError, match="pass one id per code"):
        remote.add(codes[:1])


def test_reopen_keeps_manifest(db):
    info = {"method": "schn", "run": "runs/x", "model_checksum": "abc123"}
    built = milvus_index(db, 24, collection="kept", class_names=["a", "b"], info=info)
    codes = random_codes(np.random.default_rng(7), 10, 24)
    built.add(codes, ids=[f"s{i}" for i in range(10)], labels=np.eye(10, 2, dtype=np.uint8), paths=list("abcdefghij"))
    built.save()
    again = open_index(db, collection="kept")
    assert isinstance(again, MilvusIndex)
    assert (again.bits, again.id_kind, again.class_names, again.info) == (24, "str", ["a", "b"], info)
    assert len(again) == 10 and again.items(["s1", "s2"]) == [{"id": "s1", "label": "b", "path": "b"},
                                                             {"id": "s2", "label": "", "path": "c"}]
    facts = again.describe()
    assert facts["format"] == "schn-milvus" and facts["count"] == 10 and facts["collection"] == "kept"
    assert facts["method"] == "schn" and facts["index_type"] == "BIN_FLAT" and facts["uri"] == shown_uri(db)
    with pytest.raises(SchnError, match="already exists"):
        milvus_index(db, 24, collection="kept")
    replaced = milvus_index(db, 8, collection="kept", overwrite=True)
    assert len(open_index(db, collection="kept")) == 10  # the old index stays until the first write
    replaced.add(np.zeros((2, 1), np.uint8))  # int ids where the old one held strings
    assert (len(replaced), open_index(db, collection="kept").id_kind) == (2, "int")


def test_empty_index_and_backend_registry(db):
    index = create_index_backend("milvus", db, bits=8, collection="empty")
    assert len(index) == 0 and 5 not in index
    found = index.search(np.zeros((3, 1), np.uint8), 4)
    assert found.ids.shape == found.distances.shape == (3, 0)
    assert [len(f.ids) for f in index.radius_search(np.zeros((2, 1), np.uint8), 3)] == [0, 0]
    index.save()  # creates the (empty) collection
    assert len(open_index(db, collection="empty")) == 0


def test_open_errors(db, tmp_path):
    with pytest.raises(SchnError, match="no collection nothing_here at"):
        open_index(db, collection="nothing_here")
    with pytest.raises(SchnError, match="nlist must be between 1 and 65536"):
        milvus_index("http://127.0.0.1:19530", 8, index_type="BIN_IVF_FLAT", nlist=0)
    with pytest.raises(SchnError, match="between 1 and 32768 bits"):
        milvus_index(db, 32769)
    big = milvus_index(db, 8, collection="big", class_names=[f"c{i:07d}" for i in range(100_000)])
    with pytest.raises(SchnError, match="manifest .* is larger than Milvus stores"):  # a server's etcd refuses it
        big.add(np.zeros((1, 1), np.uint8))
    assert not big.client.has_collection("big")
    if is_lite(db):
        missing_file = tmp_path / "absent.db"
        with pytest.raises(SchnError, match="schn index build RUN"):
            open_index(str(missing_file))
        assert not missing_file.exists()
        with pytest.raises(SchnError, match="only the BIN_FLAT"):
            milvus_index(db, 8, collection="ivf", index_type="BIN_IVF_FLAT")


def test_server_credentials(milvus_server_uri):
    """Credentials travel in the URI; messages and describe() never show the password."""
    wrong = milvus_server_uri.replace(":Milvus@", ":wrong@")
    with pytest.raises(SchnError, match=r"cannot connect to Milvus at http://root:\*\*\*@.*credentials") as err:
        open_index(wrong, collection="anything")
    assert "wrong" not in str(err.value)
    without = milvus_server_uri.replace("root:Milvus@", "")
    with pytest.raises(SchnError, match="cannot connect to Milvus at http://127.0.0.1"):
        milvus_index(without, 8)
    index = milvus_index(milvus_server_uri, 8, collection="shown")
    index.add(np.zeros((1, 1), np.uint8))
    assert index.describe()["uri"] == milvus_server_uri.replace(":Milvus@", ":***@")
    with pytest.raises(SchnError, match=r"already exists at http://root:\*\*\*@") as err:
        milvus_index(milvus_server_uri, 8, collection="shown")
    assert "Milvus@" not in str(err.value)


def test_server_unreachable(monkeypatch):
    monkeypatch.setattr(milvus_mod, "CONNECT_TIMEOUT_S", 0.5)
    with pytest.raises(SchnError, match="cannot connect to Milvus at http://127.0.0.1:.*check the URI"):
        open_index(f"http://127.0.0.1:{free_port()}")


@pytest.fixture(scope="module")
def sealed(milvus_server_uri):
    """3000 items (12 bits: many ties) in a local index and in a BIN_FLAT and a BIN_IVF_FLAT
    collection (16 lists), both served from sealed, indexed segments (tests before this one search
    the growing segments that hold fresh rows)."""
    bits, n = 12, 3000
    rng = np.random.default_rng([bits, 1])
    codes, ids = random_codes(rng, n, bits), rng.permutation(n).astype(np.int64)
    local = HammingIndex(bits)
    local.add(codes, ids)
    remotes = [new_index(milvus_server_uri, bits), new_index(milvus_server_uri, bits, index_type="BIN_IVF_FLAT", nlist=16)]
    for remote in remotes:
        remote.add(codes, ids)
        remote.save()
    for remote in remotes:  # both flushed first: the server seals and indexes them meanwhile
        wait_sealed(remote)
    facts = remotes[1].client.describe_index(remotes[1].collection, "code")
    assert facts["index_type"] == "BIN_IVF_FLAT" and int(facts["nlist"]) == 16
    return local, remotes, random_codes(rng, 25, bits)


def test_sealed_segments_and_ivf_are_exact(sealed):
    """Sealed segments answer like growing ones. BIN_IVF_FLAT searches probe every list (nprobe =
    nlist), which makes its k-NN search exact; its range search is not (it misses items even then),
    so radius searches there are k-NN searches with a growing limit."""
    local, remotes, queries = sealed
    for _ in range(2):  # the second time with 300 more rows in a growing segment
        for remote in remotes:
            for k in (1, 10, 50):
                assert_same(local.search(queries, k), remote.search(queries, k))
            for r in (0, 2, 3, 12):  # 12: every row
                for a, b in zip(local.radius_search(queries, r), remote.radius_search(queries, r)):
                    assert_same(a, b)
        more = random_codes(np.random.default_rng(local.bits), 300, local.bits)
        for index in (local, *remotes):
            index.add(more)
    ivf = remotes[1]
    again = open_index(ivf.uri, collection=ivf.collection)  # the index type is in the manifest
    assert (again.index_type, again.nlist) == ("BIN_IVF_FLAT", 16)
    assert_same(local.search(queries, 10), again.search(queries, 10))
