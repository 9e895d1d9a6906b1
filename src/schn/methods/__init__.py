"""Hashing methods by name: ``create_method`` / ``list_methods`` over the ``METHODS`` registry.

A registered method is a :class:`HashingMethod` subclass with a ``config_class`` dataclass of
its own options and the constructor
``(config, backbone, feature_dim, num_classes, bits, train_labels, device)``.
Every method is registered here, explicitly.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SchnError
from ..registry import Registry
from .base import HashingMethod
from .schn import SCHN, SCHNConfig
from .schn_plus import SCHNPlus, SCHNPlusConfig
from .lsh import LSH, LSHConfig
from .itq import ITQ, ITQConfig
from .sdh import SDH, SDHConfig
from .dpsh import DPSH, DPSHConfig
from .hashnet import HashNet, HashNetConfig
from .dsh import DSH, DSHConfig
from .adsh import ADSH, ADSHConfig
from .csq import CSQ, CSQConfig
from .greedyhash import GreedyHash, GreedyHashConfig

METHODS: Registry[type[HashingMethod]] = Registry("method")
METHODS.register("schn")(SCHN)
METHODS.register("schn-plus")(SCHNPlus)
METHODS.register("lsh")(LSH)
METHODS.register("itq")(ITQ)
METHODS.register("sdh")(SDH)
METHODS.register("dpsh")(DPSH)
METHODS.register("hashnet")(HashNet)
METHODS.register("dsh")(DSH)
METHODS.register("adsh")(ADSH)
METHODS.register("csq")(CSQ)
METHODS.register("greedyhash")(GreedyHash)


def list_methods() -> list[str]:
    return METHODS.names()


def method_config(name: str, values=None):
    """The options dataclass of method ``name``, from None (defaults), a dict or an instance."""
    config_class = METHODS.get(name).config_class
    if values is None:
        return config_class()
    if isinstance(values, config_class):
        return values
    if isinstance(values, dict):
        from ..config import fill_dataclass  # the one typed, key-checked way to fill options

        return fill_dataclass(config_class, values, "method")
    raise SchnError(f"options of method {name!r} must be a mapping, got {type(values).__name__}")


def create_method(
    name: str,
    config,
    backbone: nn.Module,
    feature_dim: int,
    num_classes: int,
    bits: int,
    train_labels,
    device: torch.device | str,
) -> HashingMethod:
    """Build method ``name``; ``config`` is its options dataclass, a dict of options, or None."""
    cls = METHODS.get(name)
    return cls(method_config(name, config), backbone, feature_dim, num_classes, bits,
               train_labels, device)


__all__ = ["METHODS", "HashingMethod", "SCHN", "SCHNConfig", "SCHNPlus", "SCHNPlusConfig", "LSH", "LSHConfig", "ITQ", "ITQConfig", "SDH", "SDHConfig", "DPSH", "DPSHConfig", "HashNet", "HashNetConfig", "DSH", "DSHConfig", "ADSH", "ADSHConfig", "CSQ", "CSQConfig", "GreedyHash", "GreedyHashConfig", "create_method", "list_methods",
           "method_config"]
