"""DPSH: deep pairwise-supervised hashing with a memory of the whole training pool."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

from ..bounds import bounded
from ..codes import to_signed
from ..space import DEEP_SPACE, Param
from .common import DeepConfig, DeepHashingMethod, check_positive, similarity

__all__ = ["DPSH", "DPSHConfig", "dpsh_loss"]


@dataclass
class DPSHConfig(DeepConfig):
    """DPSH options (optimiser options from :class:`DeepConfig`)."""

    eta: float = bounded(10.0, 0, 1e6)  # quantisation weight; the paper's CIFAR-10 value (also the authors' PyTorch demo)

    def validate(self) -> None:
        super().validate()
        check_positive(self, "eta")


def dpsh_loss(U: torch.Tensor, V: torch.Tensor, S: torch.Tensor, eta: float) -> dict[str, torch.Tensor]:
    """DPSH objective of a batch ``U`` (m x c) paired with ``V`` (n x c), ``S`` (m x n) in {0, 1}.

    ``Theta_ij = u_i . v_j / 2``; pair term ``mean_ij [log(1 + e^Theta_ij) - s_ij Theta_ij]``
    (softplus: stable for any Theta); quantisation ``mean_i ||b_i - u_i||^2`` with
    ``b = sign(u)`` (sign(0) = +1). The total is the paper's sum divided by its number of pairs
    ``m n``: ``pair + eta * quantization / n``, so the paper's eta keeps its meaning.
    """
    theta = U @ V.T / 2
    pair = (nnf.softplus(theta) - S * theta).mean()
    quantization = (U - to_signed(U.detach())).pow(2).sum(1).mean()
    return {"pair": pair, "quantization": quantization, "loss": pair + eta * quantization / V.shape[0]}


class DPSH(DeepHashingMethod):
    """Li, Wang, Kang: "Feature Learning based Deep Supervised Hashing with Pairwise Labels", IJCAI 2016.

    Linear head output ``u`` (no activation); ``b = sign(u)``; ``Theta_ij = u_i^T u_j / 2``;
    ``L = -sum_{s_ij} (s_ij Theta_ij - log(1 + e^Theta_ij)) + eta sum_i ||b_i - u_i||^2``.
    Each batch item is paired with every training item through a memory ``U`` of the latest
    outputs of the training pool (as the paper's algorithm and the authors' code).

    Multi-label: ``s_ij = 1`` when items i and j share at least one label.

    Decisions where the paper is silent:
    - normalisation: the batch objective is divided by its number of pairs (m batch items x n'
      paired rows): the pair term is a mean over pairs and the quantisation term becomes
      ``eta / n' * mean_i ||b_i - u_i||^2`` -- the paper's balance between the terms, so its
      eta carries over (the authors' code divides both terms by n_train * m likewise);
    - the memory rows (a buffer ``n_train x c``, saved with the model) are detached; the batch
      writes its fresh outputs into its rows before pairing, and is then paired with the rows of
      every position seen so far (itself included, self pairs too, as the paper's sum over all
      i, j); rows never seen yet are left out (the authors' code pairs with zero rows there,
      which adds a constant and no gradient);
    - the gradient reaches the network through the batch side only (the memory is a constant),
      as in the authors' code; b is the closed-form ``sign(u)`` at each step.
    """

    config_class = DPSHConfig
    search_space = DEEP_SPACE + (Param("method.eta", 1e-2, 1e3, log=True),)
    head_activation = "none"

    def build(self) -> None:
        n_train = self.train_labels.shape[0]
        self.register_buffer("memory", torch.zeros(n_train, self.bits))
        self.register_buffer("seen", torch.zeros(n_train, dtype=torch.bool))

    @torch.no_grad()
    def remember(self, U: torch.Tensor, positions: torch.Tensor) -> None:
        """Write the batch's outputs into its memory rows and mark them seen."""
        self.memory[positions] = U.detach().to(self.memory.dtype)
        self.seen[positions] = True

    def compute_losses(self, U, labels, positions) -> dict:
        self.remember(U, positions)
        rows = self.seen.nonzero().squeeze(1)
        S = similarity(labels, self.train_labels[rows])
        return dpsh_loss(U, self.memory[rows], S, self.config.eta)
