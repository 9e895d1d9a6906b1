"""Frozen-feature extraction: fp32 vs bf16 autocast, default vs channels-last input, on real
CIFAR-10 (JPEG) images. Prints images/s of each (ratio to fp32 measured in the same run) and
the cosine similarity of bf16 to fp32 features.

    .venv/bin/python benchmarks/feature_precision.py [configs/cifar10-jpg-efficientnet-frozen.yaml]
"""
from __future__ import annotations

import sys
import time

import torch

from schn.config import load_config
from schn.data import create_dataset
from schn.inputs import backbone_for, backbone_transform

N = 64


def timed(net, x, bf16: bool) -> tuple[torch.Tensor, float]:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        net(x[:8])  # warm-up
        start = time.perf_counter()
        out = net(x).float()
    return out, N / (time.perf_counter() - start)


def main() -> None:
    cfg = load_config(sys.argv[1] if len(sys.argv) > 1 else "configs/cifar10-jpg-efficientnet-frozen.yaml")
    dataset = create_dataset(cfg.data)
    net = backbone_for(cfg.model, dataset.channels, 32).eval()
    transform = backbone_transform(net, dataset, False, cfg.model.input_size)
    step = len(dataset) // N
    x = torch.stack([transform(dataset.load_image(i * step)) for i in range(N)])
    fp32, ref = timed(net, x, bf16=False)
    bf16, fast = timed(net, x, bf16=True)
    cos = torch.nn.functional.cosine_similarity(fp32, bf16)
    print(f"{cfg.model.backbone} input {cfg.model.input_size}, {N} images, {torch.get_num_threads()} threads")
    print(f"fp32: {ref:.1f} images/s; bf16: {fast:.1f} images/s ({fast / ref:.2f}x fp32)")
    print(f"cosine(bf16, fp32): mean {cos.mean():.4f}, min {cos.min():.4f}")


if __name__ == "__main__":
    main()
