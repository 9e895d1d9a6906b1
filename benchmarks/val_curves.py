"""Validation mAP by outer iteration for run folders, as a markdown table.

    .venv/bin/python benchmarks/val_curves.py runs/bench/frozen-02-* runs/bench/authors-*
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

EVERY = 3


def label(run: Path) -> str:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    m, t = cfg["method"], cfg["train"]
    return (f"{m['variant']} {t['bits']}b init={m['init_codes']} cover_all={t['cover_all']} "
            f"latent={m['latent_activation']}")


def main() -> None:
    runs = [Path(p) for p in sys.argv[1:]]
    curves = {}
    for run in runs:
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        curves[label(run)] = {r["iteration"]: r.get("val_map") for r in log}
    its = sorted({i for c in curves.values() for i in c if i % EVERY == 0 or i == 1})
    print("| run | " + " | ".join(f"it {i}" for i in its) + " |")
    print("|---|" + "---|" * len(its))
    for name, c in curves.items():
        print(f"| {name} | " + " | ".join(f"{c[i]:.3f}" if c.get(i) is not None else "" for i in its) + " |")


if __name__ == "__main__":
    main()
