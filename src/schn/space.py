"""Hyper-parameter search spaces: one small declarative spec per method, declared beside it.

A method class lists its space as ``search_space = DEEP_SPACE + (Param("method.eta", 1e-2, 1e3,
log=True),)``; ``schn tune`` only reads these specs (it has no method knowledge of its own). A
parameter is a dotted config key (``section.key``, as ``--set`` takes), its range, whether it is
searched on a log scale, and whether it is an integer. ``per_bit``: the range is in units of the
code length (DSH's margin is ``2 * bits`` in the paper).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from .bounds import RANGE
from .errors import SchnError


@dataclass(frozen=True)
class Param:
    key: str  # "method.lr", "train.batch_size", ...
    low: float
    high: float
    log: bool = False
    integer: bool = False
    per_bit: bool = False

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    def suggest(self, trial, bits: int):
        """The value for ``trial`` (an Optuna trial), scaled by ``bits`` when ``per_bit``."""
        if self.integer:
            value = trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        else:
            value = trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)
        return value * bits if self.per_bit else value

    def describe(self) -> str:
        kind = "int" if self.integer else "float"
        scale = "log" if self.log else "linear"
        unit = " x bits" if self.per_bit else ""
        return f"{self.key}: {kind} {self.low:g}..{self.high:g}{unit} ({scale})"


# Shared by every method trained by back-propagation (the optimiser and the batch).
DEEP_SPACE = (
    Param("method.lr", 1e-5, 1e-1, log=True),
    Param("method.weight_decay", 1e-7, 1e-2, log=True),
    Param("train.batch_size", 16, 256, log=True, integer=True),
)
# Methods with learned database codes also choose how many items an outer iteration samples (m)
# and how many epochs it trains on them before the discrete update.
ASYMMETRIC_SPACE = DEEP_SPACE + (
    Param("train.num_samples", 500, 20_000, log=True, integer=True),
    Param("train.epochs_per_iteration", 1, 5, integer=True),
)


def field_range(section_class, name: str):
    """(type, (lo, hi, above)) of field ``name`` of a config dataclass, or None if it has none."""
    fields = {f.name: f for f in dataclasses.fields(section_class)}
    if name not in fields:
        return None
    hint = typing.get_type_hints(section_class)[name]
    base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return base[0], fields[name].metadata.get(RANGE, (None, None, False))


def check_space(space, section_classes: dict, bits: int, where: str) -> None:
    """One line for an empty space, an unknown key, or a range the option cannot take."""
    if not space:
        raise SchnError(f"{where} has no hyper-parameters to search; there is nothing to tune")
    seen = set()
    for p in space:
        if p.key in seen:
            raise SchnError(f"{where}: {p.key} is searched twice; give each key once")
        seen.add(p.key)
        if p.section not in section_classes or field_range(section_classes[p.section], p.name) is None:
            raise SchnError(f"{where}: {p.key} is not an option of this method's config; fix the search space")
        kind, (lo, hi, above) = field_range(section_classes[p.section], p.name)
        if p.integer and kind is not int:
            raise SchnError(f"{where}: {p.key} is a {kind.__name__} option; declare it without integer")
        if not p.low < p.high:
            raise SchnError(f"{where}: {p.key} needs low < high, got {p.low:g}..{p.high:g}")
        if p.log and p.low <= 0:
            raise SchnError(f"{where}: {p.key} is searched on a log scale, so low must be > 0, got {p.low:g}")
        scale = bits if p.per_bit else 1
        low, high = p.low * scale, p.high * scale
        if (lo is not None and (low <= lo if above else low < lo)) or (hi is not None and high > hi):
            raise SchnError(f"{where}: {p.key} range {low:g}..{high:g} leaves the option's own range; narrow it")


def space_from_yaml(raw, where: str) -> tuple[Param, ...]:
    """A space from a YAML mapping ``key: {low, high, log, integer, per_bit}`` (``schn tune --space``)."""
    if not isinstance(raw, dict) or not raw:
        raise SchnError(f"{where} must map option keys to {{low, high}} ranges, e.g. 'method.lr: {{low: 1e-5, "
                        "high: 1e-2, log: true}'")
    allowed = {"low", "high", "log", "integer", "per_bit"}
    space = []
    for key, spec in raw.items():
        if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - allowed:
            raise SchnError(f"{where}: {key} needs low and high (optional log, integer, per_bit), got {spec!r}")
        try:
            low, high = float(spec["low"]), float(spec["high"])
        except (TypeError, ValueError):
            raise SchnError(f"{where}: {key} low and high must be numbers, got {spec!r}") from None
        flags = {k: spec.get(k, False) for k in ("log", "integer", "per_bit")}
        if any(not isinstance(v, bool) for v in flags.values()):
            raise SchnError(f"{where}: {key} log, integer and per_bit must be true or false")
        if str(key).count(".") != 1:
            raise SchnError(f"{where}: {key!r} must be a dotted key such as method.lr")
        space.append(Param(str(key), low, high, **flags))
    return tuple(space)
