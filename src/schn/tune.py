"""``schn tune``: a method's hyper-parameters searched by Optuna on the validation split only.

One study per folder ``OUT``: a seeded TPE sampler over the method's declared search space
(``schn.space``), each trial trained by the one engine under the schedule a ``schn benchmark``
cell of that method gets (``benchmark.cell_config``), its objective the best validation mAP
that model selection uses. The engine reports validation mAP after every outer iteration, so
the pruner stops hopeless trials early. No trial encodes or scores a query: the study is blind
to the query split (tested by shuffling the query labels).

    OUT/study.db      the Optuna study (SQLite unless --storage); re-running continues it
    OUT/split.json    the one split every trial uses (drawn once from the config)
    OUT/best.yaml     the best trial's complete config (``schn train --config`` takes it)
    OUT/best.json     the best parameters as dotted overrides, the value, the trial counts
    OUT/trials.csv    every trial: parameters, value, state, seconds (training, validation, rest)
    OUT/history.png, OUT/importance.png   Optuna's optimisation history and parameter importances
"""
from __future__ import annotations

import csv
import dataclasses
import errno
import fcntl
import io
import json
import math
import os
import time
import warnings
from pathlib import Path

import yaml

from .bounds import check_range
from .config import Config, TrainConfig, config_from_dict, dump_config
from .errors import SchnError, one_line
from .fileio import write_json, write_text
from .space import check_space, space_from_yaml

STUDY_FILE = "study.db"
STUDY_NAME = "schn-tune"
PRUNERS = ("median", "halving", "none")
MAX_FAILURES_IN_A_ROW = 3  # a study whose trials keep failing has a broken config, not bad luck


@dataclasses.dataclass
class TuneResult:
    out: Path
    best_value: float | None
    best_params: dict  # dotted config keys -> values, as the trial applied them
    complete: int = 0
    pruned: int = 0
    failed: int = 0


