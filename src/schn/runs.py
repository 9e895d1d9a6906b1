"""Run folders: what ``schn train`` writes and ``evaluate`` / ``encode`` / ``plot`` read back.

    RUN/config.yaml     the resolved config (every default filled in)
    RUN/split.json      the split (query / database / train / val indices, seed)
    RUN/log.jsonl       one line per outer iteration: each loss term, val mAP, seconds, images/s
    RUN/checkpoint.pt   model state incl. the learned database codes, input spec
    RUN/metrics.json    scalar metrics (asymmetric = the protocol, and symmetric)
    RUN/curves.json     PR curve over Hamming radius and precision@N curve
    RUN/codes.npz       packed query and database codes with their data set indices
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import codes as codes_mod
from . import distributed
from . import resume as resume_mod
from .backbones import with_head
from .config import Config, config_from_dict, dump_config, load_config
from .data import create_dataset, load_split, make_split
from .engine import seed_everything, train_method
from .errors import SchnError
from .evaluate import evaluate_method
from .fileio import atomic_path, read_torch, write_json, write_text
from .inputs import ModelInputs, backbone_for, resolve_device
from .methods import METHODS, create_method

CHECKPOINT_FORMAT = "schn-checkpoint-1"
CURVE_KEYS = ("pr_curve", "p_at_n_curve")


# What a run writes before its first outer iteration ends (the first two always): without
# resume.pt, these alone mean the run never got going, and `schn train --resume` starts it anew.
STARTED_FILES = ("config.yaml", "split.json", "log.jsonl")


def new_run_dir(cfg: Config) -> tuple[Path, bool]:
    """The run's folder, new or empty; and whether this call created it."""
    name = cfg.run.name or f"{cfg.data.name}-{cfg.method_name}-{cfg.train.bits}b-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg.run.out_dir) / name
    if path.exists() and any(path.iterdir()):
        if _never_started(path):
            raise SchnError(f"run folder {path} holds a run that stopped before its first outer iteration ended; "
                            f"start it again with `schn train --resume {path}`, or choose another run.name")
        raise SchnError(f"run folder {path} already exists and is not empty; choose another run.name")
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    return path, created


def _never_started(run_dir: Path) -> bool:
    """A run folder holding only what a run writes before its first iteration ends."""
    names = {p.name for p in run_dir.iterdir()}
    return set(STARTED_FILES[:2]) <= names <= set(STARTED_FILES)


def _remove_unstarted(run_dir: Path, created: bool) -> None:
    """Undo a run that failed before its first iteration ended: its own files, and the folder if
    this run created it and nothing else is in it (never anything the run did not write)."""
    if not _never_started(run_dir):
        return
    for name in STARTED_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if created and not any(run_dir.iterdir()):
        run_dir.rmdir()


def _split_for(cfg: Config, dataset):
    if cfg.split.file:
        return load_split(cfg.split.file, dataset)
    return make_split(dataset, cfg.split, cfg.split.seed)


def _split_metrics(result: dict) -> tuple[dict, dict]:
    scalars = {k: v for k, v in result.items() if k not in CURVE_KEYS}
    curves = {k: result[k] for k in CURVE_KEYS if k in result}
    return scalars, curves


def write_evaluation(run_dir: Path, cfg: Config, evaluation: dict, extra: dict, split, labels: np.ndarray,
                     class_names) -> dict:
    """metrics.json (scalars, asymmetric first), curves.json, codes.npz; all atomic."""
    asym, asym_curves = _split_metrics(evaluation["asymmetric"])
    metrics = {"method": cfg.method_name, "data": cfg.data.name, "bits": cfg.train.bits, **asym}
    metrics.update(extra)
    metrics["num_queries"], metrics["num_database"] = len(split.query), len(split.database)
    metrics["asymmetric"] = asym
    curves = {"asymmetric": asym_curves}
    if "symmetric" in evaluation:
        metrics["symmetric"], curves["symmetric"] = _split_metrics(evaluation["symmetric"])
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "curves.json", curves)
    with atomic_path(run_dir / "codes.npz", suffix=".npz") as tmp:
        np.savez(tmp, bits=cfg.train.bits,
                 query_codes=codes_mod.pack(evaluation["codes"]["query"]), query_indices=split.query,
                 database_codes=codes_mod.pack(evaluation["codes"]["database"]),
                 database_indices=split.database, query_labels=labels[split.query],
                 class_names=np.array(list(class_names or []), dtype=str))
    return metrics


@dataclass
class PreparedRun:
    """Everything training needs, built from a config (no run folder is written)."""

    dataset: object
    split: object
    inputs: ModelInputs
    labels: np.ndarray
    method: object
    device: torch.device


