"""Hashing methods by name: ``create_method`` / ``list_methods`` over the ``METHODS`` registry.

A registered method is a :class:`HashingMethod` subclass with a ``config_class`` dataclass of
its own options and the constructor
``(config, backbone, feature_dim, num_classes, bits, train_labels, device)``.
New methods (e.g. ``adsh``, ``dpsh``) register here the same way.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SchnError
from ..registry import Registry
from .base import HashingMethod
from .schn import SCHN, SCHNConfig

METHODS: Registry[type[HashingMethod]] = Registry("method")
METHODS.register("schn")(SCHN)


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


__all__ = ["METHODS", "HashingMethod", "SCHN", "SCHNConfig", "create_method", "list_methods",
           "method_config"]