def method_space(label: str, space_file: str | Path | None = None):
    """The search space of method ``label`` (registered name or preset): its declared one, or the
    YAML file ``space_file``."""
    from .methods import METHODS

    name = method_name(label)
    if space_file is None:
        return tuple(METHODS.get(name).search_space)
    path = Path(space_file)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SchnError(f"cannot read search space {path}: {exc.strerror}; pass an existing YAML file") from None
    except yaml.YAMLError as exc:
        raise SchnError(f"search space {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return space_from_yaml(raw, f"search space {path}")


def method_name(label: str) -> str:
    """The registered method of ``label`` (a method or a preset such as schn-tomm)."""
    from .benchmark import ALIASES, resolve_method
    from .methods import list_methods

    if label not in ALIASES and label not in list_methods():
        raise SchnError(f"unknown method {label!r} (--method); choose from: {', '.join([*list_methods(), *ALIASES])}")
    return resolve_method(label)[0]


def show_space(label: str) -> str:
    space = method_space(label)
    if not space:
        return f"{label}: no hyper-parameters to search"
    return "\n".join([f"{label}:"] + [f"  {p.describe()}" for p in space])


def apply_params(cfg: Config, params: dict) -> Config:
    """``cfg`` with dotted overrides applied, validated like any config."""
    raw = cfg.to_dict()
    for key, value in params.items():
        section, name = key.split(".", 1)
        raw[section][name] = value
    return config_from_dict(raw)


def _fixed_keys(sets) -> set[str]:
    """Keys that an explicit --set fixes (so the search leaves them alone)."""
    from .benchmark import split_target

    return {split_target(text)[1].partition("=")[0].strip() for text in sets}


def _lock(out: Path) -> int:
    fd = os.open(out / "tune.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise SchnError(f"{out} is being tuned by another process; wait for it or use another -o") from None
        raise
    return fd


def _pruner(name: str):
    import optuna

    if name == "median":  # no pruning before 5 finished trials, nor at a trial's first validation
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SchnError(f"--pruner {name!r} is not one of {', '.join(PRUNERS)}")


def open_study(url: str, pruner: str, seed: int, identity: dict):
    """The study at ``url`` (created when new); refuses one made for another method, data set,
    code length, space or schedule. Trials left running by a crashed tuner are marked failed."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = optuna.storages.RDBStorage(url)
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds for a bad URL
        raise SchnError(f"cannot open the study storage {url}: {one_line(exc)}; pass a SQLAlchemy URL such "
                        "as sqlite:///path/study.db") from None
    done = 0
    if STUDY_NAME in existing:
        made_for = existing[STUDY_NAME].user_attrs
        for key in ("method", "data", "bits", "space", "schedule"):
            difference = _difference(key, made_for.get(key), identity[key])
            if difference:
                raise SchnError(f"the study in {url} was created for another {key} ({difference}); use another -o "
                                "or --storage")
        done = existing[STUDY_NAME].n_trials
    sampler = optuna.samplers.TPESampler(seed=(seed + done) % 2**32)  # resumed: a fresh but seeded stream
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", sampler=sampler,
                                pruner=_pruner(pruner), load_if_exists=True)
    if STUDY_NAME not in existing:
        for key, value in identity.items():
            study.set_user_attr(key, value)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        # we hold the folder's lock, so a running trial is one whose tuner died mid-trial
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    return study


def _difference(key: str, made_for, now) -> str | None:
    """How a study's recorded ``key`` differs from this run's, or None. For the schedule (a dumped
    config) only options both know must agree: an option added to schn since keeps its default."""
    if key != "schedule" or made_for is None:
        return None if made_for == now else f"{made_for!r}, not {now!r}"
    old, new = yaml.safe_load(made_for), yaml.safe_load(now)
    for section in old.keys() & new.keys():
        for name in old[section].keys() & new[section].keys():
            if old[section][name] != new[section][name]:
                return f"{section}.{name} was {old[section][name]!r}, now {new[section][name]!r}"
    return None


def tune(config: str | Path, label: str, bits: int, trials: int, out: str | Path, storage: str | None = None,
         sets=(), trial_budget: float | None = None, pruner: str = "median", space_file: str | Path | None = None,
         echo=print, command: str = "") -> TuneResult:
    """Run (or continue) the study of method ``label`` until it holds ``trials`` finished trials."""
    from .benchmark import _read_yaml, cell_config
    from .data import create_dataset
    from .methods import METHODS

    out = Path(out)
    check_range("--trials", trials, 1, 100_000)
    check_range("--bits", bits, 1, 1024)
    if trial_budget is not None:
        check_range("--trial-budget", trial_budget, 0, 10**8, above=True)
    _pruner(pruner)
    name = method_name(label)
    fixed = _fixed_keys(sets)
    space = tuple(p for p in method_space(label, space_file) if p.key not in fixed)
    check_space(space, {"method": METHODS.get(name).config_class, "train": TrainConfig}, bits,
                f"the search space of {label}" + (" (less what --set fixes)" if fixed else ""))
    base = _read_yaml(Path(config))
    cell = cell_config(base, label, bits, list(sets), trial_budget, out / "split.json", out)
    schedule = dataclasses.replace(cell.config.train, select="val")  # shallow cells too: score on val
    trial_cfg = dataclasses.replace(cell.config, train=schedule)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        dataset = create_dataset(trial_cfg.data)
        split = _study_split(config, sets, dataset, out / "split.json")
        if not len(split.val):
            raise SchnError("tuning needs validation items and this split has none; set split.val_size")
        identity = {"method": label, "bits": bits, "data": f"{trial_cfg.data.name}:{dataset.fingerprint}",
                    "space": [p.describe() for p in space], "schedule": dump_config(trial_cfg)}
        url = storage or f"sqlite:///{(out / STUDY_FILE).resolve()}"
        study = open_study(url, pruner, trial_cfg.run.seed, identity)
        if not study.trials:
            study.enqueue_trial(default_params(trial_cfg, space, bits))
        objective = _Objective(trial_cfg, space, bits, dataset, split)
        _optimise(study, objective, trials, echo, label)
        result = _write_outputs(study, out, cell.config, space, label, bits, command)
    finally:
        os.close(lock)
    return result


def default_params(cfg: Config, space, bits: int) -> dict:
    """The config's own values of the searched keys (the method's paper defaults, the base
    config's schedule), clipped into the space: a new study's first trial, so that tuning starts
    from the defaults and a method is never tuned below them on validation by bad luck."""
    params = {}
    for p in space:
        value = getattr(getattr(cfg, p.section), p.name)
        if value is None:
            continue
        value = min(max(float(value) / (bits if p.per_bit else 1), p.low), p.high)
        params[p.key] = int(round(value)) if p.integer else value
    return params


def _study_split(config, sets, dataset, path: Path):
    """The study's one split: ``path`` when it exists, else the config's (with the --set
    overrides of split.*) drawn or read once and saved there."""
    from .benchmark import split_target
    from .config import load_config
    from .data import load_split, make_split

    if path.is_file():
        return load_split(str(path), dataset)
    cfg = load_config(config, [text for text in sets if split_target(text) == (None, text)
                               and text.strip().startswith("split.")])
    split = load_split(cfg.split.file, dataset) if cfg.split.file else make_split(dataset, cfg.split, cfg.split.seed)
    split.save(str(path))
    return split


class _Objective:
    """One trial: the trial's config, a fresh method, the engine; returns the best val mAP."""

    def __init__(self, cfg: Config, space, bits: int, dataset, split):
        self.cfg, self.space, self.bits, self.dataset, self.split = cfg, space, bits, dataset, split

    def __call__(self, trial) -> float:
        import optuna

        from .engine import seed_everything, train_method
        from .runs import prepare_run

        params = {p.key: p.suggest(trial, self.bits) for p in self.space}
        cfg = apply_params(self.cfg, params)
        seed_everything(cfg.run.seed)  # every trial starts from the same seed: only the parameters differ
        run = prepare_run(cfg, progress=False, dataset=self.dataset, split=self.split)

        def report(iteration: int, score: float) -> None:
            trial.report(score, iteration)
            # the last iteration's work is done: pruning it would only discard a finished result
            # (a shallow method has only that one)
            if iteration < cfg.train.iterations and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after outer iteration {iteration}")

        result = train_method(cfg, run.method, run.inputs, self.split, run.labels, run.device, progress=False,
                              on_validation=report)
        trial.set_user_attr("iterations", result.iterations)
        trial.set_user_attr("train_seconds", round(result.seconds, 3))
        trial.set_user_attr("val_seconds", round(result.val_seconds, 3))
        trial.set_user_attr("stopped_early", result.stopped_early)
        trial.set_user_attr("selected_iteration", result.selected_iteration)
        if result.best_val_map is None or not math.isfinite(result.best_val_map):
            raise SchnError("the trial ran no validation; check train.select and split.val_size")
        return float(result.best_val_map)


def _optimise(study, objective, trials: int, echo, label: str) -> None:
    import optuna
    from optuna.trial import TrialState

    def finished():
        return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]

    todo = trials - len(finished())
    echo(f"tune {label}: {len(finished())} of {trials} trials finished, {max(todo, 0)} to run")
    durations, failures = [], 0
    for i in range(max(todo, 0)):
        trial = study.ask()
        start = time.perf_counter()
        try:
            value = objective(trial)
        except optuna.TrialPruned as exc:
            _record_wall(trial, start)
            study.tell(trial, state=TrialState.PRUNED)
            outcome, failures = str(exc), 0
        except (SchnError, RuntimeError, ValueError, FloatingPointError) as exc:
            _record_wall(trial, start)
            study.tell(trial, state=TrialState.FAIL)
            failures += 1
            outcome = f"FAILED: {one_line(exc)}"
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise SchnError(f"{failures} trials in a row failed (last: {one_line(exc)}); fix the config") from None
        else:
            _record_wall(trial, start)
            study.tell(trial, value)
            outcome, failures = f"val mAP {value:.4f}", 0
        durations.append(time.perf_counter() - start)
        eta = _clock(sum(durations) / len(durations) * (todo - i - 1))
        best = _best_trial(study)
        best_text = f"best {best.value:.4f} (#{best.number})" if best else "no finished trial yet"
        echo(f"[{len(finished())}/{trials}] trial #{trial.number} {outcome}; {best_text}; "
             f"{durations[-1]:.0f}s, ETA {eta}")


def _record_wall(trial, start: float) -> None:
    trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))


