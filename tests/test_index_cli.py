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
