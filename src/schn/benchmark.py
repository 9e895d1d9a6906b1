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

Over seeds (``--seeds 0,1,2``): every cell runs once per seed (``run.seed``: initialisation,
sampling, augmentation) on the same split, in ``OUT/<method>-<bits>b-s<seed>/``; with
``--vary-split`` the split is redrawn per seed too (``split.seed = seed``, saved as
``OUT/split-s<seed>.json``). ``results.md`` then shows mean +- sample standard deviation and n per
method and code length, the best mean in bold, and whether the best is separated from the second
best (Welch's t-test, p < 0.05); ``results.csv`` keeps every seed's row.

Tuned (``tuned={label: {dotted key: value}}``, from ``schn tune`` studies): a method's tuned
parameters apply to its cells after the family/method schedule above and before ``--set``
(an explicit ``--set`` wins). ``--tune-trials N`` (``tune_methods``) first tunes every listed
method with the same N trials and per-trial schedule into ``OUT/tune/<method>/`` on the grid's
``OUT/split.json`` (a re-run continues the studies; lsh has nothing to search); ``--tuned DIR``
(``read_tuned``) takes earlier studies ``DIR/<method>/best.json``.

``OUT/<method>-<bits>b/`` (without ``--seeds``) is a normal run folder. A re-run skips finished cells (those with
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
COLUMNS = ("method", "bits", "seed", "status", "map", "precision_at_radius_2", "precision_at_1000", "train_seconds",
           "encode_items_per_second", "iterations_run", "symmetric_map", "message")
BEST_COLUMNS = ("map", "precision_at_radius_2", "precision_at_1000")
UNLIMITED_ITERATIONS = 100_000
SPLIT_FILE = "split.json"  # the grid's one split, beside its cells
NOT_RUN = "not run"  # a cell's status in a --report-only table while it is unfinished
ALPHA = 0.05  # Welch's t-test level at which the best mean counts as separated from the second


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
    seed: int | None = None  # set by --seeds (None: the config's run.seed, one cell per method and bits)


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


def cell_name(label: str, bits: int, seed: int | None = None) -> str:
    return f"{label}-{bits}b" + ("" if seed is None else f"-s{seed}")


def cell_config(base: dict, label: str, bits: int, sets: list[str], time_budget: float | None,
                split_file: Path, out: Path, seed: int | None = None, tuned: dict | None = None,
                vary_split: bool = False) -> Cell:
    """The resolved config of one cell (see the module docstring for what is changed).

    ``seed``: the cell's ``run.seed`` (and, with ``vary_split``, its ``split.seed``); ``tuned``:
    dotted overrides applied after the schedule defaults and before ``sets``."""
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
    for key, value in (tuned or {}).items():
        section, _, option = key.partition(".")
        (method if section == "method" else raw.setdefault(section, {}))[option] = value
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
    if seed is not None and vary_split:
        raw["split"]["seed"] = seed
    name = cell_name(label, bits, seed)
    raw["run"] = {**raw.get("run", {}), "out_dir": str(out), "name": name, "progress": False}
    if seed is not None:
        raw["run"]["seed"] = seed
    return Cell(name, label, bits, config_from_dict(raw), sorted(set(not_applied)), seed)


def _same_config(cell: Cell, run_dir: Path) -> bool:
    """The finished cell's saved config is this cell's, read through today's config classes, so
    an option added since (at its default) does not make a finished cell look changed."""
    try:
        saved = dump_config(config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text())))
    except SchnError:  # an option that no longer exists, or a value no longer accepted
        return False
    return yaml.safe_load(saved) == yaml.safe_load(dump_config(cell.config))


