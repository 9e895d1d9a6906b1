"""Frozen-backbone mode: backbone features computed once per data set and cached on disk.

A cache entry is `<cache_dir>/<backbone>-<key>.npy` plus a `.json` sidecar describing the key:
the data set's fingerprint, the backbone, the input size, the weights identity (the name for
"none"/"imagenet", the sha256 of a weights file) and a format version. Files are written to a
temporary name and moved into place, so an interrupted run never leaves a half-written entry.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .backbones import ModelConfig
from .errors import SchnError, one_line
from .fileio import atomic_path, sha256_file, write_json

FORMAT_VERSION = 1
# float16 halves the disk/memory of e.g. 59,000 x 4096 AlexNet features (480 MB instead of 960)
FLOAT16_MAX = 60000.0


def weights_identity(weights: str) -> str:
    """What the cache key records for `weights`: the name, or a file's content hash."""
    if weights in ("", "none", None):
        return "none-seed0"  # random init is made deterministic below
    if weights == "imagenet":
        return "imagenet"
    return "sha256:" + sha256_file(weights)


def cache_key(fingerprint: str, cfg: ModelConfig) -> dict:
    return {
        "format": FORMAT_VERSION,
        "dataset": fingerprint,
        "backbone": cfg.backbone,
        "input_size": cfg.input_size,
        "width": cfg.width,
        "weights": weights_identity(cfg.weights),
        "precision": cfg.feature_precision,
    }


def cache_path(cache_dir: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{key['backbone']}-{digest}.npy"


class _Images(Dataset):
    """All items of a data set as transformed tensors (needs only `load_image`)."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.dataset.load_image(i))


def cached_features(dataset, cfg: ModelConfig, batch_size: int = 128, num_workers: int = 0,
                    device: str | torch.device = "cpu", progress: bool = True) -> np.ndarray:
    """Features (n, d) of every item of `dataset`, from the cache or computed (and cached) now.

    Returns a read-only memory map (float16, or float32 where values exceed float16's range).
    """
    from .inputs import backbone_for, backbone_transform, input_size_for

    key = cache_key(dataset.fingerprint, cfg)
    path = cache_path(cfg.cache_dir, key)
    if path.is_file():
        feats = _load_cache(path)
        if feats.shape[0] == len(dataset):
            return feats
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # weights "none": the same random backbone every time, as the key says
        backbone = backbone_for(cfg, dataset.channels, min(dataset.load_image(0).size))
    loader = DataLoader(_Images(dataset, backbone_transform(backbone, dataset, False, cfg.input_size)),
                        batch_size=batch_size, num_workers=num_workers, shuffle=False)
    device = torch.device(device)
    backbone.eval().to(device)
    out = np.empty((len(dataset), backbone.feature_dim), dtype=np.float32)
    start = 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.feature_precision == "bf16")
    with torch.inference_mode(), autocast, tqdm(
        total=len(dataset), unit="img", desc=f"features {cfg.backbone}", disable=not progress
    ) as bar:
        for x in loader:
            f = backbone(x.to(device)).float().cpu().numpy()
            out[start : start + len(f)] = f
            start += len(f)
            bar.update(len(f))
    if np.isfinite(out).all() and np.abs(out).max(initial=0) < FLOAT16_MAX:
        out = out.astype(np.float16)
    meta = key | {"n": len(dataset), "dim": backbone.feature_dim, "dtype": str(out.dtype),
                  "input_size_used": input_size_for(backbone, dataset, cfg.input_size)}
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, out)
    write_json(path.with_suffix(".json"), meta)
    return _load_cache(path)


def _load_cache(path: Path) -> np.ndarray:
    """A cached feature matrix, memory-mapped; never unpickled (an object array is refused)."""
    try:
        feats = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SchnError(f"feature cache {path} is unreadable ({one_line(exc)}); delete it to compute the "
                        "features again") from None
    if feats.ndim != 2 or feats.dtype.kind != "f":
        raise SchnError(f"feature cache {path} holds a {feats.dtype} array of shape {feats.shape}, not features; "
                        "delete it to compute the features again")
    return feats


class FeatureView(Dataset):
    """Cached features shaped like `HashingDataset.view` items: (feature, float32 label, position)."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, indices: Sequence[int]):
        self.features, self.labels = features, labels
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, p: int):
        i = int(self.indices[p])
        x = torch.from_numpy(np.asarray(self.features[i], dtype=np.float32))
        return x, torch.from_numpy(self.labels[i].astype(np.float32)), p


def feature_view(features: np.ndarray, labels: np.ndarray, indices: Sequence[int]) -> FeatureView:
    return FeatureView(features, labels, indices)