def _best_trial(study):
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(done, key=lambda t: t.value) if done else None


def _clock(seconds: float) -> str:
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m" if seconds >= 3600 else \
        f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _scaled(trial, space, bits: int) -> dict:
    """A finished trial's parameters as the trial applied them (``per_bit`` ranges times bits)."""
    return {p.key: trial.params[p.key] * (bits if p.per_bit else 1) for p in space if p.key in trial.params}


def _write_outputs(study, out: Path, cell_cfg: Config, space, label: str, bits: int, command: str) -> TuneResult:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    best = _best_trial(study)
    params = _scaled(best, space, bits) if best else {}
    write_text(out / "trials.csv", _trials_csv(trials, space))
    if best is not None:
        cfg = apply_params(cell_cfg, params)
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir="runs", name=None, progress=True))
        header = (f"# schn tune: best of {counts[TrialState.COMPLETE]} complete trials ({label}, {bits} bits): "
                  f"validation mAP {best.value:.4f} (trial #{best.number})\n")
        write_text(out / "best.yaml", header + dump_config(cfg))
    overhead = _overhead(trials)
    write_json(out / "best.json", {
        "method": label, "bits": bits, "value": best.value if best else None,
        "trial": best.number if best else None, "params": params,
        "complete": counts[TrialState.COMPLETE], "pruned": counts[TrialState.PRUNED],
        "failed": counts[TrialState.FAIL], "space": [p.describe() for p in space],
        "seconds": round(sum(t.user_attrs.get("seconds", 0.0) for t in trials), 1),
        "overhead_fraction": overhead, "command": command})
    _plots(study, out)
    return TuneResult(out, best.value if best else None, params, counts[TrialState.COMPLETE],
                      counts[TrialState.PRUNED], counts[TrialState.FAIL])


