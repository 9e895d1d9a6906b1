"""CIFAR-10 (JPEG) benchmark grids for SCHN; prints one markdown row per cell.

    .venv/bin/python benchmarks/cifar10.py frozen    # mmasia and tomm, 12/24/32/48 bits, frozen EfficientNet-Lite0
    .venv/bin/python benchmarks/cifar10.py frozen --variants tomm --bits 32   # a subset
    .venv/bin/python benchmarks/cifar10.py authors   # authors'-code options vs defaults, 32 bits, frozen features
    .venv/bin/python benchmarks/cifar10.py scratch   # mmasia, 32 bits, small CNN from scratch at 32x32

Options: --bits 12 24 (subset of code lengths), --set KEY=VALUE (extra overrides, every cell),
--out DIR (run folders; default runs/bench). The figures go into benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from schn.config import load_config
from schn.runs import train_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FROZEN = CONFIGS / "cifar10-jpg-efficientnet-frozen.yaml"
SCRATCH = CONFIGS / "cifar10-jpg-scratch.yaml"

# one row per difference listed at the end of method.md (authors' code vs the default here)
# (the defaults row is the frozen grid's schn-mmasia 32-bit cell: same config, same seed)
AUTHORS_OPTIONS = {
    "zero init B": ["method.init_codes=zeros"],
    "no coverage of unsampled": ["train.cover_all=false"],
    "tanh latent (vs sigmoid)": ["method.latent_activation=tanh"],
}


def cells(grid: str, bits: list[int], variants: list[str]):
    if grid == "frozen":
        for variant in variants:
            for b in bits:
                yield f"schn-{variant} {b} bits", FROZEN, [f"method.variant={variant}", f"train.bits={b}"]
    elif grid == "authors":
        for label, sets in AUTHORS_OPTIONS.items():
            yield f"{label} 32 bits", FROZEN, ["train.bits=32", *sets]
    elif grid == "scratch":
        yield "schn-mmasia scratch 32 bits", SCRATCH, ["train.bits=32"]
    else:
        raise SystemExit(f"unknown grid {grid!r}; choose frozen, authors or scratch")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("grid")
    parser.add_argument("--bits", type=int, nargs="+", default=[12, 24, 32, 48])
    parser.add_argument("--variants", nargs="+", default=["mmasia", "tomm"])
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    print("| cell | mAP@all | P(r<=2) | symmetric mAP | train s | images/s | selected it. |")
    print("|---|---|---|---|---|---|---|")
    for i, (label, config, sets) in enumerate(cells(args.grid, args.bits, args.variants)):
        name = f"{args.grid}-{i:02d}-{stamp}"
        cfg = load_config(config, [*sets, *args.set, f"run.out_dir={args.out}", f"run.name={name}"])
        _, m = train_run(cfg, progress=False, echo=lambda s: None)
        print(f"| {label} | {m['map']:.4f} | {m['precision_at_radius_2']:.4f} | {m['symmetric']['map']:.4f} | "
              f"{m['train_seconds']:.0f} | {m['images_per_second']:.0f} | {m['selected_iteration']} |", flush=True)


if __name__ == "__main__":
    main()
