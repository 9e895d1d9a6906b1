"""Readers on small files written in the exact real formats, and on malformed ones."""
import gzip
import os
import pickle
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

from schn.data import DataConfig, build_transform, create_dataset, list_datasets
from schn.data import dataset as dataset_module
from schn.errors import SchnError

REAL_ARCHIVE = os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpg.tar.gz"))


def test_registry_lists_every_reader():
    assert list_datasets() == ["cifar10_python", "digits", "image_folder", "image_list", "mnist_idx"]


def test_nonexistent_root_and_unknown_reader(tmp_path):
    with pytest.raises(SchnError, match="does not exist; set data.root"):
        create_dataset(DataConfig(name="image_folder", root=str(tmp_path / "nope")))
    with pytest.raises(SchnError, match="unknown data set reader"):
        create_dataset(DataConfig(name="imagenet"))
    with pytest.raises(SchnError, match="data.unlabeled"):
        create_dataset(DataConfig(unlabeled="maybe"))


# ---- digits ----------------------------------------------------------------------------------
def test_digits():
    ds = create_dataset(DataConfig(name="digits"))
    assert len(ds) == 1797 and ds.num_classes == 10 and ds.channels == 1
    assert ds.ids[0] == "0" and ds.ids[-1] == "1796" and set(ds.groups) == {"all"}
    assert ds.labels.dtype == np.uint8 and (ds.labels.sum(1) == 1).all() and not ds.multi_label
    img = ds.load_image(0)
    assert img.mode == "L" and img.size == (8, 8) and ds.images.max() == 255  # 16 -> 255
    x, y, p = ds.view([5, 7], None)[1]
    assert x.shape == (1, 8, 8) and y.dtype == torch.float32 and y.sum() == 1 and p == 1


# ---- CIFAR-10 python release -------------------------------------------------------------
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar(folder, per_batch=20, bytes_keys=False):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch = {key("batch_label"): name, key("labels"): [i % 10 for i in range(per_batch)],
                 key("data"): data, key("filenames"): [f"{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({key("label_names"): NAMES, key("num_vis"): 3072}, f, protocol=2)


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar_python(tmp_path, bytes_keys):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, bytes_keys=bytes_keys)
    ds = create_dataset(DataConfig(name="cifar10_python", root=str(tmp_path)))  # parent works too
    assert len(ds) == 120 and ds.class_names == NAMES and ds.channels == 3
    assert (ds.groups == "train").sum() == 100 and (ds.groups == "test").sum() == 20
    # pixel (row 1, col 2) of item 0: R, G, B planes of 1024 values each, row-major
    with open(folder / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="latin1" if not bytes_keys else "bytes")
    data = raw["data" if not bytes_keys else b"data"][0]
    assert ds.load_image(0).getpixel((2, 1)) == tuple(int(data[c * 1024 + 32 + 2]) for c in range(3))
    assert ds.labels[13].argmax() == 3
    assert ds.default_mean_std()[0][0] == pytest.approx(0.4914)


def test_cifar_truncated_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SchnError, match="data_batch_3"):
        create_dataset(DataConfig(name="cifar10_python", root=str(folder)))
    (folder / "data_batch_3").write_bytes(b"garbage, not a pickle at all")
    with pytest.raises(SchnError, match="data_batch_3"):
        create_dataset(DataConfig(name="cifar10_python", root=str(folder)))
    (folder / "data_batch_3").unlink()
    with pytest.raises(SchnError, match="data_batch_3 is missing"):
        create_dataset(DataConfig(name="cifar10_python", root=str(folder)))


# ---- image folders and archives --------------------------------------------------------------
def write_image(path, color=(200, 30, 30), mode="RGB", size=(6, 5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}[path.suffix.lower()]
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path, format=fmt)


def write_tree(root, subdirs=("train", "test"), classes=("cat", "dog")):
    for s in subdirs:
        for k, c in enumerate(classes):
            for i, ext in enumerate([".jpg", ".PNG", ".jpeg"]):
                write_image(root / s / c / f"{i}{ext}", color=(50 * k, 100, 10 * i))
    (root / subdirs[0] / classes[0] / "notes.txt").write_text("not an image")