def _row(cell: Cell, run_dir: Path, status: str, message: str = "") -> dict:
    row = {"method": cell.label, "bits": cell.bits, "seed": cell.config.run.seed, "status": status,
           "message": message, "cell": cell.name}
    metrics_path = run_dir / "metrics.json"
    if status == "done" and metrics_path.is_file():
        m = json.loads(metrics_path.read_text())
        row.update(map=m["map"], precision_at_radius_2=m.get("precision_at_radius_2"),
                   precision_at_1000=(m.get("precision_at_n") or {}).get("1000"),
                   train_seconds=m.get("train_seconds"), encode_items_per_second=m.get("encode_items_per_second"),
                   iterations_run=m.get("iterations_run"),
                   symmetric_map=(m.get("symmetric") or {}).get("map"), map_depth=m.get("map_depth", "all"))
    return row


def split_sets(sets) -> list[str]:
    """The untargeted ``--set split.*`` overrides: they shape the grid's split."""
    return [text for text in sets if split_target(text) == (None, text) and text.strip().startswith("split.")]


def make_split_file(base: dict, out: Path, sets=(), path: Path | None = None, seed: int | None = None) -> Path:
    """A split of the grid: reused when ``path`` (default ``OUT/split.json``) exists, else drawn
    (the base config's split with the untargeted ``--set split.*``, ``split.seed=seed`` when given)
    or read from ``split.file``, and saved there."""
    from .data import create_dataset, load_split, make_split

    raw = {k: dict(v) for k, v in base.items() if k in SECTIONS}
    for text in split_sets(sets):
        (section, key), value = parse_override(text)
        raw.setdefault(section, {})[key] = value
    if seed is not None:
        raw.setdefault("split", {})["seed"] = seed
    cfg = config_from_dict(raw)
    path = path or out / SPLIT_FILE
    dataset = create_dataset(cfg.data)
    if path.is_file():
        load_split(str(path), dataset)  # refuses a split of another data set
    elif cfg.split.file:
        load_split(cfg.split.file, dataset).save(str(path))
    else:
        make_split(dataset, cfg.split, cfg.split.seed).save(str(path))
    return path


def check_seeds(seeds: list[int] | None, vary_split: bool = False) -> None:
    """One line for an empty or repeated seed list, a seed out of range, --vary-split without seeds."""
    if seeds is not None:
        if not seeds:
            raise SchnError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
        if len(set(seeds)) != len(seeds):
            raise SchnError(f"--seeds lists a seed twice ({','.join(map(str, seeds))}); give each once")
        for seed in seeds:
            check_range("--seeds", seed, 0, 2**32 - 1)
    if vary_split and seeds is None:
        raise SchnError("--vary-split redraws the split per seed; pass --seeds too")


def run_benchmark(config: str | Path, methods: list[str], bits: list[int], out: str | Path,
                  sets: list[str] = (), time_budget: float | None = None, curve_bits: int | None = None,
                  echo=print, command: str = "", seeds: list[int] | None = None, vary_split: bool = False,
                  tuned: dict[str, dict] | None = None, tuning_note: str | None = None,
                  tuned_bits: int | dict[str, int] | None = None, report_only: bool = False) -> list[dict]:
    """Run (or resume) the grid; writes results.csv/.md and the plots after every cell.
    ``report_only``: train nothing; the tables of the finished cells, the rest marked ``not run``.

    ``seeds``: every cell once per seed (see the module docstring); ``vary_split``: a split per
    seed. ``tuned``: ``{label: {dotted key: value}}`` applied to that label's cells (before
    ``sets``); ``tuned_bits``: the code length they were tuned at (one, or per label), so that a ``per_bit`` range's
    value (DSH's margin) scales with each cell's bits; ``tuning_note``: how they were tuned, for
    results.md."""
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
    check_seeds(seeds, vary_split)
    unknown = sorted(set(tuned or {}) - set(methods))
    if unknown:
        raise SchnError(f"tuned parameters for {', '.join(unknown)}, which is not in --methods")
    base = _read_yaml(config)
    fixed_split = base.get("split", {}).get("file")
    for text in split_sets(sets):
        (_, key), value = parse_override(text)
        fixed_split = value if key == "file" else fixed_split
    if vary_split and fixed_split:
        raise SchnError("--vary-split redraws the split, but the config reads a fixed split.file; drop one")

    def split_of(seed):
        return out / (f"split-s{seed}.json" if vary_split else SPLIT_FILE)

    # every cell's config is checked before anything is written
    cells = [cell_config(base, label, b, list(sets), time_budget, split_of(seed), out, seed=seed,
                         tuned=_at_bits(label, (tuned or {}).get(label),
                                        tuned_bits.get(label) if isinstance(tuned_bits, dict) else tuned_bits, b),
                         vary_split=vary_split)
             for b in bits for label in methods for seed in (seeds if seeds is not None else [None])]
    out.mkdir(parents=True, exist_ok=True)
    for path, seed in {split_of(c.seed): c.seed for c in cells}.items():
        make_split_file(base, out, sets, path, seed if vary_split else None)
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
            "time_budget": time_budget, "command": command, "cells": cells,
            "split": out / ("split-s<seed>.json" if vary_split else SPLIT_FILE), "seeds": seeds,
            "vary_split": vary_split, "tuned": tuned, "tuning_note": tuning_note, "tuned_bits": tuned_bits}
    if report_only:
        rows.update({c.name: _row(c, out / c.name, NOT_RUN, "not run yet") for c in todo})
        todo = []
    for i, cell in enumerate(todo):
        run_dir = out / cell.name
        if run_dir.exists():  # an unfinished cell of an interrupted run: start it again
            shutil.rmtree(run_dir)
        eta = "" if not durations else f", ETA {_clock(sum(durations) / len(durations) * (len(todo) - i))}"
        echo(f"[{i + 1}/{len(todo)}] {cell.label} {cell.bits} bits"
             f"{'' if cell.seed is None else f', seed {cell.seed}'}{eta}")
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


