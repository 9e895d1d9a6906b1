"""Base of the shallow hashing methods (LSH, ITQ, SDH): hash functions fitted in closed form or by
alternating updates on fixed features, never by back-propagation.

The engine drives them like every method: ``training_step`` only *records* the features (and
labels) of the batches of an outer iteration's last epoch, and ``end_iteration`` fits the method
on every item recorded in that iteration, from scratch. To fit on the whole training pool, run one
outer iteration of one epoch with ``train.num_samples`` >= the pool size.

The backbone only turns inputs into features (cached frozen-backbone features through
``nn.Identity``, or raw pixels); it runs without gradient, in eval mode, and may not have
trainable parameters. Fitted state lives in buffers whose shapes are fixed at construction, so a
fresh instance loads a saved state dict; encoding before any fit is an error.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..errors import SchnError
from .base import HashingMethod
from .common import check_method_inputs


class ShallowHashingMethod(HashingMethod):
    """Symmetric shallow method: codes of queries and database items alike are ``sign(encode(x))``.

    Subclasses set ``config_class``, create their buffers in :meth:`build`, fit them in
    :meth:`fit` (returning fit statistics) and map features to real-valued codes in :meth:`project`.
    """

    family = "shallow"

    def __init__(self, config, backbone: nn.Module, feature_dim: int, num_classes: int, bits: int,
                 train_labels, device: torch.device | str = "cpu"):
        super().__init__()
        config.validate()
        check_method_inputs(train_labels, num_classes, bits)
        if any(p.requires_grad for p in backbone.parameters()):
            raise SchnError(
                f"{type(self).__name__} is a shallow method and cannot train a backbone: use frozen "
                f"features (model.frozen=true) or raw pixels (model.backbone=pixels)"
            )
        self.config = config
        self.bits = int(bits)
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        self.backbone = backbone
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.build()
        self.to(self.device)
        self._clear_records()

    # ----- subclass hooks -----
    def build(self) -> None:
        """Register the method's buffers (fixed shapes, so a fresh instance loads a state dict)."""

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Fit the buffers on ``(n, feature_dim)`` features and ``(n, K)`` labels; fit statistics."""
        raise NotImplementedError

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Real-valued codes ``(n, bits)`` of features; the binary code is their sign."""
        raise NotImplementedError

    # ----- features -----
    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # fixed feature extractor: dropout/batch-norm never in training mode
        return self

    @torch.no_grad()
    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        self.backbone.eval()
        features = self.backbone(inputs.to(self.device)).flatten(1)
        if features.shape[1] != self.feature_dim:
            raise SchnError(f"the backbone gives {features.shape[1]}-d features but {type(self).__name__} "
                            f"was built for {self.feature_dim}-d ones")
        return features

    # ----- records of the last epoch -----
    def _clear_records(self) -> None:
        self._records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def begin_iteration(self, iteration, sample) -> None:
        self._clear_records()

    def training_step(self, inputs, labels, positions, record) -> dict[str, float]:
        if not record:  # nothing to learn from a batch before the last epoch
            return {"recorded_items": 0.0}
        positions = torch.as_tensor(positions, device=self.device).long().reshape(-1)
        # under torchrun every process records the whole global batch (one process: unchanged)
        features, labels, positions = (distributed.gather_rows(t) for t in
                                       (self.features(inputs), labels.to(self.device).float(), positions))
        self._records.append((features, labels, positions.cpu()))
        return {"recorded_items": float(len(positions))}

    def _recorded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Recorded features and labels ordered by position; a position seen twice keeps the last."""
        features = torch.cat([r[0] for r in self._records])
        labels = torch.cat([r[1] for r in self._records])
        positions = torch.cat([r[2] for r in self._records]).numpy()
        last = {p: i for i, p in enumerate(positions.tolist())}
        order = torch.as_tensor(np.array([last[p] for p in sorted(last)]), device=features.device)
        return features[order], labels[order]

    @torch.no_grad()
    def end_iteration(self) -> dict[str, float]:
        if not self._records:
            return {}
        features, labels = self._recorded()
        self._clear_records()
        start = time.perf_counter()
        stats = self.fit(features, labels)
        self.fitted.fill_(True)
        return {"fitted_items": float(len(features)), **stats,
                "fit_seconds": round(time.perf_counter() - start, 4)}

    # ----- codes -----
    @torch.no_grad()
    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        self.eval()
        if not bool(self.fitted):
            raise SchnError(f"{type(self).__name__} has not been fitted yet: train it (end_iteration fits "
                            f"it on the recorded items) or load a fitted state before encoding")
        return self.project(self.features(inputs)).float()