def test_image_folder_plain_and_subdirs(tmp_path):
    write_tree(tmp_path / "tree")
    ds = create_dataset(DataConfig(name="image_folder", root=str(tmp_path / "tree" / "train")))
    assert len(ds) == 6 and ds.class_names == ["cat", "dog"] and set(ds.groups) == {"all"}
    assert ds.ids[0] == "cat/0.jpg" and ds.channels == 3 and ds.load_image(4).mode == "RGB"
    both = create_dataset(DataConfig(name="image_folder", root=str(tmp_path / "tree"),
                                     subdirs=["train", "test"]))
    assert len(both) == 12 and list(both.groups[:6]) == ["train"] * 6 and both.ids[6] == "test/cat/0.jpg"
    auto = create_dataset(DataConfig(name="image_folder", root=str(tmp_path / "tree")))
    assert sorted(set(auto.groups)) == ["test", "train"] and len(auto) == 12
    assert auto.fingerprint != both.fingerprint  # group order differs, so do ids
    one = create_dataset(DataConfig(name="image_folder", root=str(tmp_path / "tree"), subdirs=["test"]))
    assert len(one) == 6 and set(one.groups) == {"test"}
    nested = create_dataset(DataConfig(name="image_folder", root=str(tmp_path)))  # tree/ is a prefix
    assert len(nested) == 12 and nested.ids[0] == "tree/test/cat/0.jpg"
    mean, std = both.default_mean_std()
    assert len(mean) == 3 and 0 < mean[1] < 1 and all(s >= 0 for s in std)


def test_image_folder_grey_images_give_one_channel(tmp_path):
    for c in ("a", "b"):
        write_image(tmp_path / c / "x.png", mode="L")
    ds = create_dataset(DataConfig(name="image_folder", root=str(tmp_path)))
    assert ds.channels == 1 and ds.load_image(0).mode == "L"


def test_image_folder_bad_layouts(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(SchnError, match="no images"):
        create_dataset(DataConfig(name="image_folder", root=str(tmp_path / "empty")))
    write_tree(tmp_path / "t1", subdirs=("train",), classes=("cat", "dog"))
    write_tree(tmp_path / "t1", subdirs=("test",), classes=("cat", "emu"))
    with pytest.raises(SchnError, match="class folders differ"):
        create_dataset(DataConfig(name="image_folder", root=str(tmp_path / "t1"), subdirs=["train", "test"]))
    with pytest.raises(SchnError, match="'val'"):
        create_dataset(DataConfig(name="image_folder", root=str(tmp_path / "t1"), subdirs=["train", "val"]))


def test_corrupt_jpeg(tmp_path):
    write_tree(tmp_path, subdirs=("train",))
    (tmp_path / "train" / "dog" / "1.PNG").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cfg = dict(name="image_folder", root=str(tmp_path / "train"))
    ds = create_dataset(DataConfig(**cfg))  # not checked up front: fails when loaded
    bad = ds.ids.index("dog/1.PNG")
    with pytest.raises(SchnError, match=r"1\.PNG.*data.on_bad_image=skip --set data.check_images=true"):
        ds.load_image(bad)
    with pytest.raises(SchnError, match=r"1\.PNG"):
        create_dataset(DataConfig(**cfg, check_images=True))
    ok = create_dataset(DataConfig(**cfg, check_images=True, on_bad_image="skip"))
    assert len(ok) == 5 and ok.report["bad_images_skipped"] == 1 and "dog/1.PNG" not in ok.ids
    assert ok.fingerprint != ds.fingerprint


def make_archive(tmp_path, name, mode, prefix="cifar/"):
    src = tmp_path / "src"
    write_tree(src)
    path = tmp_path / name
    with tarfile.open(path, mode) as tar:
        tar.add(src, arcname=prefix.rstrip("/") or ".")
    return path


@pytest.mark.parametrize("name,mode,prefix", [("a.tar.gz", "w:gz", "cifar/"), ("a.tgz", "w:gz", ""),
                                              ("a.tar", "w", "cifar/")])
def test_image_folder_archive(tmp_path, name, mode, prefix):
    path = make_archive(tmp_path, name, mode, prefix)
    ds = create_dataset(DataConfig(name="image_folder", root=str(path), subdirs=["train", "test"]))
    folder = create_dataset(DataConfig(name="image_folder", root=str(tmp_path / "src"),
                                       subdirs=["train", "test"]))
    assert len(ds) == 12 and ds.class_names == ["cat", "dog"]
    assert [i.removeprefix(prefix) for i in ds.ids] == folder.ids  # ids keep the archive's paths
    assert np.array_equal(np.asarray(ds.load_image(7)), np.asarray(folder.load_image(7)))
    assert (ds.labels == folder.labels).all() and list(ds.groups) == list(folder.groups)


def test_archive_fingerprint_follows_content_not_mtime(tmp_path, monkeypatch):
    # a re-provisioned copy (same bytes, new modification time) keeps its feature cache key;
    # other bytes of the same size do not; past the size limit, size and mtime name the file
    path = make_archive(tmp_path, "a.tar", "w")
    cfg = DataConfig(name="image_folder", root=str(path))
    before = create_dataset(cfg).fingerprint
    os.utime(path, (1_000_000_000, 1_000_000_000))
    assert create_dataset(cfg).fingerprint == before
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1  # in the tar's zero padding: still a valid archive, same size
    path.write_bytes(bytes(raw))
    os.utime(path, (1_000_000_000, 1_000_000_000))
    changed = create_dataset(cfg).fingerprint
    assert changed != before
    monkeypatch.setattr(dataset_module, "CONTENT_HASH_MAX_BYTES", 10)
    os.utime(path, (2_000_000_000, 2_000_000_000))
    assert create_dataset(cfg).fingerprint not in (before, changed)


def test_archive_with_dataloader_workers(tmp_path):
    path = make_archive(tmp_path, "a.tar", "w")  # plain tar: read by offset in each worker
    ds = create_dataset(DataConfig(name="image_folder", root=str(path)))
    ds.load_image(0)  # opens a handle in this process before the fork
    view = ds.view(np.arange(len(ds)), build_transform("small", True, 5, [0.5], [0.5], 3))
    ctx = "fork" if "fork" in torch.multiprocessing.get_all_start_methods() else None
    loader = torch.utils.data.DataLoader(view, batch_size=4, num_workers=2, multiprocessing_context=ctx)
    batches = list(loader)
    assert sum(len(b[2]) for b in batches) == 12 and batches[0][0].shape == (4, 3, 5, 5)


def test_corrupt_archive(tmp_path):
    path = make_archive(tmp_path, "a.tar.gz", "w:gz")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SchnError, match="a.tar.gz"):
        create_dataset(DataConfig(name="image_folder", root=str(path)))