TUNE_DIR = "tune"  # OUT/tune/<label>/: the grid's studies (schn tune folders)


def _sets_for(label: str, sets) -> list[str]:
    """The overrides that reach ``label``'s cells: untargeted ones and those aimed at it."""
    name = resolve_method(label)[0]
    return [text for text in sets if split_target(text)[0] in (None, label, name)]


def _searchable(label: str, sets) -> bool:
    from .tune import _fixed_keys, method_space

    fixed = _fixed_keys(_sets_for(label, sets))
    return any(p.key not in fixed for p in method_space(label))


def tune_methods(config: str | Path, methods: list[str], bits: list[int], out: str | Path, trials: int,
                 tune_bits: int | None = None, sets=(), tune_sets=(), trial_budget: float | None = None,
                 echo=print, command: str = "") -> tuple[dict[str, dict], str, int]:
    """``schn benchmark --tune-trials N``: every listed method tuned by ``schn.tune.tune`` with the
    same ``trials`` at ``tune_bits`` (default 32 if listed, else the first of ``bits``), under the
    same per-trial schedule (the grid's ``sets``, then ``tune_sets``; ``trial_budget`` training
    seconds), into ``OUT/tune/<label>``, on the grid's own ``OUT/split.json``. A re-run continues
    the studies (nothing to run once they hold ``trials``). A method with nothing to search
    (lsh, or every key fixed by --set) is not tuned. Returns (tuned, note, tune_bits)."""
    from .tune import tune

    out = Path(out)
    check_range("--tune-trials", trials, 1, 100_000)
    tune_bits = tune_bits if tune_bits is not None else (32 if 32 in bits else bits[0])
    check_range("--tune-bits", tune_bits, 1, 1024)
    for label in methods:
        resolve_method(label)
    base = _read_yaml(Path(config))
    out.mkdir(parents=True, exist_ok=True)
    split = make_split_file(base, out, sets)  # the tuner and the grid: one split
    tuned, lines, skipped = {}, [], []
    for label in methods:
        method_sets = [*_sets_for(label, sets), *_sets_for(label, tune_sets)]
        if not _searchable(label, method_sets):
            skipped.append(label)
            continue
        folder = out / TUNE_DIR / label
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / SPLIT_FILE).is_file():
            shutil.copyfile(split, folder / SPLIT_FILE)
        result = tune(config, label, tune_bits, trials, folder, sets=method_sets, trial_budget=trial_budget,
                      echo=echo, command=command)
        if result.best_value is None:
            lines.append(f"- {label}: no complete trial ({result.pruned} pruned, {result.failed} failed); "
                         "its cells run with the defaults")
            continue
        tuned[label] = dict(result.best_params)
        lines.append(f"- {label}: best validation mAP {result.best_value:.4f} ({result.complete} complete, "
                     f"{result.pruned} pruned, {result.failed} failed trials; `{folder}`)")
    budget = f"{trial_budget:g} training seconds per trial" if trial_budget else "the config's schedule per trial"
    extra = f"; trial-only overrides: {', '.join(tune_sets)}" if tune_sets else ""
    note = "\n".join([
        f"Every method tuned by `schn tune` (Optuna, seeded TPE, median pruner) with the same {trials} trials at "
        f"{tune_bits} bits on the validation split of the grid's split, {budget}{extra}; the studies are in "
        f"`{out / TUNE_DIR}/<method>` (a re-run continues them).", "", *lines,
        *([f"- {', '.join(skipped)}: nothing to search (empty search space), not tuned"] if skipped else [])])
    return tuned, note, tune_bits


