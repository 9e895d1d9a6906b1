"""``schn benchmark``: methods x code lengths under identical conditions, in one folder.

Every cell trains from the same base config, on one split saved once as ``OUT/split.json``,
with one seed, and is scored by the same evaluation. What may differ between methods, and is
written into ``results.md``:

- the schedule of the method's family: a shallow method is fitted once on the whole pool
  (on frozen-backbone features, or raw pixels when the base config trains a backbone; a
  ``--set train.iterations=...`` for the grid does not make it refit, ``sdh:train...`` would); a deep
  symmetric method's outer iteration is one epoch over the pool; asymmetric methods (SCHN,
  ADSH) keep the base config's schedule, ADSH with its paper's sample size;
- method options: an option of the base config's ``method`` section (or a ``--set
  method.x=...``) applies to every method that has it and is listed as not applied elsewhere;
- ``--set METHOD:section.key=value`` applies to the cells of one method only.

``OUT/<method>-<bits>b/`` is a normal run folder. A re-run skips finished cells (those with
``metrics.json``), reruns unfinished ones, and refuses a finished cell whose config differs.
A failing cell is reported and the grid goes on.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import time
from pathlib import Path

import yaml

from .bounds import check_range
from .config import SECTIONS, Config, config_from_dict, dump_config, parse_override
from .errors import SchnError, one_line
from .fileio import write_text

# name -> (registered method, its option overrides)
ALIASES = {"schn-mmasia": ("schn", {"variant": "mmasia"}), "schn-tomm": ("schn", {"variant": "tomm"})}
WHOLE_POOL = 10**9  # num_samples above any pool size: the engine caps it at the pool
FAMILY_TRAIN = {
    "shallow": {"iterations": 1, "epochs_per_iteration": 1, "num_samples": WHOLE_POOL, "select": "last"},
    "deep": {"epochs_per_iteration": 1, "num_samples": WHOLE_POOL},
    "asymmetric": {},
}
METHOD_TRAIN = {"adsh": {"num_samples": 2000}}  # ADSH's paper: m = 2000
RAW_PIXELS = {"backbone": "pixels", "weights": "none", "width": None}
COLUMNS = ("method", "bits", "status", "map", "precision_at_radius_2", "precision_at_1000", "train_seconds",
           "encode_items_per_second", "iterations_run", "symmetric_map", "message")
BEST_COLUMNS = ("map", "precision_at_radius_2", "precision_at_1000")
UNLIMITED_ITERATIONS = 100_000
SPLIT_FILE = "split.json"  # the grid's one split, beside its cells


def resolve_method(name: str) -> tuple[str, dict]:
    from .methods import list_methods

    if name in ALIASES:
        return ALIASES[name]
    if name in list_methods():
        return name, {}
    known = ", ".join([*list_methods(), *ALIASES])
    raise SchnError(f"unknown method {name!r} in --methods; choose from: {known}")


@dataclasses.dataclass
class Cell:
    name: str
    label: str
    bits: int
    config: Config
    not_applied: list[str] = dataclasses.field(default_factory=list)


def _read_yaml(path: Path) -> dict:
    from .config import load_config

    load_config(path)  # every key checked once, with the usual messages
    raw = yaml.safe_load(path.read_text()) or {}
    return {k: dict(v or {}) for k, v in raw.items()}


def split_target(text: str) -> tuple[str | None, str]:
    """``"adsh:train.num_samples=2000"`` -> ("adsh", "train.num_samples=2000"): an override for
    the cells of one method (its label or its registered name); no prefix: every cell."""
    if ":" in text.partition("=")[0]:
        target, rest = text.split(":", 1)
        resolve_method(target.strip())
        return target.strip(), rest
    return None, text


def cell_config(base: dict, label: str, bits: int, sets: list[str], time_budget: float | None,
                split_file: Path, out: Path) -> Cell:
    """The resolved config of one cell (see the module docstring for what is changed)."""
    from .methods import METHODS

    name, preset = resolve_method(label)
    cls = METHODS.get(name)
    options = {f.name for f in dataclasses.fields(cls.config_class)}
    raw = {section: dict(values) for section, values in base.items()}
    shared = {k: v for k, v in raw.get("method", {}).items() if k != "name"}
    not_applied = sorted(k for k in shared if k not in options)
    method = {k: v for k, v in shared.items() if k in options}
    method.update(preset)
    train = raw.setdefault("train", {})
    if time_budget is not None:
        train.update(time_budget=time_budget, iterations=UNLIMITED_ITERATIONS)
    train.update(FAMILY_TRAIN[cls.family])
    train.update(METHOD_TRAIN.get(name, {}))
    model = raw.setdefault("model", {})
    if cls.family == "shallow" and not model.get("frozen", False):
        model.update(RAW_PIXELS)
    for text in sets:
        target, text = split_target(text)
        if target is not None and target not in (label, name):
            continue
        (section, key), value = parse_override(text)
        if target is None and cls.family == "shallow" and section == "train" and key in FAMILY_TRAIN["shallow"]:
            continue  # a shallow method fits once on the whole pool whatever the deep schedule is
        if section == "method" and key not in options:
            not_applied.append(key)
            continue
        (method if section == "method" else raw.setdefault(section, {}))[key] = value
    train["bits"] = bits
    raw["method"] = {"name": name, **method}
    raw["split"] = {**raw.get("split", {}), "file": str(split_file)}
    raw["run"] = {**raw.get("run", {}), "out_dir": str(out), "name": f"{label}-{bits}b", "progress": False}
    return Cell(f"{label}-{bits}b", label, bits, config_from_dict(raw), sorted(set(not_applied)))


def _same_config(cell: Cell, run_dir: Path) -> bool:
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    return saved == yaml.safe_load(dump_config(cell.config))


def _row(cell: Cell, run_dir: Path, status: str, message: str = "") -> dict:
    row = {"method": cell.label, "bits": cell.bits, "status": status, "message": message}
    metrics_path = run_dir / "metrics.json"
    if status == "done" and metrics_path.is_file():
        m = json.loads(metrics_path.read_text())
        row.update(map=m["map"], precision_at_radius_2=m.get("precision_at_radius_2"),
                   precision_at_1000=(m.get("precision_at_n") or {}).get("1000"),
                   train_seconds=m.get("train_seconds"), encode_items_per_second=m.get("encode_items_per_second"),
                   iterations_run=m.get("iterations_run"),
                   symmetric_map=(m.get("symmetric") or {}).get("map"), map_depth=m.get("map_depth", "all"))
    return row


def make_split_file(base: dict, out: Path) -> Path:
    """The one split of the grid: reused when ``OUT/split.json`` exists, else drawn and saved."""
    from .data import create_dataset, load_split, make_split

    cfg = config_from_dict({k: v for k, v in base.items() if k in SECTIONS})
    path = out / SPLIT_FILE
    dataset = create_dataset(cfg.data)
    if path.is_file():
        load_split(str(path), dataset)  # refuses a split of another data set
    elif cfg.split.file:
        load_split(cfg.split.file, dataset).save(str(path))
    else:
        make_split(dataset, cfg.split, cfg.split.seed).save(str(path))
    return path


def run_benchmark(config: str | Path, methods: list[str], bits: list[int], out: str | Path,
                  sets: list[str] = (), time_budget: float | None = None, curve_bits: int | None = None,
                  echo=print, command: str = "") -> list[dict]:
    """Run (or resume) the grid; writes results.csv/.md and the plots after every cell."""
    from .runs import train_run

    config, out = Path(config), Path(out)
    if not methods or not bits:
        raise SchnError("--methods and --bits need at least one entry each")
    for label in methods:
        resolve_method(label)
    if curve_bits is not None:
        check_range("--curve-bits", curve_bits, 1, 1024)
    if time_budget is not None:
        check_range("--time-budget", time_budget, 0, 10**8, above=True)
    base = _read_yaml(config)
    split_file = out / SPLIT_FILE
    # every cell's config is checked before anything is written
    cells = [cell_config(base, label, b, list(sets), time_budget, split_file, out)
             for b in bits for label in methods]
    out.mkdir(parents=True, exist_ok=True)
    make_split_file(base, out)
    rows: dict[str, dict] = {}
    durations: list[float] = []
    todo = []
    for cell in cells:
        run_dir = out / cell.name
        if (run_dir / "metrics.json").is_file():
            if not _same_config(cell, run_dir):
                raise SchnError(f"{run_dir} was run with another config; use a new --out for a changed grid")
            rows[cell.name] = _row(cell, run_dir, "done", "from an earlier run")
        else:
            todo.append(cell)
    echo(f"benchmark: {len(cells)} cells, {len(cells) - len(todo)} already finished, {len(todo)} to run -> {out}")
    meta = {"config": str(config), "methods": list(methods), "bits": list(bits), "sets": list(sets),
            "time_budget": time_budget, "command": command, "cells": cells, "split": split_file}
    for i, cell in enumerate(todo):
        run_dir = out / cell.name
        if run_dir.exists():  # an unfinished cell of an interrupted run: start it again
            shutil.rmtree(run_dir)
        eta = "" if not durations else f", ETA {_clock(sum(durations) / len(durations) * (len(todo) - i))}"
        echo(f"[{i + 1}/{len(todo)}] {cell.label} {cell.bits} bits{eta}")
        start = time.perf_counter()
        try:
            train_run(cell.config, progress=False, echo=lambda s: None)
            rows[cell.name] = _row(cell, run_dir, "done")
            r = rows[cell.name]
            echo(f"    mAP {r['map']:.4f}  P(r<=2) {r['precision_at_radius_2']:.4f}  "
                 f"train {r['train_seconds']:.0f}s  ({time.perf_counter() - start:.0f}s with evaluation)")
        except Exception as exc:  # noqa: BLE001 - one failing cell must not stop the grid
            rows[cell.name] = _row(cell, run_dir, "failed", f"{type(exc).__name__}: {one_line(exc)}")
            echo(f"    FAILED: {rows[cell.name]['message']}")
        durations.append(time.perf_counter() - start)
        write_results(out, [rows[c.name] for c in cells if c.name in rows], meta, curve_bits)
    ordered = [rows[c.name] for c in cells]
    if not todo:  # nothing ran, so nothing wrote the tables and plots yet
        write_results(out, ordered, meta, curve_bits)
    return ordered


def _clock(seconds: float) -> str:
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m" if seconds >= 3600 else \
        f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _best(rows: list[dict]) -> set[tuple[str, int, str]]:
    """(method, bits, column) of the best value per column among the cells of each code length."""
    marks = set()
    for b in {r["bits"] for r in rows}:
        group = [r for r in rows if r["bits"] == b and r["status"] == "done"]
        for col in BEST_COLUMNS:
            values = [r[col] for r in group if r.get(col) is not None]
            if values:
                top = max(values)
                marks |= {(r["method"], b, col) for r in group if r.get(col) is not None and r[col] == top}
    return marks


def _fmt(value, digits=4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_results(out: Path, rows: list[dict], meta: dict, curve_bits: int | None) -> None:
    best = _best(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*COLUMNS, "best_in"], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "best_in": ";".join(c for c in BEST_COLUMNS if (r["method"], r["bits"], c) in best)})
    write_text(out / "results.csv", buf.getvalue())
    write_text(out / "results.md", _markdown(rows, meta, best))
    _plots(out, rows, meta, curve_bits)


def _markdown(rows: list[dict], meta: dict, best) -> str:
    depth = next((r.get("map_depth") for r in rows if r.get("map_depth") is not None), "all")
    lines = [f"# Benchmark: {', '.join(meta['methods'])} at {', '.join(map(str, meta['bits']))} bits", "",
             f"- config: `{meta['config']}`; split: `{meta['split']}` (one split, one seed for every cell)"]
    if meta.get("command"):
        lines.append(f"- command: `{meta['command']}`")
    if meta.get("time_budget"):
        lines.append(f"- equal training-time budget per cell: {meta['time_budget']:g} s (training stops at the "
                     "first mini-batch past it; that outer iteration's update and validation still run)")
    lines += ["- **bold**: best value of the column among the cells of the same code length",
              "- encode items/s: query encoding throughput on the model's inputs (cached features in frozen "
              "mode, decoded images otherwise)", "",
              f"| method | bits | mAP@{depth} | P(r<=2) | P@1000 | train s | encode items/s | iterations | "
              "symmetric mAP | status |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["method"], str(r["bits"])]
        for col in ("map", "precision_at_radius_2", "precision_at_1000"):
            text = _fmt(r.get(col))
            cells.append(f"**{text}**" if (r["method"], r["bits"], col) in best else text)
        cells += [_fmt(r.get("train_seconds"), 0), _fmt(r.get("encode_items_per_second"), 0),
                  _fmt(r.get("iterations_run")), _fmt(r.get("symmetric_map")),
                  r["status"] if r["status"] == "done" else f"{r['status']}: {r['message']}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## What each method ran with", "",
              "| method | method options | train schedule | backbone | base options not applied |",
              "|---|---|---|---|---|"]
    seen = set()
    for cell in meta["cells"]:
        if cell.label in seen:
            continue
        seen.add(cell.label)
        c = cell.config
        options = ", ".join(f"{k}={v}" for k, v in vars(c.method).items())
        sched = (f"iterations<={c.train.iterations}, epochs/iteration={c.train.epochs_per_iteration}, "
                 f"m={c.train.num_samples if c.train.num_samples < WHOLE_POOL else 'pool'}, select={c.train.select}")
        backbone = f"{c.model.backbone}{' (frozen)' if c.model.frozen else ''}"
        lines.append(f"| {cell.label} | {options} | {sched} | {backbone} | {', '.join(cell.not_applied) or '–'} |")
    return "\n".join(lines) + "\n"


def _plots(out: Path, rows: list[dict], meta: dict, curve_bits: int | None) -> None:
    from .plots import plot_map_vs_bits, plot_pr_curve, plot_precision_at_n

    done = [r for r in rows if r["status"] == "done"]
    if not done:
        return
    series: dict[str, dict] = {}
    for label in meta["methods"]:
        mine = sorted((r["bits"], r["map"]) for r in done if r["method"] == label)
        if mine:
            series[label] = {"bits": [b for b, _ in mine], "map": [m for _, m in mine]}
    plot_map_vs_bits(series, out / "map_vs_bits.png")
    bits = meta["bits"]
    at = curve_bits or (32 if 32 in bits else sorted(bits)[len(bits) // 2])
    curves = []
    for r in done:
        if r["bits"] == at:
            path = out / f"{r['method']}-{at}b" / "curves.json"
            curves.append((r["method"], json.loads(path.read_text())["asymmetric"]))
    if curves:
        plot_pr_curve(curves, out / f"pr_curve_{at}b.png", title=f"Precision-recall over Hamming radius, {at} bits")
        plot_precision_at_n(curves, out / f"precision_at_n_{at}b.png", title=f"Precision@N, {at} bits")


def parse_list(text: str, kind=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise SchnError(f"expected a comma-separated list of {kind.__name__}s, got {text!r}") from None


__all__ = ["ALIASES", "cell_config", "parse_list", "resolve_method", "run_benchmark", "write_results"]
