"""Validation mAP against training time for some methods of a `schn benchmark` folder, as a markdown
table (the anytime curves' numbers): at each time, the last validation mAP reached by then.

    .venv/bin/python benchmarks/anytime_table.py benchmarks/results/cifar10-tuned --bits 32 \
        --methods schn-plus,adsh --at 15,30,60,120

Point i of a method's curve is the mean over its seeds of the i-th validation (schn.benchmark's
anytime_series); "-" where it had not validated yet.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from schn.benchmark import anytime_series, cell_name


def value_at(curve: dict, t: float):
    reached = [m for s, m in zip(curve["seconds"], curve["map"]) if s <= t]
    return reached[-1] if reached else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--bits", type=int, required=True)
    ap.add_argument("--methods", required=True)
    ap.add_argument("--at", default="15,30,60,120", help="training seconds, comma-separated")
    a = ap.parse_args(argv)
    methods = a.methods.split(",")
    at = [float(t) for t in a.at.split(",")]
    with open(a.folder / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "done" and int(r["bits"]) == a.bits]
    for r in rows:  # a grid over seeds names its cells <method>-<bits>b-s<seed>
        seeded = cell_name(r["method"], a.bits, int(r["seed"])) if r.get("seed") not in (None, "") else None
        r["cell"] = seeded if seeded and (a.folder / seeded).is_dir() else cell_name(r["method"], a.bits)
    series = anytime_series(a.folder, rows, methods)
    print("| method | " + " | ".join(f"{t:g} s" for t in at) + " |")
    print("|---|" + "---|" * len(at))
    for m in methods:
        curve = series.get(m)
        cells = [value_at(curve, t) if curve else None for t in at]
        print(f"| {m} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in cells) + " |")


if __name__ == "__main__":
    main()