@pytest.mark.skipif(not os.path.exists(REAL_ARCHIVE), reason="real CIFAR-10 (JPEG) archive not present")
def test_real_cifar10_jpeg_archive():
    start = time.perf_counter()
    ds = create_dataset(DataConfig(name="image_folder", root=REAL_ARCHIVE, subdirs=["train", "test"]))
    seconds = time.perf_counter() - start
    print(f"opened {REAL_ARCHIVE} in {seconds:.1f} s")
    assert len(ds) == 60000 and ds.num_classes == 10 and ds.channels == 3
    assert (ds.labels.sum(0) == 6000).all()
    assert (ds.groups == "train").sum() == 50000 and (ds.groups == "test").sum() == 10000
    assert ds.load_image(59999).size == (32, 32)
    assert seconds < 15


# ---- list files ----------------------------------------------------------------------------
def write_lists(root, db_rows, test_rows, onehot_name="database_label_onehot.txt"):
    lines = {}
    for stem, rows in (("database", db_rows), ("test", test_rows)):
        paths = [f"images/{stem}_{i:04d}.png" for i in range(len(rows))]
        for p in paths:
            write_image(root / p, size=(4, 4))
        lines[stem] = paths
    (root / "database_img.txt").write_text("\n".join(lines["database"]) + "\n")
    (root / "test_img.txt").write_text("\n".join(lines["test"]) + "\n")
    (root / onehot_name).write_text("\n".join(db_rows) + "\n")
    (root / "test_label_onehot.txt").write_text("\n".join(test_rows) + "\n")


def test_image_list_onehot_autodetect_and_unlabeled(tmp_path):
    write_lists(tmp_path, ["1 0 0 1", "0 1 0 0", "0 0 0 0", "0 0 1 0"], ["1 1 0 0", "0 0 0 0"])
    ds = create_dataset(DataConfig(name="image_list", root=str(tmp_path)))
    assert len(ds) == 4 and ds.report["unlabeled_dropped"] == 2 and ds.multi_label
    assert list(ds.groups) == ["database_img"] * 3 + ["test_img"] and ds.ids[2] == "images/database_0003.png"
    assert ds.labels.tolist()[0] == [1, 0, 0, 1] and ds.labels.shape == (4, 4)
    kept = create_dataset(DataConfig(name="image_list", root=str(tmp_path), unlabeled="keep"))
    assert len(kept) == 6 and kept.report["unlabeled_kept"] == 2 and kept.fingerprint != ds.fingerprint


def test_image_list_index_rows(tmp_path):
    write_lists(tmp_path, ["0 3", "2", "", "1 2 3"], ["3"])
    (tmp_path / "names.txt").write_text("sky\nsea\ndog\ncat\n")
    # auto: a value above 1 means index lists; K inferred as max + 1
    ds = create_dataset(DataConfig(name="image_list", root=str(tmp_path),
                                   class_names_file=str(tmp_path / "names.txt")))
    assert ds.labels.tolist() == [[1, 0, 0, 1], [0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 0, 1]]
    assert ds.class_names == ["sky", "sea", "dog", "cat"] and ds.report["unlabeled_dropped"] == 1
    wide = create_dataset(DataConfig(name="image_list", root=str(tmp_path), num_classes=6,
                                     label_format="indices"))
    assert wide.labels.shape == (4, 6)
    with pytest.raises(SchnError, match="onehot.txt line 1: class index 3 >= 3"):
        create_dataset(DataConfig(name="image_list", root=str(tmp_path), num_classes=3))


