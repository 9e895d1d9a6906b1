"""Keep a benchmark grid's light files in the repository, or put them back to resume it.

A grid folder (``schn benchmark -o GRID``, with its studies in ``GRID/tune/``) holds heavy files
(checkpoints, codes) that need not be kept: a finished cell is known by its ``config.yaml`` and
``metrics.json``, and its tables and curves are drawn from those and ``log.jsonl`` /
``curves.json``. Measurements run in an ignored folder (``benchmarks/.work/``), which a new
machine does not have, so:

    .venv/bin/python benchmarks/keep_grid.py benchmarks/.work/digits-tuned benchmarks/results/digits-tuned
    .venv/bin/python benchmarks/keep_grid.py benchmarks/results/digits-tuned benchmarks/.work/digits-tuned

The second (the way back) lets the same ``schn benchmark`` / ``schn tune`` commands skip what is
finished. Unfinished cells are not copied (a re-run starts them again); a study's lock never is.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

CELL_FILES = ("config.yaml", "metrics.json", "log.jsonl", "curves.json")
STUDY_FILES = ("study.db", "split.json", "best.yaml", "best.json", "trials.csv", "history.png", "importance.png")
GRID_SUFFIXES = (".csv", ".md", ".png", ".json")  # results tables, plots, split files


def keep(src: Path, dst: Path) -> int:
    copied = 0
    for path in sorted(src.iterdir()):
        if path.is_file() and path.suffix in GRID_SUFFIXES:
            copied += _copy(path, dst / path.name)
        elif path.is_dir() and path.name == "tune":
            for study in sorted(p for p in path.iterdir() if p.is_dir()):
                copied += sum(_copy(study / n, dst / "tune" / study.name / n) for n in STUDY_FILES
                              if (study / n).is_file())
        elif path.is_dir() and (path / "metrics.json").is_file():
            copied += sum(_copy(path / n, dst / path.name / n) for n in CELL_FILES if (path / n).is_file())
    return copied


def _copy(a: Path, b: Path) -> int:
    b.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(a, b)
    return 1


def main() -> None:
    if len(sys.argv) != 3 or not Path(sys.argv[1]).is_dir():
        print("usage: keep_grid.py SRC_GRID_FOLDER DST_FOLDER (SRC must be an existing folder)", file=sys.stderr)
        sys.exit(2)
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    print(f"copied {keep(src, dst)} files from {src} to {dst}")


if __name__ == "__main__":
    main()
