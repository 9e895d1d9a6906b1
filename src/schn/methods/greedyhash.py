"""GreedyHash: sign in the forward pass, straight-through gradient in the backward pass.

Reference: Shupeng Su, Chao Zhang, Kai Han, Yonghong Tian, "Greedy Hash: Towards Fast
Optimization for Accurate Hash Coding in CNN", NeurIPS 2018.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import nn

from ..bounds import bounded
from ..codes import to_signed
from ..space import DEEP_SPACE, Param
from .common import DeepConfig, DeepHashingMethod, check_positive


@dataclass
class GreedyHashConfig(DeepConfig):
    """GreedyHash options."""

    alpha: float = bounded(0.1, 0, 1e6)  # penalty weight: authors' CIFAR-10 code (cifar1.py: loss1 + 0.1 * loss2)

    def validate(self) -> None:
        super().validate()
        check_positive(self, "alpha")


class _SignStraightThrough(torch.autograd.Function):
    """Forward ``b = sign(z)`` (``sign(0) = +1``); backward ``dL/dz = dL/db``."""

    @staticmethod
    def forward(ctx, z):
        return to_signed(z)

    @staticmethod
    def backward(ctx, grad_b):
        return grad_b


def sign_straight_through(z: torch.Tensor) -> torch.Tensor:
    return _SignStraightThrough.apply(z)


def greedyhash_loss(logits: torch.Tensor, labels: torch.Tensor, Z: torch.Tensor, alpha: float,
                    multi_label: bool) -> dict[str, torch.Tensor]:
    """``CE(logits, y) + alpha mean(| |z| - 1 |^3)``; ``logits = W b`` with ``b = sign(z)``.

    Single-label: softmax cross-entropy against each row's one class. ``multi_label``: the
    mean over items and classes of sigmoid binary cross-entropy (an extension, see GreedyHash).
    """
    if multi_label:
        task = nnf.binary_cross_entropy_with_logits(logits, labels.float())
    else:
        task = nnf.cross_entropy(logits, labels.argmax(1))
    penalty = ((Z.abs() - 1).abs() ** 3).mean()
    return {"loss_class": task, "loss_penalty": penalty, "loss": task + alpha * penalty}


class GreedyHash(DeepHashingMethod):
    """GreedyHash: S. Su, C. Zhang, K. Han, Y. Tian, "Greedy Hash: Towards Fast Optimization
    for Accurate Hash Coding in CNN", NeurIPS 2018.

    Symmetric: the head's linear output ``z`` (no tanh) is binarised in the forward pass,
    ``b = sign(z)``, and the gradient of ``sign`` is taken as the identity (``dL/dz = dL/db``,
    the paper's greedy step). A linear classifier ``W`` (no bias, as the authors' code) on ``b``
    is trained with the head by
        ``L = CE(W b, y) + alpha ||z - sign(z)||_3^3 / (b c)``,  i.e. ``alpha mean(| |z| - 1 |^3)``
    (:func:`greedyhash_loss`; p = 3 as the paper, the mean as the authors' code).

    Multi-label: the paper is single-label. When any training label row is not exactly one-hot
    (several classes, or none), the softmax cross-entropy is replaced by the mean sigmoid binary
    cross-entropy per class: an extension the paper does not define.

    Decisions where the paper is silent: ``sign(0) = +1``; the single/multi-label choice is
    made once, from the training labels; Adam with the project's shared defaults
    (:class:`DeepConfig`) instead of the authors' SGD.
    """

    config_class = GreedyHashConfig
    search_space = DEEP_SPACE + (Param("method.alpha", 1e-3, 10.0, log=True),)
    head_activation = "none"

    def build(self) -> None:
        self.classifier = nn.Linear(self.bits, self.num_classes, bias=False)
        self.multi_label = bool((self.train_labels.sum(1) != 1).any())

    def compute_losses(self, U, labels, positions) -> dict:
        logits = self.classifier(sign_straight_through(U))
        return greedyhash_loss(logits, labels, U, self.config.alpha, self.multi_label)
