"""One metric of a `schn benchmark` folder as a method x code-length markdown table (for RESULTS.md).

    .venv/bin/python benchmarks/summarize.py runs/benchmarks/digits            # mAP
    .venv/bin/python benchmarks/summarize.py runs/benchmarks/digits --metric precision_at_radius_2

For a quality metric the best value of each code length is bold; a failed cell shows its status.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

QUALITY = ("map", "precision_at_radius_2", "precision_at_1000", "symmetric_map")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--metric", default="map")
    args = parser.parse_args()
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