def read_tuned(folder: str | Path, methods: list[str], sets=()) -> tuple[dict[str, dict], str, dict[str, int]]:
    """``schn benchmark --tuned DIR``: the best parameters of earlier studies ``DIR/<label>``
    (``best.json``); a method with nothing to search is run untuned; a missing study is an error."""
    from .tune import load_tuned

    folder = Path(folder)
    if not folder.is_dir():
        raise SchnError(f"--tuned {folder} is not a folder; pass the folder holding one study per method")
    tuned, skipped, lines, at = {}, [], [], {}
    for label in methods:
        resolve_method(label)
        if not _searchable(label, sets):
            skipped.append(label)
            continue
        study = folder / label
        if not (study / "best.json").is_file():
            raise SchnError(f"--tuned {folder} holds no study of {label} ({study / 'best.json'} is missing); "
                            f"tune it with `schn tune --method {label} -o {study}` or leave it out of --methods")
        tuned[label] = load_tuned(study, label)
        blob = json.loads((study / "best.json").read_text())
        at[label] = blob.get("bits")
        lines.append(f"- {label}: best validation mAP {blob['value']:.4f} at {blob.get('bits')} bits "
                     f"({blob.get('complete')} complete, {blob.get('pruned')} pruned trials; `{study}`)")
    note = "\n".join([f"Tuned parameters from earlier `schn tune` studies in `{folder}`.", "", *lines,
                      *([f"- {', '.join(skipped)}: nothing to search, not tuned"] if skipped else [])])
    return tuned, note, at


def _at_bits(label: str, params: dict | None, tuned_bits: int | None, bits: int) -> dict | None:
    """Tuned parameters for a cell of ``bits``: a ``per_bit`` one (tuned as value = x * tuned_bits)
    becomes x * bits, an integer one rounded."""
    if not params or tuned_bits is None or tuned_bits == bits:
        return params
    from .tune import method_space

    per_bit = {p.key: p for p in method_space(label) if p.per_bit}
    scaled = dict(params)
    for key, p in per_bit.items():
        if key in scaled:
            value = scaled[key] * bits / tuned_bits
            scaled[key] = round(value) if p.integer else value
    return scaled


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


def separation(best: list[float], second: list[float], alpha: float = ALPHA) -> tuple[bool | None, float | None, str]:
    """Whether the ``best`` values (one per seed) are separated from the ``second`` best's:
    Welch's t-test (unequal variances), separated when p < ``alpha``. ``(separated, p, text)``;
    ``separated`` is None when either side has fewer than 2 values (not tested)."""
    from scipy.stats import ttest_ind

    if min(len(best), len(second)) < 2:
        return None, None, f"n={min(len(best), len(second))}, not tested"
    (mean_a, std_a), (mean_b, std_b) = _mean_std(list(best)), _mean_std(list(second))
    if std_a == 0 and std_b == 0:  # no spread on either side: the t statistic is undefined
        apart = mean_a != mean_b
        return apart, None, "no spread on either side; " + ("separated" if apart else "equal")
    p = float(ttest_ind(best, second, equal_var=False).pvalue)
    apart = p < alpha
    return apart, p, f"Welch p={p:.3g}: " + ("separated" if apart else f"not separated (p >= {alpha:g})")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5  # sample std


