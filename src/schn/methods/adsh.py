"""ADSH: Asymmetric Deep Supervised Hashing (the method SCHN extends).

Reference: Qing-Yuan Jiang, Wu-Jun Li, "Asymmetric Deep Supervised Hashing", AAAI 2018.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..bounds import bounded
from ..space import ASYMMETRIC_SPACE, Param
from .common import (DeepConfig, DeepHashingMethod, bitwise_sweep, check_choice, check_positive,
                     generator_from_global_rng, similarity)

INIT_CODES_CHOICES = ("random", "zeros")
SIMILARITY_CHOICES = ("signed", "balanced")
_CHUNK = 8192  # database columns per block of the Omega x D similarity in the update


@dataclass
class ADSHConfig(DeepConfig):
    """ADSH options. T = 50 outer iterations, 3 epochs each and |Omega| = m = 2000 (paper,
    Sec. "Experiments", and method.md) are the engine's ``train.iterations``,
    ``train.epochs_per_iteration`` and ``train.num_samples``, not options here."""

    gamma: float = bounded(200.0, 0, 1e6)          # quantisation weight, paper and both authors' codes
    init_codes: str = "random"     # V at start: random +-1; "zeros" = the authors' codes
    # "balanced": S~ = +1 similar / -P/N not, as both authors' codes (which made the paper's
    # tables); "signed": S in {-1,+1} as the paper's text. Measured on digits (RESULTS.md),
    # "signed" collapses (mAP 0.29 at 16 bits against 0.96).
    similarity: str = "balanced"

    def validate(self) -> None:
        super().validate()
        check_positive(self, "gamma")
        check_choice(self, "init_codes", INIT_CODES_CHOICES)
        check_choice(self, "similarity", SIMILARITY_CHOICES)


# ----- plain functions: similarity, loss, objective, discrete update -----
def adsh_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor, r: float | None = None) -> torch.Tensor:
    """``S`` between two label sets: ``+1`` similar / ``-1`` not (paper); with a ratio ``r``
    (the authors' "balanced" form) ``+1`` similar / ``-r`` not."""
    s01 = similarity(labels_a, labels_b)
    return s01.mul_(2).sub_(1) if r is None else s01.mul_(1 + r).sub_(r)


def balance_ratio(labels_omega: torch.Tensor, labels_all: torch.Tensor) -> float:
    """``r = P / N`` over the ``Omega x D`` pairs (P similar, N dissimilar), counted block by
    block; 0 when there is no dissimilar pair (then every ``S`` is +1 anyway)."""
    # integer counts: a float32 sum over more than 2^24 pairs would round
    similar = sum(int((labels_omega @ labels_all[s:s + _CHUNK].T > 0).sum())
                  for s in range(0, len(labels_all), _CHUNK))
    dissimilar = len(labels_omega) * len(labels_all) - similar
    return similar / dissimilar if dissimilar > 0 else 0.0


def similarity_t_times(labels_omega, labels_all, U, r: float | None = None) -> torch.Tensor:
    """``S^T U`` (``n x c``) for ``S = adsh_similarity(labels_omega, labels_all, r)``, built
    block by block so only ``Omega x 8192`` similarities exist at once."""
    out = U.new_empty(len(labels_all), U.shape[1])
    for s in range(0, len(labels_all), _CHUNK):
        out[s:s + _CHUNK] = adsh_similarity(labels_omega, labels_all[s:s + _CHUNK], r).T @ U
    return out


def adsh_loss(U: torch.Tensor, V: torch.Tensor, S: torch.Tensor, V_batch: torch.Tensor,
              gamma: float) -> torch.Tensor:
    """Mini-batch loss ``[sum_ij (u_i . v_j - c S_ij)^2 + gamma sum_i ||v_i - u_i||^2] / (b n)``.

    ``U`` (b x c) the batch's network outputs, ``V`` (n x c) all database codes, ``S`` (b x n)
    batch-vs-database similarity, ``V_batch`` the batch's own rows of ``V``. Both terms share the
    divisor ``b n`` (the authors' PyTorch code), so ``gamma`` keeps the paper's meaning.
    """
    c = U.shape[1]
    pair = ((U @ V.T - c * S) ** 2).sum()
    quant = ((V_batch - U) ** 2).sum()
    return (pair + gamma * quant) / (U.shape[0] * V.shape[0])


def adsh_objective(V, U, omega, S, gamma: float) -> torch.Tensor:
    """The paper's objective in ``V``: ``||U V^T - c S||^2 + gamma ||V_Omega - U||^2`` with
    ``U`` (m x c) the outputs of ``Omega``, ``S`` (m x n). Test helper: builds the whole ``S``."""
    c = U.shape[1]
    return ((U @ V.T - c * S) ** 2).sum() + gamma * ((V[omega] - U) ** 2).sum()


def adsh_update(V: torch.Tensor, U: torch.Tensor, omega: torch.Tensor, S_t_U: torch.Tensor,
                gamma: float) -> torch.Tensor:
    """One bit-by-bit sweep over all of ``V`` (n x c); returns the new ``V`` (input untouched).

    For ``V`` in {-1,+1} the objective is, up to a constant, ``||V U^T||^2 + tr(V^T Q)`` with
    ``Q = -2c S^T U - 2 gamma U_bar`` (``U_bar``: ``U`` at the rows of ``Omega``, 0 elsewhere).
    As a function of column ``k`` it is ``V_k . (2 V_!k U_!k^T U_k + Q_k)`` + const, so
    ``V_k = -sign(2 V_!k U_!k^T U_k + Q_k) = sign(P_k - V_!k U_!k^T U_k)`` with ``P = -Q/2``,
    each column using those already updated in this sweep; ``sign(0) = +1``.
    ``S_t_U`` is ``S^T U`` (n x c, see :func:`similarity_t_times`).
    """
    c = V.shape[1]
    P = c * S_t_U
    P[omega] += gamma * U
    return bitwise_sweep(V, U, P)


class ADSH(DeepHashingMethod):
    """ADSH: Q.-Y. Jiang, W.-J. Li, "Asymmetric Deep Supervised Hashing", AAAI 2018.

    Asymmetric: queries are encoded by the network ``u = tanh(F(x))``; the database (the
    training pool) has free codes ``V`` in {-1,+1}^(n x c), learned directly. Objective over the
    sampled set ``Omega`` and the whole database ``Gamma``:
        ``min sum_{i in Omega} sum_{j in Gamma} (u_i . v_j - c S_ij)^2 + gamma sum_{i in Omega} ||v_i - u_i||^2``
    Network step: :func:`adsh_loss` per mini-batch of ``Omega`` against all of ``V`` (fixed).
    ``V`` step (after the epochs of an outer iteration): :func:`adsh_update`, one closed-form
    bit-by-bit sweep over the whole database, with ``U`` recorded in the iteration's last epoch.

    Multi-label: ``S_ij = +1`` when items share at least one label, else ``-1``.

    Decisions where the paper is silent (or its codes differ from it):
    - ``S``: by default the authors' codes' balanced ``S = S01 (1 + r) - r``, ``r = P/N`` over the
      ``Omega x D`` pairs of the iteration (used both in the loss and in the update);
      ``similarity="signed"`` is the paper's text, ``S`` in {-1,+1}, which cannot be met by
      more than a few mutually dissimilar classes and collapses in practice (RESULTS.md);
    - the loss is divided by ``b n`` (batch size times database size), as the authors' PyTorch
      code, so its scale does not grow with the database;
    - ``V`` starts random +-1 (own generator seeded from torch's global RNG, as SCHN's ``B``);
      ``init_codes="zeros"`` is the authors' codes;
    - the recorded ``U`` of an item is the training forward pass (train mode) of the last epoch,
      before that step's update; ``sign(0) = +1`` in the update;
    - Adam with the project's shared defaults (:class:`DeepConfig`) instead of the paper's SGD,
      so methods compared on one backbone differ in loss and update only.
    """

    config_class = ADSHConfig
    search_space = ASYMMETRIC_SPACE + (Param("method.gamma", 1.0, 1e3, log=True),)
    family = "asymmetric"
    head_activation = "tanh"

    def build(self) -> None:
        n = self.train_labels.shape[0]
        if self.config.init_codes == "random":
            gen = generator_from_global_rng()
            V = torch.randint(0, 2, (n, self.bits), generator=gen).float() * 2 - 1
        else:
            V = torch.zeros(n, self.bits)
        self.register_buffer("V", V)
        self._ratio: float | None = None
        self._last = None
        self._recorded = self._rec = None

    def _clear_records(self) -> None:
        self._recorded = torch.zeros(self.V.shape[0], dtype=torch.bool, device=self.V.device)
        self._rec = torch.zeros_like(self.V)

    def _r(self, labels_omega: torch.Tensor) -> float | None:
        if self.config.similarity == "signed":
            return None
        if self._ratio is None:  # no begin_iteration yet: the batch's own pairs with D
            return balance_ratio(labels_omega, self.train_labels)
        return self._ratio

    def begin_iteration(self, iteration, sample) -> None:
        self._clear_records()
        if self.config.similarity == "balanced":
            omega = torch.as_tensor(sample, device=self.V.device).long()
            self._ratio = balance_ratio(self.train_labels[omega], self.train_labels)

    def compute_losses(self, U, labels, positions) -> dict:
        self._last = (positions, U.detach())
        S = adsh_similarity(labels, self.train_labels, self._r(labels))
        return {"loss": adsh_loss(U, self.V, S, self.V[positions], self.config.gamma)}

    def training_step(self, inputs, labels, positions, record) -> dict[str, float]:
        terms = super().training_step(inputs, labels, positions, record)
        if record:
            if self._recorded is None:
                self._clear_records()
            pos, U = self._last
            self._recorded[pos] = True
            self._rec[pos] = U
        return terms

    def fit_codes_step(self, inputs, labels, positions) -> dict[str, float]:
        # the network step of training with V fixed is exactly a fit to the codes
        return self.training_step(inputs, labels, positions, record=False)

    @torch.no_grad()
    def end_iteration(self) -> dict[str, float]:
        if self._recorded is None or not self._recorded.any():
            return {}
        omega = self._recorded.nonzero().squeeze(1)
        U = self._rec[omega]
        labels_omega = self.train_labels[omega]
        S_t_U = similarity_t_times(labels_omega, self.train_labels, U, self._r(labels_omega))
        new = adsh_update(self.V, U, omega, S_t_U, self.config.gamma)
        changed = float((new != self.V).float().mean())
        self.V.copy_(new)
        self._clear_records()
        return {"bits_changed": changed, "codes_updated": float(len(new))}

    def database_codes(self) -> torch.Tensor:
        return self.V.detach().clone()

    @torch.no_grad()
    def set_database_codes(self, positions, codes) -> None:
        positions = torch.as_tensor(positions, device=self.V.device).long()
        self.V[positions] = torch.as_tensor(codes).to(self.V)