def prepare_run(cfg: Config, progress: bool = True, dataset=None, split=None) -> PreparedRun:
    """Data set, split, model inputs and a fresh method for ``cfg`` (seed first for repeatability).
    ``dataset`` and ``split``: reuse these (``schn tune`` reads the data once for all its trials)."""
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and device.index is None and distributed.world().size > 1:
        device = torch.device("cuda", distributed.world().local_rank)  # torchrun: a device per process
    dataset = create_dataset(cfg.data) if dataset is None else dataset
    split = _split_for(cfg, dataset) if split is None else split
    inputs = ModelInputs(cfg.model, dataset, device, progress=progress, num_workers=cfg.train.num_workers)
    labels = np.asarray(dataset.labels)
    train_labels = torch.as_tensor(labels[split.train], dtype=torch.float32)
    network, width = with_head(cfg.model, inputs.backbone, inputs.feature_dim, METHODS.get(cfg.method_name).family)
    method = create_method(cfg.method_name, cfg.method, network, width, labels.shape[1],
                           cfg.train.bits, train_labels, device)
    return PreparedRun(dataset, split, inputs, labels, method, device)


def train_run(cfg: Config, progress: bool = True, echo=print, resume_dir: str | Path | None = None
              ) -> tuple[Path, dict]:
    """Train one config end to end and write its run folder. Returns (folder, metrics).
    ``resume_dir``: go on with that interrupted run instead (its own config and split)."""
    if resume_dir is not None:
        run_dir, cfg, history = _resumable(resume_dir)
    here = distributed.init(cfg.train.device)  # under torchrun: one process per device, same seed
    seed_everything(cfg.run.seed)
    run = prepare_run(cfg, progress and here.is_main)
    dataset, split, inputs, labels, method, device = (run.dataset, run.split, run.inputs, run.labels,
                                                      run.method, run.device)
    created = False
    if resume_dir is None:  # only the first process writes; the others learn the folder's name
        run_dir, created = distributed.broadcast(new_run_dir(cfg) if here.is_main else None)
        if here.is_main:
            write_text(run_dir / "config.yaml", dump_config(cfg))
            split.save(run_dir / "split.json")
    elif here.is_main:  # the log as of the saved state (a record written after it would be repeated)
        write_text(run_dir / "log.jsonl", "".join(json.dumps(record) + "\n" for record in history))
    log_path = run_dir / "log.jsonl"
    report = getattr(dataset, "report", None)
    if report and any(report.values()):
        echo(f"data: {', '.join(f'{k}={v}' for k, v in report.items())}")

    def log(record: dict) -> None:
        with open(log_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    state_file = run_dir / resume_mod.STATE_FILE
    try:
        result = train_method(cfg, method, inputs, split, labels, device, log=log, progress=progress,
                              state_file=state_file)
    except BaseException:  # a bad image, Ctrl-C: a run with no finished iteration leaves nothing behind
        if here.is_main and resume_dir is None:
            _remove_unstarted(run_dir, created)
        raise
    if not here.is_main:  # the first process selects, saves and evaluates
        return run_dir, {}
    save_checkpoint(run_dir / "checkpoint.pt", cfg, method, inputs, labels.shape[1], len(split.train),
                    dataset.class_names)
    state_file.unlink(missing_ok=True)  # finished: checkpoint.pt is the run's model from now on
    evaluation = evaluate_method(method, inputs, split, labels, cfg.eval, device,
                                 cfg.train.encode_batch_size, progress=progress)
    extra = {
        "train_seconds": round(result.seconds, 2),
        "images_per_second": round(result.images_per_second, 1),
        "model_selection": result.model_selection,
        "selected_iteration": result.selected_iteration,
        "iterations_run": result.iterations,
        "stopped_by_time_budget": result.stopped_by_time_budget,
        "stopped_early": result.stopped_early,
        "best_val_map": result.best_val_map,
        "unsampled_encoded_by_network": result.filled_unsampled,
        **({"final_fit": result.final_fit} if result.final_fit is not None else {}),
        "device": str(device),
        "processes": here.size,
    }
    return run_dir, write_evaluation(run_dir, cfg, evaluation, extra, split, labels, dataset.class_names)


def _resumable(run_dir) -> tuple[Path, Config, list]:
    """An interrupted run's folder, config (its split pinned to split.json) and log so far."""
    run_dir = Path(run_dir)
    state = run_dir / resume_mod.STATE_FILE
    if not (run_dir / "config.yaml").is_file():
        raise SchnError(f"{run_dir} is not a run folder (no config.yaml); pass a folder written by `schn train`")
    if not state.is_file():
        if (run_dir / "checkpoint.pt").is_file():
            raise SchnError(f"run {run_dir} has finished; there is nothing to resume")
        if not (run_dir / "split.json").is_file():
            raise SchnError(f"{run_dir} has no split.json; it is not a run `schn train` started, train it again")
    cfg = load_config(run_dir / "config.yaml", [f"split.file={run_dir / 'split.json'}"])
    if not state.is_file():  # killed before its first iteration ended: start over, same config and split
        return run_dir, cfg, []
    history = read_torch(state, resume_mod.FORMAT, "resume state", "train the run again")["result"]["history"]
    return run_dir, cfg, history


def input_spec(inputs: ModelInputs) -> dict:
    """How a raw image becomes a model input, stored so that encode needs no data set."""
    backbone = inputs.image_backbone() if inputs.cfg.frozen else inputs.backbone
    if backbone.preprocess == "imagenet":
        mean, std = backbone.mean, backbone.std
    else:
        mean, std = inputs.dataset.default_mean_std()
    return {"preprocess": backbone.preprocess, "input_size": inputs.input_size(backbone),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std], "channels": inputs.dataset.channels}