def summarize(rows: list[dict], methods: list[str], bits: list[int]) -> list[dict]:
    """One entry per method and code length over its seeds: n, failed, values, mean and sample std
    of every quality column and of the training seconds."""
    out = []
    for b in bits:
        for label in methods:
            mine = [r for r in rows if r["method"] == label and r["bits"] == b]
            if not mine:
                continue
            done = [r for r in mine if r["status"] == "done"]
            failed = [r for r in mine if r["status"] not in ("done", NOT_RUN)]
            entry = {"method": label, "bits": b, "n": len(done), "failed": len(failed),
                     "not_run": len(mine) - len(done) - len(failed),
                     "messages": sorted({r["message"] for r in failed})}
            for col in (*BEST_COLUMNS, "train_seconds"):
                values = [float(r[col]) for r in done if r.get(col) is not None]
                entry[col] = values
                entry[f"{col}_mean"], entry[f"{col}_std"] = _mean_std(values)
            out.append(entry)
    return out


def _verdicts(summary: list[dict]) -> dict[int, tuple]:
    """Per code length: (best entry, second entry or None, separation of their mAPs)."""
    verdicts = {}
    for b in sorted({e["bits"] for e in summary}):
        ranked = sorted((e for e in summary if e["bits"] == b and e["map_mean"] is not None),
                        key=lambda e: -e["map_mean"])
        if ranked:
            second = ranked[1] if len(ranked) > 1 else None
            verdicts[b] = (ranked[0], second, separation(ranked[0]["map"], second["map"]) if second else None)
    return verdicts


def _best_means(rows: list[dict], meta: dict) -> set[tuple[str, int, str]]:
    """Over seeds: (method, bits, column) of the best mean per column and code length."""
    summary = summarize(rows, meta["methods"], meta["bits"])
    marks = set()
    for b in {e["bits"] for e in summary}:
        for col in BEST_COLUMNS:
            means = [e[f"{col}_mean"] for e in summary if e["bits"] == b and e[f"{col}_mean"] is not None]
            marks |= {(e["method"], b, col) for e in summary
                      if e["bits"] == b and means and e[f"{col}_mean"] == max(means)}
    return marks


def write_results(out: Path, rows: list[dict], meta: dict, curve_bits: int | None) -> None:
    best = _best_means(rows, meta) if meta.get("seeds") else _best(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*COLUMNS, "best_in"], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "best_in": ";".join(c for c in BEST_COLUMNS if (r["method"], r["bits"], c) in best)})
    write_text(out / "results.csv", buf.getvalue())
    write_text(out / "results.md", _seeded_markdown(rows, meta) if meta.get("seeds") else _markdown(rows, meta, best))
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
    return "\n".join(lines + _ran_with(meta)) + "\n"


def _ran_with(meta: dict) -> list[str]:
    lines = ["", "Anytime curves (`anytime-<bits>b.png`): validation mAP after each outer iteration against the "
             "cumulative training seconds, from each cell's log.jsonl" + (", the mean over the seeds that ran "
             "that iteration" if meta.get("seeds") and len(meta["seeds"]) > 1 else "") + "; a method fitted once "
             "without validation (shallow, select=last) has no curve."]
    lines += _tuning_lines(meta)
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
    return lines


