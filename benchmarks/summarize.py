"""One metric of a `schn benchmark` folder as a method x code-length markdown table (for RESULTS.md).

    .venv/bin/python benchmarks/summarize.py runs/benchmarks/digits            # mAP
    .venv/bin/python benchmarks/summarize.py runs/benchmarks/digits --metric precision_at_radius_2

For a quality metric the best value of each code length is bold; a failed cell shows its status.

    .venv/bin/python benchmarks/summarize.py --studies benchmarks/results/digits-tuned/tune

prints one row per `schn tune` study of the folder instead (its `best.json`): best validation
mAP, complete / pruned trials, the compute spent, the share of it outside training and
validation, and the best parameters.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

QUALITY = ("map", "precision_at_radius_2", "precision_at_1000", "symmetric_map")


def studies(folder: Path) -> None:
    print("| method | best val mAP | complete / pruned | trial s (sum) | overhead | best parameters |")
    print("|---|---|---|---|---|---|")
    for best in sorted(folder.glob("*/best.json")):
        b = json.loads(best.read_text())
        params = ", ".join(f"{k.split('.', 1)[1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.', 1)[1]}={v}"
                           for k, v in b["params"].items())
        overhead = "–" if b.get("overhead_fraction") is None else f"{100 * b['overhead_fraction']:.1f}%"
        print(f"| {b['method']} | {b['value']:.4f} | {b['complete']} / {b['pruned']} | {b['seconds']:.0f} | "
              f"{overhead} | {params} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", nargs="?")
    parser.add_argument("--metric", default="map")
    parser.add_argument("--studies", metavar="DIR", help="a folder of schn tune studies: their summary")
    args = parser.parse_args()
    if args.studies:
        return studies(Path(args.studies))
    rows = list(csv.DictReader((Path(args.folder) / "results.csv").open()))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    bits = sorted({int(r["bits"]) for r in rows})
    value = {(r["method"], int(r["bits"])): (r[args.metric] if r["status"] == "done" else r["status"]) for r in rows}
    best = {}
    for b in bits:
        numbers = [float(v) for (m, bb), v in value.items() if bb == b and v not in ("", "failed")]
        best[b] = max(numbers) if numbers else None
    print(f"| {args.metric} | " + " | ".join(f"{b} bits" for b in bits) + " |")
    print("|---|" + "---|" * len(bits))
    for m in methods:
        cells = []
        for b in bits:
            v = value.get((m, b), "")
            if v in ("", "failed"):
                cells.append(v or "–")
            else:
                text = f"{float(v):.3f}" if args.metric in QUALITY else f"{float(v):.0f}"
                cells.append(f"**{text}**" if args.metric in QUALITY and float(v) == best[b] else text)
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
