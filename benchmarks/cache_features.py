"""Compute (or find) the frozen-backbone feature cache of a config and report images/s.

    .venv/bin/python benchmarks/cache_features.py configs/cifar10-jpg-efficientnet-frozen.yaml
"""
from __future__ import annotations

import sys
import time

import torch

from schn.config import load_config
from schn.data import create_dataset
from schn.features import cached_features


def main() -> None:
    cfg = load_config(sys.argv[1], sys.argv[2:])
    dataset = create_dataset(cfg.data)
    start = time.perf_counter()
    feats = cached_features(dataset, cfg.model, progress=True)
    seconds = time.perf_counter() - start
    print(f"{cfg.model.backbone} {cfg.model.feature_precision} input {cfg.model.input_size}: "
          f"{feats.shape[0]} items x {feats.shape[1]} in {seconds:.0f} s = {feats.shape[0] / seconds:.1f} images/s "
          f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