def save_checkpoint(path: Path, cfg: Config, method, inputs: ModelInputs, num_classes: int, n_train: int,
                    class_names) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT, "method": cfg.method_name, "bits": cfg.train.bits,
        "num_classes": num_classes, "n_train": n_train, "feature_dim": inputs.feature_dim,
        "class_names": list(class_names) if class_names is not None else None,
        "input_spec": input_spec(inputs), "config": cfg.to_dict(), "state": method.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


@dataclass
class LoadedRun:
    path: Path
    cfg: Config
    checkpoint: dict
    method: object
    device: torch.device


def open_run(run_dir: str | Path, device: str | None = None) -> LoadedRun:
    """Load a run's config and checkpoint and rebuild its method (no data set needed)."""
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    if not run_dir.is_dir():
        raise SchnError(f"run folder {run_dir} does not exist; pass a folder written by `schn train`")
    if not ckpt_path.is_file():
        raise SchnError(f"{run_dir} has no checkpoint.pt; pass a finished run folder written by `schn train`")
    ckpt = read_torch(ckpt_path, CHECKPOINT_FORMAT, "checkpoint", "retrain the run")
    cfg = config_from_dict(ckpt["config"])
    dev = resolve_device(device or cfg.train.device)

    if cfg.model.frozen:
        backbone, feature_dim = nn.Identity(), ckpt["feature_dim"]
    else:
        # weights come from the checkpoint, so the backbone starts empty (works offline)
        spec = ckpt["input_spec"]
        backbone = backbone_for(cfg.model, spec["channels"], spec["input_size"], weights="none")
        feature_dim = backbone.feature_dim
    train_labels = torch.zeros(ckpt["n_train"], ckpt["num_classes"])
    backbone, feature_dim = with_head(cfg.model, backbone, feature_dim, METHODS.get(cfg.method_name).family)
    method = create_method(cfg.method_name, cfg.method, backbone, feature_dim, ckpt["num_classes"],
                           ckpt["bits"], train_labels, dev)
    method.load_state_dict(ckpt["state"])
    method.eval()
    return LoadedRun(run_dir, cfg, ckpt, method, dev)


def evaluate_run(run_dir: str | Path, device: str | None = None, progress: bool = True) -> dict:
    """Recompute the metrics of a run from its checkpoint, its saved split and the data."""
    run = open_run(run_dir, device)
    cfg = run.cfg
    dataset = create_dataset(cfg.data)
    split = load_split(run.path / "split.json", dataset)
    inputs = ModelInputs(cfg.model, dataset, run.device, progress=progress)
    labels = np.asarray(dataset.labels)
    evaluation = evaluate_method(run.method, inputs, split, labels, cfg.eval, run.device,
                                 cfg.train.encode_batch_size, progress=progress)
    previous = {}
    if (run.path / "metrics.json").is_file():
        previous = json.loads((run.path / "metrics.json").read_text())
    keep = ("train_seconds", "images_per_second", "model_selection", "selected_iteration", "iterations_run",
            "stopped_by_time_budget", "stopped_early", "best_val_map",
            "unsampled_encoded_by_network")
    extra = {k: previous[k] for k in keep if k in previous}
    extra["device"] = str(run.device)
    return write_evaluation(run.path, cfg, evaluation, extra, split, labels, dataset.class_names)
