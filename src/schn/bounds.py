"""The range of every numeric option, declared beside the option and checked in one place.

A config dataclass declares ``bits: int = bounded(32, 1, 1024)``; :func:`check_bounds` refuses a
value outside its range in one line before any work starts (``--set train.bits=100000`` would
otherwise train until memory runs out). Command-line options use :func:`check_range`.
"""
from __future__ import annotations

import dataclasses
import math

from .errors import SchnError

RANGE = "range"  # the metadata key of a bounded field


def bounded(default=dataclasses.MISSING, lo=None, hi=None, *, above: bool = False,
            default_factory=dataclasses.MISSING):
    """A dataclass field whose value (each value, for a list) lies in ``[lo, hi]``, or ``(lo, hi]``
    with ``above``; ``None`` passes where the field's type allows it."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={RANGE: (lo, hi, above)})


def _number(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def describe_range(lo=None, hi=None, above: bool = False) -> str:
    low = None if lo is None else (f"> {_number(lo)}" if above else f">= {_number(lo)}")
    if hi is None:
        return low or "a number"
    if low is None:
        return f"<= {_number(hi)}"
    return f"above {_number(lo)} and at most {_number(hi)}" if above else f"from {_number(lo)} to {_number(hi)}"


def check_range(name: str, value, lo=None, hi=None, above: bool = False) -> None:
    """One line naming ``name`` when ``value`` is not a finite number in the range."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    bad = bad or (lo is not None and (value <= lo if above else value < lo)) or (hi is not None and value > hi)
    if bad:
        raise SchnError(f"{name} {value!r} is out of range; it must be {describe_range(lo, hi, above)}")


def check_bounds(obj, section: str) -> None:
    """Check every bounded field of the dataclass instance ``obj`` (named ``section.field``)."""
    for f in dataclasses.fields(obj):
        if RANGE not in f.metadata:
            continue
        value = getattr(obj, f.name)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None:
                check_range(f"{section}.{f.name}", v, *f.metadata[RANGE][:2], above=f.metadata[RANGE][2])


def numeric_fields(cls) -> dict[str, dataclasses.Field]:
    """The fields of ``cls`` typed int or float (optional, or in a list): each needs a range."""
    import typing

    hints = typing.get_type_hints(cls)
    return {f.name: f for f in dataclasses.fields(cls)
            if f.name in hints and any(t in str(hints[f.name]) for t in ("int", "float"))}