def test_image_list_explicit_pairs_and_mirflickr_names(tmp_path):
    write_lists(tmp_path, ["1 0", "0 1"], ["1 1"])
    (tmp_path / "database_img.txt").rename(tmp_path / "db_image.txt")
    (tmp_path / "database_label_onehot.txt").rename(tmp_path / "database_label.txt")
    ds = create_dataset(DataConfig(name="image_list", root=str(tmp_path)))  # MIRFlickr names
    assert sorted(set(ds.groups)) == ["db_image", "test_img"] and len(ds) == 3
    ds = create_dataset(DataConfig(name="image_list", root=str(tmp_path),
                                   lists=[["db_image.txt", "database_label.txt"]]))
    assert len(ds) == 2


def test_image_list_errors(tmp_path):
    write_lists(tmp_path, ["1 0 0", "0 1 0", "0 1", "0 0 1"], ["1 0 0"])
    with pytest.raises(SchnError, match=r"database_label_onehot.txt line 3: 2 label columns, expected 3"):
        create_dataset(DataConfig(name="image_list", root=str(tmp_path)))
    write_lists(tmp_path, ["1 0 0", "0 1 0", "0 1 1", "0 0 1"], ["1 0 0"])
    (tmp_path / "images" / "database_0001.png").unlink()
    with pytest.raises(SchnError, match="database_0001.png does not exist"):
        create_dataset(DataConfig(name="image_list", root=str(tmp_path)))
    ds = create_dataset(DataConfig(name="image_list", root=str(tmp_path), on_bad_image="skip"))
    assert len(ds) == 4 and ds.report["bad_images_skipped"] == 1
    (tmp_path / "test_label_onehot.txt").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(SchnError, match="lists 1 images but .*test_label_onehot.txt has 2 label rows"):
        create_dataset(DataConfig(name="image_list", root=str(tmp_path)))
    (tmp_path / "test_label_onehot.txt").write_text("1 x 0\n")
    with pytest.raises(SchnError, match="line 1: label values must be numbers"):
        create_dataset(DataConfig(name="image_list", root=str(tmp_path)))
    with pytest.raises(SchnError, match="no known list files"):
        create_dataset(DataConfig(name="image_list", root=str(tmp_path / "images")))


# ---- MNIST IDX -----------------------------------------------------------------------------
def idx_bytes(array, code=0x08):
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(">u1").tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 12), ("t10k", 5)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n) % 10
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            path = tmp_path / f"{prefix}-{kind}-ubyte{'.gz' if gz else ''}"
            (gzip.open if gz else open)(path, "wb").write(idx_bytes(arr))
    ds = create_dataset(DataConfig(name="mnist_idx", root=str(tmp_path)))
    assert len(ds) == 17 and ds.channels == 1 and list(ds.groups).count("test") == 5
    assert ds.num_classes == 10 and ds.labels[11].argmax() == 1
    assert np.array_equal(np.asarray(ds.load_image(16)), x[4])  # last t10k image


def test_mnist_idx_pixels_and_truncation(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(x))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 0])))
    ds = create_dataset(DataConfig(name="mnist_idx", root=str(tmp_path)))
    assert np.array_equal(np.asarray(ds.load_image(1)), x[1]) and ds.num_classes == 2
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(x)[:-5])
    with pytest.raises(SchnError, match="train-images-idx3-ubyte is truncated"):
        create_dataset(DataConfig(name="mnist_idx", root=str(tmp_path)))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x08\x08junk")
    with pytest.raises(SchnError, match="bad magic"):
        create_dataset(DataConfig(name="mnist_idx", root=str(tmp_path)))
    (tmp_path / "train-images-idx3-ubyte").unlink()
    with pytest.raises(SchnError, match="only one of"):
        create_dataset(DataConfig(name="mnist_idx", root=str(tmp_path)))


# ---- transforms ------------------------------------------------------------------------------
def test_transforms_shapes():
    grey = Image.new("L", (8, 8), 128)
    small = build_transform("small", True, 8, [0.5], [0.25], 1)
    assert small(grey).shape == (1, 8, 8)
    assert build_transform("small", False, 8, [0.5] * 3, [0.2] * 3, 3)(grey).shape == (3, 8, 8)
    big = build_transform("imagenet", False, 224, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1)
    out = big(Image.new("RGB", (300, 400)))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert build_transform("imagenet", True, 64, [0.5], [0.5])(grey).shape == (3, 64, 64)
    # plain (raw-pixel features): resized, never augmented, even for training
    plain = build_transform("plain", True, 4, [0.5] * 3, [0.5] * 3, 3)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    assert plain(image).shape == (3, 4, 4) and torch.equal(plain(image), plain(image))
    with pytest.raises(SchnError, match="unknown transform"):
        build_transform("huge", True, 8, [0], [1], 1)
