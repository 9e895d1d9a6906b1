"""The local index's journal: constant-cost commits, a delta merged exactly into every search,
compaction, recovery after kill -9 (torn commits dropped, acknowledged ones kept), and the one
writer lock that `schn serve` holds for its lifetime."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import httpx2 as httpx
import numpy as np
import pytest
from conftest import child_process, schn_serve

from schn import codes as codes_mod
from schn.cli import main
from schn.errors import SchnError
from schn.index import HammingIndex, list_searchers
from schn.index import store as store_mod


def codes(rng, n, bits=8):
    return codes_mod.pack(rng.choice([-1, 1], size=(n, bits)))


def reference(index: HammingIndex) -> HammingIndex:
    """The same items in a fresh, journal-free index (one array, no delta)."""
    ref = HammingIndex(index.bits, class_names=index.class_names)
    if len(index):
        ref.add(np.asarray(index.codes), ids=index.ids.tolist())
    return ref


def assert_same_results(index, rng, ks=(1, 3, 40, 1000), radii=(0, 1, 2, 8)):
    ref = reference(index)
    queries = np.concatenate([codes(rng, 6, index.bits), np.asarray(index.codes[:2])])
    for name in list_searchers():
        for k in ks:
            got, want = index.search(queries, k, searcher=name), ref.search(queries, k, searcher="numpy")
            assert got.ids.tolist() == want.ids.tolist() and got.distances.tolist() == want.distances.tolist()
            assert index.ids_at(got.rows.ravel()).tolist() == got.ids.ravel().tolist()  # rows mean rows
        for r in radii:
            for a, b in zip(index.radius_search(queries, r, searcher=name), ref.radius_search(queries, r, "numpy")):
                assert a.ids.tolist() == b.ids.tolist() and a.distances.tolist() == b.distances.tolist()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def folder(tmp_path, rng):
    index = HammingIndex(8)
    index.add(codes(rng, 300), ids=rng.permutation(300).tolist())  # 8 bits: heavy ties
    index.save(tmp_path / "idx")
    return tmp_path / "idx"


def manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_a_commit_appends_to_the_journal_and_searches_stay_exact(folder, rng):
    before = manifest(folder)
    index = HammingIndex.open(folder)
    index.delete(list(range(0, 300, 3)))
    index.upsert(codes(rng, 40), ids=list(range(1, 80, 2)))  # some replaced, some deleted-then-back
    index.add(codes(rng, 30), ids=list(range(1000, 1030)))
    assert_same_results(index, rng)
    index.save()
    assert manifest(folder) == before  # no new version: one journal frame
    back = HammingIndex.open(folder)
    assert back.ids.tolist() == index.ids.tolist() and (back.codes == index.codes).all()
    assert_same_results(back, rng)
    back.delete([1000, 1])
    back.add(codes(rng, 1), ids=[1])
    back.save()
    again = HammingIndex.open(folder)
    assert len(again) == len(index) - 1 and 1 in again and 1000 not in again
    assert_same_results(again, rng)
    assert again.describe()["journal_items"] == again.journal_items > 0


def test_a_torn_commit_is_dropped_and_cut_off_by_the_next(folder, rng):
    index = HammingIndex.open(folder)
    index.add(codes(rng, 2), ids=[500, 501])
    index.save()
    journal = next(folder.glob("journal-*.log"))
    good = journal.read_bytes()
    index.add(codes(rng, 1), ids=[502])
    index.save()
    torn = journal.read_bytes()[:-3]  # a crash in the middle of writing the second commit
    for tail in (torn, good + b"\0" * 7, good + b"SJR1garbage"):
        journal.write_bytes(tail)
        back = HammingIndex.open(folder)
        assert 501 in back and 502 not in back and len(back) == 302
        back.add(codes(rng, 1), ids=[503])
        back.save()  # cuts the torn bytes off first
        assert {501, 503} <= set(HammingIndex.open(folder).ids.tolist())
        journal.write_bytes(good)


def test_a_journal_of_another_base_is_refused(folder, rng, tmp_path):
    index = HammingIndex.open(folder)
    index.add(codes(rng, 1), ids=[500])
    index.save()
    journal = next(folder.glob("journal-*.log"))
    stale = journal.read_bytes()
    index.compact()  # a new base; the old journal is gone
    assert not journal.exists()
    (folder / f"journal-{manifest(folder)['data']}.log").write_bytes(stale)
    with pytest.raises(SchnError, match="does not belong to base version"):
        HammingIndex.open(folder)


def test_saves_compact_past_the_limit(folder, rng, monkeypatch):
    monkeypatch.setattr(store_mod, "delta_limit", lambda n: 5)
    index = HammingIndex.open(folder)
    version = index.version
    for i in range(5):
        index.add(codes(rng, 1), ids=[600 + i])
        index.save()
    assert index.version == version and index.journal_items == 5
    index.add(codes(rng, 1), ids=[700])
    index.save()  # 6 > 5: a new base
    assert index.version == version + 1 and index.journal_items == 0 and not list(folder.glob("journal-*.log"))
    assert len(HammingIndex.open(folder)) == 306
    assert_same_results(index, rng)


def test_two_writers_of_one_journal_do_not_lose_updates(folder, rng):
    one, two = HammingIndex.open(folder), HammingIndex.open(folder)
    one.add(codes(rng, 1), ids=[900])
    one.save()
    two.add(codes(rng, 1), ids=[901])
    with pytest.raises(SchnError, match="changed on disk"):
        two.save()
    two = HammingIndex.open(folder)
    two.delete([900])
    one.add(codes(rng, 1), ids=[902])
    one.save()
    with pytest.raises(SchnError, match="changed on disk"):
        two.compact()  # would have dropped 902
    assert {900, 902} <= set(HammingIndex.open(folder).ids.tolist())


# ---- kill -9 ------------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys, numpy as np
    from schn.index import HammingIndex
    from schn.index import store
    folder, start, compact_every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store.delta_limit = lambda n: 10**9  # compactions only where this child asks
    index = HammingIndex.open(folder, writer=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + 100000):
        index.add(rng.integers(0, 256, (1, 8), dtype=np.uint8), ids=[i])
        if i % 3 == 0:
            index.delete([i - 1], missing="ignore")
        index.save(compact=compact_every > 0 and i % compact_every == 0)
        print(i, flush=True)  # acknowledged
""")


