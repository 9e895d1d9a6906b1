"""DSH: contrastive loss on real-valued codes with an L1 pull of every entry towards +-1."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..bounds import bounded
from ..space import DEEP_SPACE, Param
from .common import DeepConfig, DeepHashingMethod, check_positive, similarity

__all__ = ["DSH", "DSHConfig", "dsh_loss"]


@dataclass
class DSHConfig(DeepConfig):
    """DSH options (optimiser options from :class:`DeepConfig`)."""

    margin: float | None = bounded(None, 0, 1e6)  # m; None = 2k (paper; the authors' CIFAR-10 prototxt: 24 at 12 bits)
    alpha: float = bounded(0.01, 0, 1e6)         # regulariser weight (paper; authors' prototxt "tradeoff: 0.01")

    def validate(self) -> None:
        super().validate()
        if self.margin is not None:
            check_positive(self, "margin", strict=True)
        check_positive(self, "alpha")


def dsh_loss(U: torch.Tensor, S: torch.Tensor, margin: float, alpha: float) -> dict[str, torch.Tensor]:
    """Mean over the unordered in-batch pairs ``i < j`` of the DSH pair loss

    ``1/2 (1 - y) ||b_i - b_j||^2 + 1/2 y max(m - ||b_i - b_j||^2, 0)
      + alpha (|| |b_i| - 1 ||_1 + || |b_j| - 1 ||_1)``, ``y = 1 - s_ij`` (1 = dissimilar).

    Each item is in ``n - 1`` of the ``n (n - 1) / 2`` pairs, so the regulariser's mean over
    pairs is ``2 alpha mean_i || |b_i| - 1 ||_1`` (kept in that closed form: it is defined for a
    single item too, where the pair term is 0).
    """
    n = U.shape[0]
    sq = U.pow(2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * U @ U.T).clamp_min(0)
    y = 1.0 - S
    per_pair = 0.5 * (1 - y) * dist + 0.5 * y * (margin - dist).clamp_min(0)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=U.device), diagonal=1)
    pair = (per_pair * upper).sum() / upper.sum().clamp_min(1)
    regulariser = (U.abs() - 1).abs().sum(1).mean()
    return {"pair": pair, "regulariser": regulariser, "loss": pair + 2 * alpha * regulariser}


class DSH(DeepHashingMethod):
    """Liu, Wang, Shan, Chen: "Deep Supervised Hashing for Fast Image Retrieval", CVPR 2016.

    Linear head output ``b`` (no activation; the binary code is ``sign(b)``); over the batch's
    pairs ``L = 1/2 (1-y) ||b_1-b_2||^2 + 1/2 y max(m - ||b_1-b_2||^2, 0)
    + alpha (|| |b_1|-1 ||_1 + || |b_2|-1 ||_1)``, ``y = 1`` for a dissimilar pair, margin
    ``m = 2k`` (k = bits), ``alpha = 0.01`` (paper).

    Multi-label: a pair is similar (``y = 0``) when the items share at least one label (as the
    authors' multi-label NUS-WIDE code).

    Decisions where the paper is silent:
    - pairs: every unordered in-batch pair ``i < j`` (the paper's online pair generation from
      each mini-batch; the authors' loss layer loops over ``i < j``), no self pairs;
    - normalisation: the mean over those pairs of the whole per-pair loss, so the regulariser
      is ``2 alpha mean_i || |b_i|-1 ||_1``; the pair part equals the authors' loss layer, whose
      regulariser is ``alpha mean_i`` (half of the paper's per-pair sum) -- set ``alpha`` to
      0.005 to reproduce that.
    """

    config_class = DSHConfig
    search_space = DEEP_SPACE + (
        Param("method.margin", 0.5, 4.0, log=True, per_bit=True),
        Param("method.alpha", 1e-4, 1.0, log=True),
    )
    head_activation = "none"

    def build(self) -> None:
        self.margin = self.config.margin if self.config.margin is not None else 2.0 * self.bits

    def compute_losses(self, U, labels, positions) -> dict:
        return dsh_loss(U, similarity(labels, labels), self.margin, self.config.alpha)