def _overhead(trials) -> float | None:
    """Share of the trials' wall time spent outside training and validation (set-up, Optuna)."""
    total = sum(t.user_attrs.get("seconds", 0.0) for t in trials if "train_seconds" in t.user_attrs)
    inner = sum(t.user_attrs["train_seconds"] + t.user_attrs["val_seconds"] for t in trials
                if "train_seconds" in t.user_attrs)
    return round(1 - inner / total, 4) if total > 0 else None


def _trials_csv(trials, space) -> str:
    buf = io.StringIO()
    keys = [p.key for p in space]
    columns = ["number", "state", "value", "seconds", "train_seconds", "val_seconds", "iterations",
               "last_reported_iteration", *keys]
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for t in trials:
        row = {"number": t.number, "state": t.state.name.lower(), "value": t.value,
               "last_reported_iteration": max(t.intermediate_values) if t.intermediate_values else None,
               **{k: t.user_attrs.get(k) for k in ("seconds", "train_seconds", "val_seconds", "iterations")}}
        row.update({k: t.params.get(k) for k in keys})
        writer.writerow(row)
    return buf.getvalue()


def _plots(study, out: Path) -> None:
    """Optuna's own matplotlib plots; skipped (not an error) while there is too little to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as oplt

    for name, draw in (("history.png", oplt.plot_optimization_history), ("importance.png", oplt.plot_param_importances)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                ax = draw(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances need two complete trials
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.tight_layout()
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, out / name)


def load_tuned(folder: str | Path, label: str) -> dict:
    """The best parameters a finished study in ``folder`` found for ``label`` (``best.json``)."""
    path = Path(folder) / "best.json"
    if not path.is_file():
        raise SchnError(f"{folder} holds no finished study (no best.json); run `schn tune` there first")
    try:
        blob = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SchnError(f"{path} is not a study result ({one_line(exc)}); run `schn tune` again") from None
    if blob.get("method") != label:
        raise SchnError(f"{path} was tuned for {blob.get('method')!r}, not {label!r}; pass the right folder")
    if blob.get("value") is None:
        raise SchnError(f"{path} has no complete trial; continue the study with `schn tune`")
    return dict(blob["params"])
