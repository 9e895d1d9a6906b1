"""Readers of data sets shipped as pixel arrays: digits, CIFAR-10 python release, MNIST IDX."""
from __future__ import annotations

import gzip
import os
import pickle
from typing import Optional

import numpy as np
from PIL import Image

from ..errors import SchnError
from .config import DataConfig
from .dataset import DATASETS, HashingDataset, read_class_names, tidy_labels


class ArrayDataset(HashingDataset):
    """Images held in one uint8 array, ``(n, H, W)`` grey or ``(n, H, W, 3)`` RGB."""

    def __init__(self, images: np.ndarray, classes: np.ndarray, class_names, groups, cfg: DataConfig,
                 source, mean_std=None):
        labels = np.zeros((len(classes), len(class_names)), dtype=np.uint8)
        labels[np.arange(len(classes)), classes] = 1
        keep, report = tidy_labels(cfg, labels)  # never drops: every item has a class
        if cfg.class_names_file:
            class_names = read_class_names(cfg.class_names_file, len(class_names))
        self.images = np.ascontiguousarray(images[keep])
        self.known_mean_std = mean_std
        options = {"reader": cfg.name, "unlabeled": cfg.unlabeled, "names": list(class_names)}
        super().__init__(labels[keep], class_names, [str(i) for i in np.flatnonzero(keep)],
                         np.asarray(groups)[keep], 1 if self.images.ndim == 3 else 3,
                         source, options, report)

    def load_image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])


# ---- digits (scikit-learn) ------------------------------------------------------------------
@DATASETS.register("digits")
def read_digits(cfg: DataConfig) -> HashingDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 grey levels
    names = [str(k) for k in range(10)]
    # Measured once on all 1,797 images after the 0..255 conversion above.
    stats = ([0.3053], [0.3759])
    return ArrayDataset(images, bunch.target, names, ["all"] * len(images), cfg,
                        ["sklearn.datasets.load_digits"], stats)


# ---- CIFAR-10, original python release ----------------------------------------------------
CIFAR_BATCHES = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
CIFAR10_MEAN_STD = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])


class _ArrayUnpickler(pickle.Unpickler):
    """Loads only plain containers and NumPy arrays: a batch file never needs more."""

    def find_class(self, module, name):
        numpy_part = module.split(".")[0] == "numpy" and name in {
            "_reconstruct", "ndarray", "dtype", "scalar"}
        # Python 3 writes bytes into protocol-2 pickles through _codecs.encode
        if numpy_part or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def _load_pickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise SchnError(f"CIFAR-10 file {path} is missing; point data.root at cifar-10-batches-py") from None
    except Exception as e:  # truncated or foreign files raise many kinds of errors
        raise SchnError(f"CIFAR-10 file {path} is not a readable batch pickle ({e}); re-extract it") from None
    if not isinstance(obj, dict):
        raise SchnError(f"CIFAR-10 file {path} holds {type(obj).__name__}, not a batch dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


@DATASETS.register("cifar10_python")
def read_cifar10_python(cfg: DataConfig) -> HashingDataset:
    folder = cfg.root
    if os.path.isdir(os.path.join(folder, "cifar-10-batches-py")):
        folder = os.path.join(folder, "cifar-10-batches-py")
    images, classes, groups = [], [], []
    for name in CIFAR_BATCHES:
        path = os.path.join(folder, name)
        batch = _load_pickle(path)
        data, labels = batch.get("data"), batch.get("labels")
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or labels is None:
            raise SchnError(f"CIFAR-10 file {path} lacks a (n, 3072) 'data' array and 'labels'")
        if len(labels) != len(data):
            raise SchnError(f"CIFAR-10 file {path} has {len(data)} images but {len(labels)} labels")
        # rows are planes R, G, B of 32x32 each; PIL wants H, W, C
        images.append(data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        classes.append(np.asarray(labels, dtype=np.int64))
        groups += ["test" if name == "test_batch" else "train"] * len(data)
    classes = np.concatenate(classes)
    meta_path = os.path.join(folder, "batches.meta")
    names = [str(k) for k in range(10)]
    if os.path.exists(meta_path):
        names = [str(n) for n in _load_pickle(meta_path).get("label_names", names)]
    if classes.min() < 0 or classes.max() >= len(names):
        raise SchnError(f"CIFAR-10 labels in {folder} fall outside 0..{len(names) - 1}")
    return ArrayDataset(np.concatenate(images), classes, names, groups, cfg,
                        [os.path.join(folder, n) for n in CIFAR_BATCHES], CIFAR10_MEAN_STD)


# ---- MNIST-format IDX files ----------------------------------------------------------------
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """One IDX file (optionally gzipped): magic 0 0 <dtype> <ndim>, big-endian int32 dims, data."""
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise SchnError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise SchnError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SchnError(f"IDX file {path} is truncated (header cut short)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header < need:
        raise SchnError(f"IDX file {path} is truncated: {len(raw) - header} of {need} data bytes")
    return np.frombuffer(raw, dtype, int(np.prod(dims)), header).reshape(dims)


def _find_idx(folder: str, prefix: str, kind: str) -> Optional[str]:
    # both "train-images-idx3-ubyte" and "train-images.idx3-ubyte" are in circulation
    for sep in "-.":
        for ext in ("", ".gz"):
            path = os.path.join(folder, f"{prefix}-{kind}{sep}idx{3 if kind == 'images' else 1}-ubyte{ext}")
            if os.path.exists(path):
                return path
    return None


@DATASETS.register("mnist_idx")
def read_mnist_idx(cfg: DataConfig) -> HashingDataset:
    images, classes, groups, source = [], [], [], []
    for prefix, group in (("train", "train"), ("t10k", "test")):
        img_path = _find_idx(cfg.root, prefix, "images")
        lab_path = _find_idx(cfg.root, prefix, "labels")
        if img_path is None and lab_path is None:
            continue
        if img_path is None or lab_path is None:
            raise SchnError(f"{cfg.root} has only one of {prefix}-images/{prefix}-labels IDX files")
        x, y = read_idx(img_path), read_idx(lab_path)
        if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y):
            raise SchnError(f"{img_path} / {lab_path}: expected (n, H, W) uint8 images and n labels")
        images.append(x)
        classes.append(y.astype(np.int64))
        groups += [group] * len(y)
        source += [img_path, lab_path]
    if not images:
        raise SchnError(f"no MNIST IDX files (train-images-idx3-ubyte, ...) in {cfg.root}")
    classes = np.concatenate(classes)
    k = cfg.num_classes or int(classes.max()) + 1
    if classes.min() < 0 or classes.max() >= k:
        raise SchnError(f"MNIST labels in {cfg.root} fall outside 0..{k - 1}; fix data.num_classes")
    return ArrayDataset(np.concatenate(images), classes, [str(c) for c in range(k)], groups, cfg, source)
