"""``schn index build|add|delete|info`` and ``schn search`` on a tiny digits run."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from schn.cli import main
from schn.index import HammingIndex


@pytest.fixture(scope="module")
def run_dir(digits_run):
    return digits_run  # conftest.py: one tiny trained run for the session


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("imgs")
    for i, img in enumerate(load_digits().images[:3]):
        Image.fromarray((img * 255 / 16).astype(np.uint8)).save(folder / f"d{i}.png")
    return folder


def test_build_the_run_database_and_search_it(run_dir, tmp_path, capsys):
    idx = tmp_path / "idx"
    assert main(["index", "build", str(run_dir), "-o", str(idx), "--quiet"]) == 0
    index = HammingIndex.open(idx)
    with np.load(run_dir / "codes.npz") as saved:
        assert (np.asarray(index.codes) == saved["database_codes"]).all()  # the evaluated codes, as learned
    assert index.info["method"] == "schn" and index.info["model_checksum"].startswith("sha256:")
    first = str(index.ids[0])
    capsys.readouterr()
    assert main(["search", str(idx), "--id", first, "-k", "5", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5] and first not in [r["id"] for r in results]
    assert all(r["label"] for r in results)  # digits labels, e.g. "3"
    distances = [r["distance"] for r in results]
    assert distances == sorted(distances)
    assert main(["search", str(idx), "--id", first, "--radius", "3", "--json"]) == 0
    within = json.loads(capsys.readouterr().out)["results"]
    assert first not in [r["id"] for r in within] and all(r["distance"] <= 3 for r in within)
    assert main(["index", "info", str(idx)]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == len(index)
    assert main(["index", "build", str(run_dir), "-o", str(idx), "--quiet"]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err


def test_add_search_by_image_and_delete(run_dir, images, tmp_path, capsys):
    idx = tmp_path / "idx"
    assert main(["index", "build", str(run_dir), "-o", str(idx), "--images", str(images), "--quiet"]) == 0
    assert len(HammingIndex.open(idx)) == 3
    extra = tmp_path / "more"
    extra.mkdir()
    shutil.copy(images / "d0.png", extra / "copy.png")
    assert main(["index", "add", str(idx), str(extra), "--quiet"]) == 0
    assert main(["index", "add", str(idx), str(extra), "--quiet"]) == 2  # same id again
    assert "upsert" in capsys.readouterr().err
    assert main(["index", "add", str(idx), str(extra), "--upsert", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), "--image", str(images / "d0.png"), "-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:3] == ["rank", "id", "dist"]
    assert {out[2].split()[2], out[3].split()[2]} == {"0"}  # the image and its copy: distance 0
    assert main(["index", "delete", str(idx), str(extra / "copy.png")]) == 0
    assert len(HammingIndex.open(idx)) == 3


def test_store_images_copies_them_into_the_index(run_dir, images, tmp_path):
    idx = tmp_path / "idx"
    assert main(["index", "build", str(run_dir), "-o", str(idx), "--images", str(images), "--store-images",
                 "--quiet"]) == 0
    index = HammingIndex.open(idx)
    stored = {item["id"]: item["path"] for item in index.items(index.ids)}
    assert all(p.startswith("images/") for p in stored.values())
    assert (idx / stored[str(images / "d1.png")]).read_bytes() == (images / "d1.png").read_bytes()  # as it was
    extra = tmp_path / "more"
    extra.mkdir()
    shutil.copy(images / "d0.png", extra / "copy.png")
    assert main(["index", "add", str(idx), str(extra), "--store-images", "--quiet"]) == 0
    index = HammingIndex.open(idx)
    # the same bytes are one file in the store, shared by both items
    assert index.items([str(extra / "copy.png")])[0]["path"] == index.items([str(images / "d0.png")])[0]["path"]
    assert len(list((idx / "images").iterdir())) == 3


def test_user_mistakes_end_in_one_line(run_dir, tmp_path, capsys):
    assert main(["search", str(tmp_path / "none"), "--id", "3"]) == 2
    assert "no index at" in capsys.readouterr().err
    idx = tmp_path / "idx"
    assert main(["index", "build", str(run_dir), "-o", str(idx), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), "--id", "not-there"]) == 2
    assert "is not in the index" in capsys.readouterr().err
    assert main(["search", str(idx)]) == 2
    assert "exactly one of" in capsys.readouterr().err
    # a retrained (different) model must not encode queries into this index
    moved = tmp_path / "run-copy"
    shutil.copytree(run_dir, moved)
    with open(moved / "checkpoint.pt", "ab") as f:
        f.write(b"\0")
    assert main(["search", str(idx), "--image", "x.png", "--run", str(moved)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not the model that built this index" in err


def test_the_same_commands_work_on_milvus_lite(run_dir, tmp_path, capsys):
    pytest.importorskip("pymilvus")
    db, local = str(tmp_path / "codes.db"), tmp_path / "idx"
    assert main(["index", "build", str(run_dir), "-o", db, "--collection", "digits", "--quiet"]) == 0
    assert main(["index", "build", str(run_dir), "-o", str(local), "--quiet"]) == 0
    first = str(HammingIndex.open(local).ids[0])
    capsys.readouterr()
    assert main(["search", db, "--collection", "digits", "--id", first, "-k", "8", "--json"]) == 0
    from_milvus = json.loads(capsys.readouterr().out)["results"]
    assert main(["search", str(local), "--id", first, "-k", "8", "--json"]) == 0
    assert from_milvus == json.loads(capsys.readouterr().out)["results"]  # ids, distances, labels, paths
    assert main(["index", "info", db, "--collection", "digits"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == len(HammingIndex.open(local))


def tree(folder):
    """Every path under ``folder`` with its bytes (files) or None (folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_build_never_deletes_what_it_did_not_write(run_dir, tmp_path, capsys):
    """Issue 12, defect 1: `index build -o DIR` deleted every sub-folder of DIR named v*."""
    user = tmp_path / "U"
    for name in ("vacation", "videos", "work"):
        (user / name).mkdir(parents=True)
        (user / name / "keep.txt").write_text(name)
    before = tree(user)
    for extra in ([], ["--overwrite"], ["--store-images"]):
        assert main(["index", "build", str(run_dir), "-o", str(user), "--quiet", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a schn index" in err and "Traceback" not in err
        assert tree(user) == before  # refused before anything was written
    # inside an index folder, a user's own folders (even named like a version) survive rebuilds
    idx = tmp_path / "idx"
    assert main(["index", "build", str(run_dir), "-o", str(idx), "--quiet"]) == 0
    for name in ("vacation", "videos", "v000099-abcdef", ".tmp-vacation"):
        (idx / name).mkdir()
        (idx / name / "keep.txt").write_text(name)
    first = json.loads((idx / "manifest.json").read_text())["data"]
    assert main(["index", "build", str(run_dir), "-o", str(idx), "--quiet", "--overwrite"]) == 0
    current = json.loads((idx / "manifest.json").read_text())["data"]
    assert not (idx / first).exists() and (idx / current).is_dir()
    for name in ("vacation", "videos", "v000099-abcdef", ".tmp-vacation"):
        assert (idx / name / "keep.txt").read_text() == name
    # the API refuses the same way
    from schn.errors import SchnError
    from schn.index import create_index_backend

    index = HammingIndex(8)
    index.add(np.arange(3, dtype=np.uint8)[:, None])
    with pytest.raises(SchnError, match="not a schn index"):
        index.save(user)
    with pytest.raises(SchnError, match="not a schn index"):
        create_index_backend("local", str(user), bits=8, overwrite=True)
    assert tree(user) == before


def small_index(folder):
    index = HammingIndex(8, class_names=["a", "b"], info={"method": "schn"})
    index.add(np.arange(6, dtype=np.uint8)[:, None], labels=np.eye(2, dtype=np.uint8)[[0, 1, 0, 1, 0, 1]],
              paths=[f"{i}.png" for i in range(6)])
    index.save(folder)
    return folder


def _set(path, value):
    def change(m):
        *parents, last = path
        for key in parents:
            m = m[key]
        if value is KeyError:
            del m[last]
        else:
            m[last] = value
    return change


CORRUPTIONS = {
    "bits text": _set(["bits"], "abc"), "bits zero": _set(["bits"], 0), "bits negative": _set(["bits"], -8),
    "bits bool": _set(["bits"], True), "bits float": _set(["bits"], 8.0), "bits huge": _set(["bits"], 10**9),
    "bytes_per_code": _set(["bytes_per_code"], 99), "count negative": _set(["count"], -1),
    "count text": _set(["count"], "6"), "count null": _set(["count"], None), "version text": _set(["version"], "1"),
    "version zero": _set(["version"], 0), "id_kind": _set(["id_kind"], "float"), "data number": _set(["data"], 5),
    "data up": _set(["data"], ".."), "data escapes": _set(["data"], "../other"), "data slash": _set(["data"], "a/b"),
    "data absolute": _set(["data"], "/etc"), "files text": _set(["files"], "x"), "files list": _set(["files"], []),
    "codes entry text": _set(["files", "codes.npy"], "x"), "codes bytes text": _set(["files", "codes.npy", "bytes"], "9"),
    "codes sha number": _set(["files", "codes.npy", "sha256"], 5), "no ids file": _set(["files", "ids.npy"], KeyError),
    "unknown file": _set(["files", "../../x.npy"], {"bytes": 1, "sha256": "0" * 64}),
    "class_names text": _set(["class_names"], "ab"), "class_names numbers": _set(["class_names"], [1, 2]),
    "format_version text": _set(["format_version"], "1"), "method number": _set(["method"], 5),
    "retired foreign": _set(["retired"], ["../../home"]), "no bits": _set(["bits"], KeyError),
    "not an object": lambda m: m.clear() or m.update({"format": "schn-index", "files": [1]}),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_damaged_manifest_is_one_line(tmp_path, capsys, name):
    """Issue 12, defect 7: a manifest with wrong field types gave tracebacks."""
    idx = small_index(tmp_path / "idx")
    manifest = json.loads((idx / "manifest.json").read_text())
    CORRUPTIONS[name](manifest)
    (idx / "manifest.json").write_text(json.dumps(manifest))
    for command in (["index", "info", str(idx)], ["search", str(idx), "--id", "1"], ["index", "delete", str(idx), "1"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert "damaged" in err or "not a schn index" in err, err


def test_compact_folds_the_journal(tmp_path, capsys):
    idx = small_index(tmp_path / "idx")
    assert main(["index", "delete", str(idx), "1", "4"]) == 0
    version = json.loads((idx / "manifest.json").read_text())["version"]
    assert len(list(idx.glob("journal-*.log"))) == 1  # the delete was journaled, not a new version
    assert main(["index", "compact", str(idx)]) == 0
    assert "folded 2" in capsys.readouterr().out
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["version"] == version + 1 and manifest["count"] == 4 and not list(idx.glob("journal-*.log"))
    assert sorted(p.name for p in idx.iterdir() if p.is_dir()) == [manifest["data"]]
    assert HammingIndex.open(idx).ids.tolist() == [0, 2, 3, 5]
