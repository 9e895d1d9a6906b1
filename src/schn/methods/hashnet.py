"""HashNet: tanh(beta z) codes trained by weighted maximum likelihood, beta raised by continuation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

from ..bounds import bounded
from ..errors import SchnError
from ..space import DEEP_SPACE, Param
from .common import DeepConfig, DeepHashingMethod, check_positive, similarity

__all__ = ["HashNet", "HashNetConfig", "continuation_beta", "hashnet_loss", "label_jaccard"]


@dataclass
class HashNetConfig(DeepConfig):
    """HashNet options (optimiser options from :class:`DeepConfig`). Continuation values: the
    authors' PyTorch code (network.py); alpha: its train.py (``sigmoid_param = 10 / hash_bit``)."""

    alpha: float | None = bounded(None, 0, 1e6, above=True)         # adaptive sigmoid parameter; None = 10 / bits (official code)
    init_scale: float = bounded(1.0, 0, 1e6, above=True)            # beta_0 (official code)
    gamma: float = bounded(0.005, 0, 1e6)               # beta = init_scale * (1 + gamma * t)^power (official code)
    power: float = bounded(0.5, 0, 100)                 # (official code)
    step_size: int = bounded(200, 1, 10**9)               # beta is raised every step_size training steps (official code)
    continuous_similarity: bool = True  # paper's c_ij: label Jaccard on similar pairs; False = official code

    def validate(self) -> None:
        super().validate()
        if self.alpha is not None:
            check_positive(self, "alpha", strict=True)
        check_positive(self, "init_scale", strict=True)
        check_positive(self, "gamma", "power")
        if isinstance(self.step_size, bool) or not isinstance(self.step_size, int) or self.step_size < 1:
            raise SchnError(f"method option step_size={self.step_size!r} must be a positive integer")
        if not isinstance(self.continuous_similarity, bool):
            raise SchnError(f"method option continuous_similarity={self.continuous_similarity!r} must be true or false")


def continuation_beta(step: int, init_scale: float = 1.0, gamma: float = 0.005, power: float = 0.5,
                      step_size: int = 200) -> float:
    """``beta`` after ``step`` training steps: ``init_scale (1 + gamma t)^power`` with ``t`` the
    step count rounded down to a multiple of ``step_size`` (the official code recomputes beta
    every ``step_size`` steps and keeps it in between)."""
    t = step_size * (int(step) // step_size)
    return init_scale * (1.0 + gamma * t) ** power


def label_jaccard(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """``c_ij = |y_i and y_j| / |y_i or y_j|`` of multi-hot labels (0 where both are empty)."""
    a, b = labels_a.float(), labels_b.float()
    shared = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1) - shared
    return torch.where(union > 0, shared / union.clamp_min(1e-12), torch.zeros_like(shared))


def hashnet_loss(H: torch.Tensor, S: torch.Tensor, alpha: float, C: torch.Tensor | None = None
                 ) -> dict[str, torch.Tensor]:
    """Weighted negative log-likelihood over the ordered in-batch pairs ``i != j`` of codes ``H``.

    ``L_ij = log(1 + exp(alpha h_i.h_j)) - s_ij alpha h_i.h_j`` (softplus: stable);
    ``w_ij = c_ij |S| / |S_1|`` on similar pairs, ``|S| / |S_0|`` on dissimilar ones
    (``c_ij = 1`` when ``C`` is None); the loss is ``sum_ij w_ij L_ij / |S|``, i.e. the
    c-weighted mean over similar pairs plus the mean over dissimilar pairs. An empty set adds 0.
    """
    m = H.shape[0]
    off_diagonal = ~torch.eye(m, dtype=torch.bool, device=H.device)
    similar = (S > 0) & off_diagonal
    dissimilar = (S <= 0) & off_diagonal
    ip = alpha * (H @ H.T)
    nll = nnf.softplus(ip) - S * ip
    c = torch.ones_like(nll) if C is None else C
    loss_similar = (nll * c * similar).sum() / similar.sum().clamp_min(1)
    loss_dissimilar = (nll * dissimilar).sum() / dissimilar.sum().clamp_min(1)
    return {"similar": loss_similar, "dissimilar": loss_dissimilar, "loss": loss_similar + loss_dissimilar}


class HashNet(DeepHashingMethod):
    """Cao, Long, Wang, Yu: "HashNet: Deep Learning to Hash by Continuation", ICCV 2017.

    Codes ``h = tanh(beta z)`` of the linear head output ``z``; ``beta`` grows by continuation,
    ``beta_t = init_scale (1 + gamma t)^power`` raised every ``step_size`` steps (official code:
    1, 0.005, 0.5, 200), towards ``sign``. Weighted maximum likelihood over the batch's pairs,
    ``sum_ij w_ij (log(1 + exp(alpha <h_i, h_j>)) - s_ij alpha <h_i, h_j>)`` with the
    class-balancing weights ``w_ij = c_ij |S|/|S_1|`` (similar) and ``|S|/|S_0|`` (dissimilar),
    alpha = 10 / bits. The binary code is ``sign(z)`` (beta never changes a sign); ``encode``
    returns ``tanh(beta z)`` at the current beta.

    Multi-label: ``s_ij = 1`` when items share at least one label; the paper's continuous
    similarity ``c_ij = |y_i n y_j| / |y_i u y_j|`` (label Jaccard; 1 for single-label similar
    pairs) weights the similar pairs (``continuous_similarity``; the official code has no c_ij,
    set it false for that).

    Decisions where the paper is silent:
    - pairs: every ordered in-batch pair ``i != j`` (the official code pairs two independent
      batches); self pairs carry no pairwise information and are left out;
    - ``c_ij`` multiplies the similar-pair weight only: on dissimilar pairs the Jaccard index is
      0 by definition, which would drop them from the loss and defeat the class balancing;
    - normalisation: ``sum w_ij L_ij / |S|`` (as the official weighted loss); with no similar
      (or no dissimilar) pair in a batch that half adds 0;
    - the step counter ``t`` is a buffer (``continuation_step``, saved with the model), counted
      as the official code: incremented before each training step's forward pass, so a loaded
      model encodes identically and continuation resumes where it stopped;
    - no quantisation term (the official code's ``q_weight`` is 0); ``log(1+exp)`` as softplus
      instead of the official linear approximation above 15.
    """

    config_class = HashNetConfig
    search_space = DEEP_SPACE + (
        Param("method.alpha", 1e-2, 2.0, log=True),
        Param("method.gamma", 1e-4, 1e-1, log=True),
        Param("method.step_size", 20, 2000, log=True, integer=True),
    )
    head_activation = "none"

    def build(self) -> None:
        self.register_buffer("continuation_step", torch.zeros((), dtype=torch.long))
        self.alpha = self.config.alpha if self.config.alpha is not None else 10.0 / self.bits

    def beta(self) -> float:
        c = self.config
        return continuation_beta(int(self.continuation_step), c.init_scale, c.gamma, c.power, c.step_size)

    def codes(self, Z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.beta() * Z)

    def training_step(self, inputs, labels, positions, record) -> dict[str, float]:
        self.continuation_step += 1
        terms = super().training_step(inputs, labels, positions, record)
        terms["beta"] = self.beta()
        return terms

    def compute_losses(self, U, labels, positions) -> dict:
        C = label_jaccard(labels, labels) if self.config.continuous_similarity else None
        return hashnet_loss(self.codes(U), similarity(labels, labels), self.alpha, C)

    @torch.no_grad()
    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.codes(super().encode(inputs))