def _tuning_lines(meta: dict) -> list[str]:
    if meta.get("tuned") is None and not meta.get("tuning_note"):
        return []
    lines = ["", "## Tuning", ""]
    if meta.get("tuning_note"):
        lines += [meta["tuning_note"], ""]
    scaled = " (a per-bit range's value, DSH's margin, scales with each cell's bits)" if meta.get("tuned_bits") else ""
    lines.append(f"Tuned parameters, applied after the schedule defaults and before --set{scaled}:")
    lines.append("")
    for label in meta["methods"]:
        params = (meta.get("tuned") or {}).get(label)
        text = ", ".join(f"{k}={_fmt(v, 6)}" for k, v in params.items()) if params else "not tuned (defaults)"
        lines.append(f"- {label}: {text}")
    return lines


def mean_std_text(values: list[float], digits: int = 4) -> str:
    """``mean ± sample std`` of ``values`` as the tables write it (the mean alone for one value)."""
    return _pm(*_mean_std(values), digits)


def _pm(mean, std, digits=4) -> str:
    if mean is None:
        return "–"
    return _fmt(mean, digits) + ("" if std is None else f" ± {_fmt(std, digits)}")


def _seeded_markdown(rows: list[dict], meta: dict) -> str:
    depth = next((r.get("map_depth") for r in rows if r.get("map_depth") is not None), "all")
    seeds = meta["seeds"]
    split = ("a split per seed (`split-s<seed>.json`, split.seed = seed)" if meta.get("vary_split")
             else f"one split `{meta['split']}` for every cell")
    lines = [f"# Benchmark: {', '.join(meta['methods'])} at {', '.join(map(str, meta['bits']))} bits, "
             f"seeds {', '.join(map(str, seeds))}", "",
             f"- config: `{meta['config']}`; {split}; a seed sets run.seed (initialisation, sampling, augmentation)"]
    if meta.get("command"):
        lines.append(f"- command: `{meta['command']}`")
    if meta.get("time_budget"):
        lines.append(f"- equal training-time budget per cell: {meta['time_budget']:g} s")
    lines += ["- mean ± sample standard deviation over the n finished seeds; **bold**: best mean of the column "
              "among the methods of the same code length",
              f"- †: the best mAP is not separated from the second best (Welch's t-test p >= {ALPHA:g}, or n < 2)",
              ""]
    summary = summarize(rows, meta["methods"], meta["bits"])
    verdicts = _verdicts(summary)
    tops = {}
    for b in {e["bits"] for e in summary}:
        for col in BEST_COLUMNS:
            means = [e[f"{col}_mean"] for e in summary if e["bits"] == b and e[f"{col}_mean"] is not None]
            if means:
                tops[(b, col)] = max(means)
    lines += [f"| method | bits | n | mAP@{depth} | P(r<=2) | P@1000 | train s | failed |",
              "|---|---|---|---|---|---|---|---|"]
    for e in summary:
        cells = [e["method"], str(e["bits"]), str(e["n"])]
        for col in BEST_COLUMNS:
            text = _pm(e[f"{col}_mean"], e[f"{col}_std"])
            if e[f"{col}_mean"] is not None and e[f"{col}_mean"] == tops.get((e["bits"], col)):
                text = f"**{text}**"
                verdict = verdicts.get(e["bits"])
                if col == "map" and verdict and verdict[0] is e and verdict[2] and not verdict[2][0]:
                    text += " †"
            cells.append(text)
        cells += [_pm(e["train_seconds_mean"], e["train_seconds_std"], 0),
                  str(e["failed"]) + (f" ({'; '.join(e['messages'])})" if e["failed"] else "")
                  + (f"; {e['not_run']} not run yet" if e["not_run"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Best against second best (mAP)", ""]
    for b, (top, second, verdict) in sorted(verdicts.items()):
        if second is None:
            lines.append(f"- {b} bits: {top['method']} (the only method with a result)")
            continue
        lines.append(f"- {b} bits: {top['method']} {_pm(top['map_mean'], top['map_std'])} (n={top['n']}) vs "
                     f"{second['method']} {_pm(second['map_mean'], second['map_std'])} (n={second['n']}): {verdict[2]}")
    lines += ["", "## Every cell", "",
              f"| method | bits | seed | mAP@{depth} | P(r<=2) | P@1000 | train s | iterations | status |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([r["method"], str(r["bits"]), str(r["seed"]), _fmt(r.get("map")),
                                        _fmt(r.get("precision_at_radius_2")), _fmt(r.get("precision_at_1000")),
                                        _fmt(r.get("train_seconds"), 0), _fmt(r.get("iterations_run")),
                                        r["status"] if r["status"] == "done" else f"{r['status']}: {r['message']}"])
                     + " |")
    return "\n".join(lines + _ran_with(meta)) + "\n"


def _plots(out: Path, rows: list[dict], meta: dict, curve_bits: int | None) -> None:
    from .plots import plot_anytime, plot_map_vs_bits, plot_pr_curve, plot_precision_at_n

    done = [r for r in rows if r["status"] == "done"]
    if not done:
        return
    series: dict[str, dict] = {}
    for label in meta["methods"]:  # over seeds: the mean mAP per code length
        by_bits: dict[int, list[float]] = {}
        for r in done:
            if r["method"] == label:
                by_bits.setdefault(r["bits"], []).append(r["map"])
        if by_bits:
            ordered = sorted(by_bits)
            series[label] = {"bits": ordered, "map": [sum(by_bits[b]) / len(by_bits[b]) for b in ordered]}
    plot_map_vs_bits(series, out / "map_vs_bits.png",
                     **({"title": "mean mAP over seeds against code length"} if meta.get("seeds") else {}))
    bits = meta["bits"]
    at = curve_bits or (32 if 32 in bits else sorted(bits)[len(bits) // 2])
    curves, drawn = [], set()
    for r in done:  # over seeds: the first finished seed's curves of each method
        if r["bits"] == at and r["method"] not in drawn:
            drawn.add(r["method"])
            path = out / r.get("cell", cell_name(r["method"], at)) / "curves.json"
            label = r["method"] if not meta.get("seeds") else f"{r['method']} (seed {r['seed']})"
            curves.append((label, json.loads(path.read_text())["asymmetric"]))
    if curves:
        plot_pr_curve(curves, out / f"pr_curve_{at}b.png", title=f"Precision-recall over Hamming radius, {at} bits")
        plot_precision_at_n(curves, out / f"precision_at_n_{at}b.png", title=f"Precision@N, {at} bits")
    for b in bits:
        curves = anytime_series(out, [r for r in done if r["bits"] == b], meta["methods"])
        if curves:
            over = " (mean over seeds)" if len(meta.get("seeds") or [None]) > 1 else ""
            plot_anytime(curves, out / f"anytime-{b}b.png", title=f"Validation mAP against training time, {b} bits{over}")


def anytime_series(out: Path, rows: list[dict], methods: list[str]) -> dict[str, dict]:
    """``{method: {"seconds": [...], "map": [...]}}`` from the cells' ``log.jsonl``: validation
    mAP after each outer iteration against the cumulative training seconds (validation time not
    counted). Over seeds, point i is the mean over the seeds that ran outer iteration i. A method
    with no validation in its log (a shallow one, fitted once with select=last) has no curve."""
    series = {}
    for label in methods:
        runs = []
        for r in rows:
            if r["method"] != label:
                continue
            log = out / r.get("cell", cell_name(label, r["bits"])) / "log.jsonl"
            points, clock = [], 0.0
            for line in (log.read_text().splitlines() if log.is_file() else []):
                record = json.loads(line)
                clock += float(record.get("seconds") or 0.0)
                if record.get("val_map") is not None:
                    points.append((clock, float(record["val_map"])))
            if points:
                runs.append(points)
        if runs:
            depth = max(map(len, runs))
            at = [[run[i] for run in runs if i < len(run)] for i in range(depth)]
            series[label] = {"seconds": [sum(p[0] for p in ps) / len(ps) for ps in at],
                             "map": [sum(p[1] for p in ps) / len(ps) for ps in at]}
    return series


def parse_list(text: str, kind=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise SchnError(f"expected a comma-separated list of {kind.__name__}s, got {text!r}") from None


__all__ = ["ALIASES", "cell_config", "parse_list", "resolve_method", "run_benchmark", "write_results"]