def run_and_kill(folder, start, compact_every, after_s):
    """A writer child killed (SIGKILL) after ``after_s``; returns the acknowledged item ids."""
    with child_process([sys.executable, "-c", WRITER, str(folder), str(start), str(compact_every)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        first = proc.stdout.readline()
        assert first, proc.stderr.read()
        time.sleep(after_s)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        acked = [int(first)] + [int(line) for line in proc.stdout.read().splitlines() if line.strip()]
    return acked


def commit(ids: set, i: int) -> set:
    """The writer child's commit i on a set of ids."""
    return (ids | {i}) - ({i - 1} if i % 3 == 0 else set())


@pytest.mark.parametrize("compact_every", [0, 7])
def test_acknowledged_changes_survive_kill_9(tmp_path, compact_every):
    folder = tmp_path / "idx"
    base = HammingIndex(64)
    base.add(np.random.default_rng(1).integers(0, 256, (30_000, 8), dtype=np.uint8), ids=list(range(-30_000, 0)))
    base.save(folder)  # big enough that a compaction takes a while: kills land inside some
    expected, start = set(range(-30_000, 0)), 0
    for after_s in (0.05, 0.3, 0.6):
        acked = run_and_kill(folder, start, compact_every, after_s)
        for i in acked:
            expected = commit(expected, i)
        index = HammingIndex.open(folder)  # checksums verified, journal replayed
        have = set(index.ids.tolist())
        # every acknowledged commit; the one the kill interrupted, entirely or not at all
        assert have in (expected, commit(expected, acked[-1] + 1))
        expected, start = have, acked[-1] + 10
    names = {p.name for p in folder.iterdir()}
    index = HammingIndex.open(folder)
    index.compact()  # cleans what the kills left
    assert {p.name for p in folder.iterdir()} <= {"manifest.json", ".lock", index._base_name}
    assert len(names) >= 3


CRASH_AT = textwrap.dedent("""
    import os, signal, sys, numpy as np
    from schn.index import HammingIndex, layout, store
    folder, point = sys.argv[1], sys.argv[2]
    index = HammingIndex.open(folder)
    index.add(np.zeros((1, 1), np.uint8), ids=[777])
    index.save()
    print("acked", flush=True)
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if point == "array":
        real = store._save_array
        store._save_array = lambda p, a: die() if p.name == "ids.npy" else real(p, a)
    elif point == "manifest":
        store.write_json = die  # the manifest of the new base
    elif point == "retire":
        layout.remove_own = die
    index.compact()
""")


@pytest.mark.parametrize("point", ["array", "manifest", "retire"])
def test_a_compaction_killed_at_any_step_loses_nothing_and_leaves_nothing(folder, point):
    proc = subprocess.run([sys.executable, "-c", CRASH_AT, str(folder), point], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL and "acked" in proc.stdout, proc.stderr
    index = HammingIndex.open(folder)
    assert 777 in index and len(index) == 301
    index.add(np.ones((1, 1), np.uint8), ids=[778])
    index.compact()
    assert {p.name for p in folder.iterdir()} == {"manifest.json", ".lock", index._base_name}
    assert len(HammingIndex.open(folder)) == 302


# ---- the writer lock ----------------------------------------------------------------------
HOLD = "import fcntl, sys, time; f = open(sys.argv[1] + '/.lock', 'a'); fcntl.flock(f, fcntl.LOCK_EX); " \
       "print('held', flush=True); time.sleep(float(sys.argv[2]))"


def test_short_writers_wait_briefly_for_each_other(folder, capsys):
    for hold_s, code in ((0.5, 0), (6.0, 2)):
        with child_process([sys.executable, "-c", HOLD, str(folder), str(hold_s)], stdout=subprocess.PIPE,
                           text=True) as other:
            assert other.stdout.readline() == "held\n"
            start = time.monotonic()
            assert main(["index", "delete", str(folder), str(int(hold_s * 10))]) == code
            took = time.monotonic() - start
        err = capsys.readouterr().err
        if code:
            assert took < 4 and err.count("\n") == 1 and "open for writing by another process" in err
        else:
            assert took < 4


def test_cli_writers_fail_fast_while_schn_serve_runs(idx, tmp_path, capsys):
    """Issue 12, defect 11: `schn index add` during `schn serve` made every later mutation a 409."""
    picture = tmp_path / "p.png"
    from PIL import Image

    Image.fromarray(np.full((8, 8), 99, np.uint8)).save(picture)
    with schn_serve(idx) as (server, url, port):
        first = httpx.get(url + "/health").json()["items"]
        some_id = str(HammingIndex.open(idx).ids[0])
        for command in (["index", "add", str(idx), str(picture), "--quiet"], ["index", "delete", str(idx), some_id],
                        ["index", "compact", str(idx)], ["index", "build", "no-run", "-o", str(idx), "--overwrite"]):
            start = time.monotonic()
            code = main(command)
            err = capsys.readouterr().err
            assert code == 2 and err.count("\n") == 1, (command, err)
            assert "open for writing by another process (schn serve?)" in err or command[1] == "build", err
            assert time.monotonic() - start < 4
        # the service still takes changes, and they are on disk
        added = httpx.post(url + "/items", files=[("images", ("q.png", picture.read_bytes(), "image/png"))],
                           data={"ids": ["mine"]}, timeout=30)
        assert added.status_code == 201, added.text
        gone = httpx.delete(url + f"/items/{some_id}", timeout=30)
        assert gone.status_code == 200, gone.text
        assert httpx.get(url + "/health").json()["items"] == first
        index = HammingIndex.open(idx)  # readers are never locked out
        assert "mine" in index and some_id not in index
    assert main(["index", "delete", str(idx), "mine"]) == 0  # the lock went with the process


def test_the_service_journals_and_compacts_in_the_background(idx, monkeypatch):
    import io

    from PIL import Image

    from schn.serve.service import SearchService

    monkeypatch.setattr(store_mod, "delta_limit", lambda n: 3)
    service = SearchService(idx)
    try:
        version, before = manifest(idx)["version"], len(service.index)

        def png(seed):
            buf = io.BytesIO()
            Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8), dtype=np.uint8)).save(buf, "PNG")
            return buf.getvalue()

        for s in range(3):
            service.add([Image.open(io.BytesIO(png(s)))], ["PNG"], [png(s)], ids=[f"j{s}"])
        assert manifest(idx)["version"] == version  # journaled: no new version per write
        snapshot = service.index
        service.delete("j0")  # the 4th journaled item: past the limit, compaction starts
        service._compactor.join(timeout=60)
        assert manifest(idx)["version"] == version + 1 and not list(idx.glob("journal-*.log"))
        assert snapshot.search_ids(["j1"], 3).ids.shape == (1, 3)  # an old snapshot still searches
        service.add([Image.open(io.BytesIO(png(9)))], ["PNG"], [png(9)], ids=["j9"])  # and it goes on
        on_disk = HammingIndex.open(idx)
        assert len(on_disk) == len(service.index) == before + 3 and "j0" not in on_disk and "j9" in on_disk
        assert_same_results(service.index, np.random.default_rng(5), ks=(1, 10), radii=(0, 3))
    finally:
        service.close()


def test_uses_path_by_lookup_equals_the_scan(rng):
    """warm() builds a hash lookup of the base's paths; it must answer as the plain scan does."""
    paths = [f"images/{i % 37:03d}.png" for i in range(300)] + ["x" * 13, ""]  # shared images, odd widths
    index = HammingIndex(8)
    index.add(codes(rng, len(paths)), ids=list(range(len(paths))), paths=paths)
    plain = copy_of(index)
    index.warm()
    index._jend = 0  # journaled: deletes mask base rows instead of folding
    plain._jend = 0
    for target in (index, plain):
        target.delete([i for i in range(300) if i % 37 == 5] + [301, 7])
    assert index._path_index is not None and plain._path_index is None
    for path in sorted(set(paths)) + ["images/none.png", "images/005.pn", "y" * 99]:
        assert index.uses_path(path) == plain.uses_path(path) == (path in {p for i, p in enumerate(paths)
                                                                          if i % 37 != 5 and i not in (301, 7)})


def copy_of(index):
    import copy

    return copy.copy(index)
