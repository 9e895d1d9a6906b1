"""The item contract every reader fulfils (see docs/architecture.md, "Items")."""
from __future__ import annotations

import hashlib
import json
import os
import stat
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor

from ..errors import SchnError
from ..fileio import sha256_file
from ..registry import Registry
from .config import DataConfig

DATASETS: Registry[Callable[[DataConfig], "HashingDataset"]] = Registry("data set reader")

# Items sampled to estimate mean/std when a reader knows no constants.
_STATS_ITEMS = 1000


class HashingDataset(Dataset):
    """Labelled images with stable ids and groups. Subclasses implement :meth:`load_image`.

    Indexing the data set itself gives ``(PIL image, label row, index)``; training code uses
    :meth:`view`, which applies a transform and gives tensors.
    """

    # (mean, std) in [0, 1] scale per channel, for readers of a known data set.
    known_mean_std: Optional[tuple[list[float], list[float]]] = None

    def __init__(
        self,
        labels: np.ndarray,
        class_names: Sequence[str],
        ids: Sequence[str],
        groups: Sequence[str],
        channels: int,
        source: Sequence[str],
        options: dict,
        report: Optional[dict[str, int]] = None,
    ):
        labels = np.asarray(labels, dtype=np.uint8)
        n = len(labels)
        if not (len(ids) == len(groups) == n) or labels.ndim != 2:
            raise ValueError("labels, ids and groups must be line-aligned")
        if n == 0:
            raise SchnError(f"data set {options.get('reader')} at {list(source)} has no items left")
        self.labels = labels
        self.class_names = list(class_names)
        if len(self.class_names) != labels.shape[1]:
            raise SchnError(
                f"{len(self.class_names)} class names for {labels.shape[1]} label columns; "
                "fix data.class_names_file or data.num_classes"
            )
        self.ids = list(ids)
        self.groups = np.asarray(groups, dtype=str)
        self.channels = channels
        self.report: dict[str, int] = dict(report or {})
        self.fingerprint = _fingerprint(source, options, n)

    # -- contract -------------------------------------------------------------------------
    def load_image(self, i: int) -> Image.Image:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.load_image(i), self.labels[i], i

    def view(self, indices, transform: Optional[Callable] = None) -> "DatasetView":
        return DatasetView(self, indices, transform)

    @property
    def num_classes(self) -> int:
        return self.labels.shape[1]

    @property
    def multi_label(self) -> bool:
        return bool((self.labels.sum(axis=1) > 1).any())

    def default_mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std in [0, 1]: known constants, else measured on evenly spaced items."""
        if self.known_mean_std is not None:
            return self.known_mean_std
        picks = np.linspace(0, len(self) - 1, min(len(self), _STATS_ITEMS)).round().astype(int)
        total = np.zeros(self.channels)
        squares = np.zeros(self.channels)
        count = 0
        for i in np.unique(picks):
            pixels = np.asarray(self.load_image(int(i)), dtype=np.float64).reshape(-1, self.channels)
            pixels /= 255.0
            total += pixels.sum(axis=0)
            squares += (pixels**2).sum(axis=0)
            count += len(pixels)
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
        return mean.tolist(), std.tolist()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(items={len(self)}, classes={self.num_classes}, "
            f"groups={sorted(set(self.groups.tolist()))}, channels={self.channels})"
        )


class DatasetView(Dataset):
    """Positions ``0..len-1`` of a subset; item ``p`` is ``(tensor, float32 label, p)``."""

    def __init__(self, dataset: HashingDataset, indices, transform: Optional[Callable] = None):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(dataset)):
            raise IndexError("view indices out of range for the data set")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, p: int):
        i = int(self.indices[p])
        image = self.dataset.load_image(i)
        x = self.transform(image) if self.transform is not None else to_tensor(image)
        label = torch.from_numpy(self.dataset.labels[i].astype(np.float32))
        return x, label, p


CONTENT_HASH_MAX_BYTES = 256 * 2**20


def _fingerprint(source: Sequence[str], options: dict, n: int) -> str:
    """Hash of the source paths, the reader options and the item count. A source file (an archive,
    a list file) up to ``CONTENT_HASH_MAX_BYTES`` is named by its content, so a copy with a new
    modification time keeps its feature cache; a directory or a larger file by its size and
    modification time (hashing those at every open would cost more than it saves)."""
    stamps = []
    for path in source:
        try:
            st = os.stat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size <= CONTENT_HASH_MAX_BYTES:
                stamps.append([os.path.abspath(path), st.st_size, sha256_file(path)])
            else:
                stamps.append([os.path.abspath(path), st.st_size, int(st.st_mtime)])
        except OSError:
            stamps.append([path])
    blob = json.dumps([stamps, options, n], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def create_dataset(cfg: DataConfig) -> HashingDataset:
    reader = DATASETS.get(cfg.name)
    cfg.check()
    if cfg.name != "digits":
        if not cfg.root:
            raise SchnError(f"data set {cfg.name!r} needs a root; set data.root=PATH")
        if not os.path.exists(cfg.root):
            raise SchnError(f"data root {cfg.root} does not exist; set data.root=PATH")
    return reader(cfg)


def list_datasets() -> list[str]:
    return DATASETS.names()


def read_class_names(path: str, count: int) -> list[str]:
    """Class names from ``path`` (one per line), checked against the label width."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise SchnError(f"cannot read data.class_names_file {path}: {e.strerror}") from None
    if len(names) != count:
        raise SchnError(f"{path} names {len(names)} classes but the labels have {count} columns")
    return names


def tidy_labels(cfg: DataConfig, labels: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Apply data.unlabeled: returns the kept-row mask and what was reported."""
    unlabeled = labels.sum(axis=1) == 0
    count = int(unlabeled.sum())
    if cfg.unlabeled == "drop":
        return ~unlabeled, {"unlabeled_dropped": count}
    return np.ones(len(labels), dtype=bool), {"unlabeled_kept": count}
