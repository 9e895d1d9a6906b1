"""benchmarks/mosaic.py: 2x2 CIFAR-10 mosaics in the NUS-WIDE list layout, on a tiny fake source."""
import hashlib
import importlib.util
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schn.config import load_config
from schn.data import DataConfig, create_dataset, make_split

ROOT = Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("mosaic", ROOT / "benchmarks" / "mosaic.py")
mosaic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mosaic)

CLASSES = ["airplane", "automobile", "bird", "cat", "deer"]
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def jpeg(color, rng) -> bytes:
    """A 32x32 JPEG of one flat colour (+ a little noise), so that a tile's class can be read back."""
    pixels = np.clip(np.asarray(color, np.int16) + rng.integers(-8, 9, (32, 32, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The layout of shared/data/cifar10-jpg.tar.gz: train/<class>/NNNN.jpg, test/<class>/NNNN.jpg."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("src") / "cifar10-jpg.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", 4), ("test", 2)):
            for c, name in enumerate(CLASSES):
                for i in range(n):
                    data = jpeg(COLORS[c], rng)
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return path


def run(out, source, n=40, seed=3, *extra):
    return mosaic.main(["--out", str(out), "--n", str(n), "--seed", str(seed), "--source", str(source), *extra])


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "mosaic.json":
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_layout_labels_and_tiles(tmp_path, source, capsys):
    out = tmp_path / "m"
    assert run(out, source) == 0
    printed = capsys.readouterr().out
    assert "wrote 40 mosaics 64x64 (seed 3)" in printed and "database_label_onehot.txt (5 columns)" in printed
    paths = (out / "database_img.txt").read_text().splitlines()
    rows = np.array([[int(v) for v in r.split()] for r in (out / "database_label_onehot.txt").read_text().splitlines()])
    assert paths == [f"images/{i:06d}.jpg" for i in range(40)] and rows.shape == (40, 5)
    assert set(np.unique(rows)) <= {0, 1} and (rows.sum(1) >= 1).all() and (rows.sum(1) <= 4).all()
    assert len(set(rows.sum(1).tolist())) > 1  # 1..4 classes occur
    assert (out / "classes.txt").read_text().splitlines() == sorted(CLASSES)
    names = sorted(CLASSES)
    tiles = [line.split() for line in (out / "tiles.txt").read_text().splitlines()]
    for (path, *src), row in zip(tiles, rows):
        assert len(src) == 4
        contained = {s.split("/")[-2] for s in src}
        assert [int(n in contained) for n in names] == row.tolist()
        img = np.asarray(Image.open(out / path))
        assert img.shape == (64, 64, 3)
        # each quadrant shows its source class's colour, in tiles.txt order
        for pos, s in enumerate(src):
            quad = img[(pos // 2) * 32:(pos // 2) * 32 + 32, (pos % 2) * 32:(pos % 2) * 32 + 32].reshape(-1, 3)
            color = COLORS[CLASSES.index(s.split("/")[-2])]
            assert np.abs(np.median(quad, axis=0) - color).max() < 40
    meta = json.loads((out / "mosaic.json").read_text())
    assert meta["n"] == 40 and meta["seed"] == 3 and meta["source_images"] == 30
    assert sum(meta["mosaics_by_number_of_classes"].values()) == 40 and meta["mosaics_per_class"] == rows.sum(0).tolist()


def test_seeded(tmp_path, source):
    assert run(tmp_path / "a", source, 25, 7) == 0 and run(tmp_path / "b", source, 25, 7) == 0
    assert run(tmp_path / "c", source, 25, 8) == 0
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_no_repeat_until_a_class_runs_out(tmp_path, source):
    assert run(tmp_path / "m", source, 6, 1) == 0  # 24 tiles of 30 source images
    src = [s for line in (tmp_path / "m" / "tiles.txt").read_text().splitlines() for s in line.split()[1:]]
    for name in CLASSES:  # 6 source images per class: all distinct until all 6 are used
        used = [x for x in src if x.split("/")[-2] == name]
        assert len(set(used)) == min(len(used), 6)


def test_folder_source_and_reader_and_protocol(tmp_path, source):
    folder = tmp_path / "src"
    with tarfile.open(source) as tar:
        tar.extractall(folder, filter="data")
    out = tmp_path / "m"
    assert run(out, folder, 200, 0) == 0
    ds = create_dataset(DataConfig(name="image_list", root=str(out)))  # NUS-WIDE names, auto-detected
    assert len(ds) == 200 and ds.multi_label and ds.labels.shape == (200, 5)
    assert np.asarray(ds.load_image(0)).shape == (64, 64, 3)
    cfg = load_config(ROOT / "configs" / "mosaic.yaml",
                      [f"data.root={out}", "split.query_per_class=4", "split.train_per_class=10", "split.val_size=10"])
    assert cfg.eval.map_depth == 5000 and cfg.eval.ndcg_k == 100 and cfg.split.protocol == "nuswide21"
    s = make_split(create_dataset(cfg.data), cfg.split)
    assert len(s.query) == 20 and len(s.train) == 50 and len(s.database) == 180 and len(s.val) == 10


def test_bad_input(tmp_path, source, capsys):
    assert run(tmp_path / "m", tmp_path / "nowhere") == 2
    assert capsys.readouterr().err.strip().endswith("does not exist")
    (tmp_path / "junk.tar").write_text("not a tar")
    assert run(tmp_path / "m", tmp_path / "junk.tar") == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "one" / "cat").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "one" / "cat" / "0.jpg")
    assert run(tmp_path / "m", tmp_path / "one") == 2
    assert "need at least 2" in capsys.readouterr().err
    assert run(tmp_path / "m", source, 0) == 2 and "--n must be >= 1" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert run(tmp_path / "full", source) == 2 and "is not empty" in capsys.readouterr().err
    assert run(tmp_path / "full", source, 5, 0, "--force") == 0
    err = capsys.readouterr().err
    assert err == ""
