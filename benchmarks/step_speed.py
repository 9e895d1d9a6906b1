"""Training-step speed of SCHN against ADSH on the same frozen features (issue 14's speed target:
SCHN ``mmasia`` at no less than half of ADSH's images/s).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/step_speed.py [--pool 58000] [--dim 1280]
        [--classes 10] [--bits 32] [--batch 64] [--steps 30] [--repeats 3] [--methods adsh,schn]

Random features (``--pool`` x ``--dim``, EfficientNet-Lite0's width by default) with single-label
classes, as frozen-feature training sees them; each method's ``training_step`` (recording on, as in
an iteration's last epoch) on random batches of a sampled set of 5,000; the methods alternate
``--repeats`` times in one process; prints the median images/s and the ratio to the first method.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from schn.methods import create_method


def images_per_second(method, features, labels, steps: int, batch: int, gen) -> float:
    idx = torch.randint(0, 5000, (steps, batch), generator=gen)
    t0 = time.perf_counter()
    for i in range(steps):
        p = idx[i]
        method.training_step(features[p], labels[p], p, record=True)
    return steps * batch / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=58000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="adsh,schn")
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    labels = torch.eye(args.classes)[torch.randint(0, args.classes, (args.pool,), generator=gen)]
    features = torch.randn(args.pool, args.dim, generator=gen)
    methods = {}
    for name in args.methods.split(","):
        torch.manual_seed(0)
        methods[name] = create_method(name, {"lr": 1e-3}, nn.Identity(), args.dim, args.classes, args.bits,
                                      labels, "cpu")
        methods[name].begin_iteration(0, torch.arange(min(5000, args.pool)).numpy())
    print(f"machine: {platform.machine()} cpus={torch.get_num_threads()} threads; torch {torch.__version__}")
    print(f"pool {args.pool} x {args.dim} features, {args.classes} classes, {args.bits} bits, batch {args.batch}, "
          f"{args.steps} steps x {args.repeats} alternating repeats")
    rates = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, method in methods.items():
            rates[name].append(images_per_second(method, features, labels, args.steps, args.batch, gen))
    first = statistics.median(rates[next(iter(rates))])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:8s} {median:8.1f} images/s  ratio {median / first:.2f}")


if __name__ == "__main__":
    main()
