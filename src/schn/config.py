"""Typed run configuration: YAML files plus ``--set a.b=c`` overrides.

Each section is a dataclass owned by the module that uses it; this module only composes them,
checks every key and value against the declared types, and writes the resolved config back out.
The ``method`` section is open-ended: ``method.name`` picks the method's own config class.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .backbones import ModelConfig
from .bounds import bounded, check_bounds
from .data.config import DataConfig, SplitConfig
from .errors import SchnError
from .metrics import EvalConfig
from .precision import KINDS as PRECISIONS


@dataclass
class TrainConfig:
    bits: int = bounded(32, 1, 1024)
    iterations: int = bounded(50, 1, 100_000)  # outer iterations T
    epochs_per_iteration: int = bounded(3, 1, 10_000)  # E
    batch_size: int = bounded(64, 1, 65_536)
    num_samples: int = bounded(5000, 1, 10**9)  # |Omega| = m (capped at the training pool size)
    cover_all: bool = True  # cycle through a permutation so every item is sampled (authors: False)
    select: str = "val"  # model selection: "val" (validation split), "last", or "test" (authors')
    val_every: int = bounded(1, 1, 100_000)  # validate every N outer iterations (and after the last)
    num_workers: int = bounded(0, 0, 256)
    device: str = "auto"  # "auto" = cuda if available, else cpu; or "cpu", "cuda", "cuda:1", "mps"
    encode_batch_size: int = bounded(256, 1, 65_536)
    # seconds of training; then the current iteration is closed
    time_budget: Optional[float] = bounded(None, 0, 10**8, above=True)
    # early stopping: stop once validation mAP has not improved for this many outer iterations
    # (train.iterations stays the cap; only with select=val); None = run every iteration
    early_stopping: Optional[int] = bounded(None, 1, 100_000)
    # validation retrieves from a seeded subset of the pool (None = all)
    val_pool_size: Optional[int] = bounded(None, 1, 10**9)
    precision: str = "fp32"  # the training forward pass: fp32, bf16 (CPU and GPU) or fp16 (GPU, gradient scaler)
    # after the outer loop, epochs fitting the image network to the final database codes over the
    # whole pool (asymmetric methods: codes for new items); kept only if validation mAP does not drop
    final_fit_epochs: int = bounded(0, 0, 100_000)

    def __post_init__(self) -> None:
        for name in ("bits", "iterations", "epochs_per_iteration", "batch_size", "num_samples", "val_every"):
            if getattr(self, name) < 1:
                raise SchnError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.select not in ("val", "last", "test"):
            raise SchnError(f"train.select must be val, last or test, got {self.select!r}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise SchnError(f"train.time_budget must be a positive number of seconds, got {self.time_budget}")
        if self.precision not in PRECISIONS:
            raise SchnError(f"train.precision must be {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.val_pool_size is not None and self.val_pool_size < 1:
            raise SchnError(f"train.val_pool_size must be >= 1 (or null for the whole pool), got {self.val_pool_size}")


@dataclass
class RunConfig:
    out_dir: str = "runs"
    name: Optional[str] = None  # run folder name; default <data>-<method>-<bits>b-<time>
    seed: int = bounded(0, 0, 2**32 - 1)  # NumPy's seeds are 32-bit
    progress: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = None  # the method's own config dataclass, chosen by method.name
    method_name: str = "schn"
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "method_name":
                continue
            value = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(value)
        out["method"] = {"name": self.method_name, **out["method"]}
        return out


SECTIONS = ("data", "split", "model", "method", "train", "eval", "run")


def _method_config_class(name: str):
    from .methods import METHODS

    return METHODS.get(name).config_class


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert ``value`` to the field type ``annotation``; one clear error otherwise."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"Optional": Optional, "Any": Any})  # noqa: S307 - our own type strings
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if annotation is Any:
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, args[0] if args else Any, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise SchnError(f"{where} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise SchnError(f"{where} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value  # exact, however large (the range check refuses what is too large)
        try:
            as_float = float(value)
        except (ValueError, OverflowError):
            raise SchnError(f"{where} must be an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise SchnError(f"{where} must be an integer, got {value!r}")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise SchnError(f"{where} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise SchnError(f"{where} must be a number, got {value!r}") from None
        if not math.isfinite(number):  # nan passes every comparison a range check makes
            raise SchnError(f"{where} must be a finite number, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise SchnError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def fill_dataclass(cls, values: dict, section: str):
    if not isinstance(values, dict):
        raise SchnError(f"config section {section!r} must be a mapping of keys to values")
    known = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {section}.{close[0]}?" if close else f"; known keys: {', '.join(known)}"
            raise SchnError(f"unknown config key {section}.{key}{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
    obj = cls(**kwargs)  # __post_init__ checks values where a config defines it
    check_bounds(obj, section)
    if hasattr(obj, "check"):
        obj.check()
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise SchnError(f"--set expects key=value (e.g. train.bits=32), got {text!r}")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or parts[0] not in SECTIONS or not parts[1]:
        raise SchnError(f"--set key must be <section>.<key> with section one of {', '.join(SECTIONS)}; got {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or start from defaults), apply overrides, validate every key."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SchnError(f"config file {path} does not exist; pass an existing YAML file to --config")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SchnError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise SchnError(f"config file {path} must hold a mapping of sections (data, split, model, ...)")
    for section in raw:
        if section not in SECTIONS:
            close = difflib.get_close_matches(str(section), SECTIONS, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; sections are {', '.join(SECTIONS)}"
            raise SchnError(f"unknown config section {section!r}{hint}")
        if raw[section] is not None and not isinstance(raw[section], dict):
            raise SchnError(f"config section {section!r} must be a mapping of keys to values")
    raw = {k: dict(v or {}) for k, v in raw.items()}
    for text in overrides:
        (section, key), value = parse_override(text)
        raw.setdefault(section, {})[key] = value
    return config_from_dict(raw)


def config_from_dict(raw: dict) -> Config:
    """Build a validated Config from section dicts (a parsed YAML file, or a saved run config)."""
    raw = {k: dict(v or {}) for k, v in raw.items()}
    method_values = dict(raw.get("method", {}))
    method_name = str(method_values.pop("name", "schn"))
    return Config(
        data=fill_dataclass(DataConfig, raw.get("data", {}), "data"),
        split=fill_dataclass(SplitConfig, raw.get("split", {}), "split"),
        model=fill_dataclass(ModelConfig, raw.get("model", {}), "model"),
        method=fill_dataclass(_method_config_class(method_name), method_values, "method"),
        method_name=method_name,
        train=fill_dataclass(TrainConfig, raw.get("train", {}), "train"),
        eval=fill_dataclass(EvalConfig, raw.get("eval", {}), "eval"),
        run=fill_dataclass(RunConfig, raw.get("run", {}), "run"),
    )


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
