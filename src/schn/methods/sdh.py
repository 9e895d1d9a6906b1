"""SDH: supervised discrete hashing with an RBF-kernel hash function and discrete code updates."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..bounds import bounded
from ..errors import SchnError
from ..space import Param
from .common import bitwise_sweep, generator_from_global_rng
from .shallow import ShallowHashingMethod

__all__ = ["SDH", "SDHConfig", "squared_distances", "rbf_features", "sdh_objective", "f_step", "g_step",
           "dcc_b_step", "sdh_alternate"]


@dataclass
class SDHConfig:
    """SDH options. Defaults: Shen et al., CVPR 2015, Sec. 4 unless marked."""

    num_anchors: int = bounded(1000, 1, 10**6)     # m RBF anchors drawn from the training items (capped at their count)
    lam: float = bounded(1.0, 0, 1e6)            # lambda, weight of ||W||^2 (G-step ridge)
    nu: float = bounded(1e-5, 0, 1e6)            # nu, weight of the fitting term ||B - F(X)||^2
    iterations: int = bounded(5, 1, 100_000)         # t, outer F/G/B alternations
    dcc_passes: int = bounded(10, 1, 100_000)        # DCC sweeps over the bits per B-step (authors' code; paper gives none)
    f_ridge: float = bounded(1e-2, 0, 1e6)       # ridge of the F-step regression (authors' code; paper: plain LS)
    sigma: Optional[float] = bounded(None, 0, 1e9, above=True)  # RBF width; None = mean distance from training items to anchors

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        for name in ("num_anchors", "iterations", "dcc_passes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SchnError(f"method option {name}={value!r} must be a positive integer")
        for name in ("lam", "nu", "f_ridge"):
            if not getattr(self, name) >= 0:
                raise SchnError(f"method option {name}={getattr(self, name)!r} must be >= 0")
        if self.sigma is not None and not self.sigma > 0:
            raise SchnError(f"method option sigma={self.sigma!r} must be > 0 (or null for the mean distance)")


def squared_distances(X: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``||x_i - a_j||^2`` for all pairs, ``(n, m)``."""
    return ((X * X).sum(1, keepdim=True) + (A * A).sum(1) - 2 * X @ A.T).clamp_min(0)


def rbf_features(X: torch.Tensor, anchors: torch.Tensor, sigma: float) -> torch.Tensor:
    """``phi(x)_j = exp(-||x - a_j||^2 / (2 sigma^2))``, ``(n, m)``."""
    return torch.exp(-squared_distances(X, anchors) / (2 * sigma**2))


def sdh_objective(B, W, P, bias, phi, Y, lam: float, nu: float, f_ridge: float = 0.0) -> torch.Tensor:
    """``||Y - B W||^2 + lam ||W||^2 + nu (||B - F||^2 + f_ridge ||P||^2)``, ``F = phi P + 1 bias^T``
    (rows are items).

    The paper's objective (its eq. 4) plus the F-step's ridge term, so every step of
    :func:`sdh_alternate` minimises it exactly over its block.
    """
    F = phi @ P + bias
    return (((Y - B @ W) ** 2).sum() + lam * (W**2).sum()
            + nu * (((B - F) ** 2).sum() + f_ridge * (P**2).sum()))


def _ridge(X: torch.Tensor, T: torch.Tensor, reg: float) -> torch.Tensor:
    """``argmin_M ||T - X M||^2 + reg ||M||^2 = (X^T X + reg I)^{-1} X^T T``."""
    gram = X.T @ X + reg * torch.eye(X.shape[1], dtype=X.dtype, device=X.device)
    return torch.linalg.solve(gram, X.T @ T)


def f_step(phi: torch.Tensor, B: torch.Tensor, f_ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """F-step: the hash function regressing the codes on *centred* ``phi``, with an unpenalised
    bias: ``bias = mean(B)``, ``P = (phi^T phi + f_ridge I)^{-1} phi^T (B - 1 bias^T)``."""
    bias = B.mean(0)
    return _ridge(phi, B - bias, f_ridge), bias


def g_step(B: torch.Tensor, Y: torch.Tensor, lam: float) -> torch.Tensor:
    """G-step: ``W = (B^T B + lam I)^{-1} B^T Y`` (linear classifier of the labels from the codes)."""
    return _ridge(B, Y, lam)


def dcc_b_step(B: torch.Tensor, W: torch.Tensor, Q: torch.Tensor, passes: int) -> tuple[torch.Tensor, int]:
    """B-step by discrete cyclic coordinate descent (the paper's eq. 16, rows as items): sweep the
    bits in order, ``b_l = sign(q_l - B_{-l} W_{-l} w_l)``, up to ``passes`` sweeps, stopping
    after a sweep that changes no bit. Returns the codes and the sweeps run.

    ``||B W||^2 - 2 tr(B^T Q)`` is the asymmetric methods' code objective with ``U = W^T``, so
    each sweep is :func:`~schn.methods.common.bitwise_sweep`; ``sign(0) = +1``.
    """
    for sweep in range(1, passes + 1):
        new = bitwise_sweep(B, W.T, Q)
        if torch.equal(new, B):
            break
        B = new
    return B.clone(), sweep


def sdh_alternate(phi, Y, B, iterations: int, lam: float, nu: float, f_ridge: float, dcc_passes: int):
    """Algorithm 1 of the paper from initial codes ``B``: ``iterations`` x (F-step, G-step,
    B-step with ``Q = Y W^T + nu F``), then a last F-step so the hash function fits the final
    codes. ``phi`` must be centred. Returns ``(P, bias, B, W, objectives)``, the objective after
    every step (never increasing)."""
    objectives = []
    W = torch.zeros(B.shape[1], Y.shape[1], dtype=B.dtype, device=B.device)

    def objective():
        objectives.append(float(sdh_objective(B, W, P, bias, phi, Y, lam, nu, f_ridge)))

    for _ in range(iterations):
        P, bias = f_step(phi, B, f_ridge)
        objective()
        W = g_step(B, Y, lam)
        objective()
        B, _ = dcc_b_step(B, W, Y @ W.T + nu * (phi @ P + bias), dcc_passes)
        objective()
    P, bias = f_step(phi, B, f_ridge)
    objective()
    return P, bias, B, W, objectives


class SDH(ShallowHashingMethod):
    """Supervised Discrete Hashing.

    Reference: F. Shen, C. Shen, W. Liu, H. T. Shen, "Supervised Discrete Hashing", CVPR 2015.

    Equations (rows are items): ``min_{B,W,P} ||Y - B W||^2 + lam ||W||^2 + nu ||B - F(X)||^2``
    with ``B`` in {-1,1}^{n x c}, ``F(x) = P^T phi(x)``, ``phi(x)_j = exp(-||x - a_j||^2 / (2 sigma^2))``
    on ``m`` anchors. Alternation (Algorithm 1), from random codes: F-step
    ``P = (phi^T phi + delta I)^{-1} phi^T B``; G-step ``W = (B^T B + lam I)^{-1} B^T Y``; B-step
    ``min_B ||B W||^2 - 2 tr(B^T Q)``, ``Q = Y W^T + nu F(X)``, by discrete cyclic coordinate
    descent, one bit (column) at a time: ``b_l = sign(q_l - B_{-l} W_{-l} w_l)``.
    Codes of any item, query or database: ``sign(F(x))`` (symmetric).

    Multi-label data: ``Y`` is the multi-hot label matrix, so the codes are those from which a
    linear map regresses all of an item's labels at once (an unlabelled item regresses zero).

    Decisions where the paper is silent:
    - ``phi`` is centred by its training mean and ``F(x) = P^T (phi(x) - mean) + bias`` has an
      unpenalised bias (the mean code), so a bit that is +1 for most items is still fitted
      (the authors' code appends a constant feature to ``phi``, whose weight the ridge shrinks);
    - ``sigma`` = mean Euclidean distance from the fitted items to the anchors, used in the
      ``2 sigma^2`` form (the ``sigma`` option overrides it);
    - anchors are drawn without replacement from the items fitted, capped at their count; buffers
      are sized ``num_anchors x feature_dim`` and the rows beyond the count used stay zero;
    - the F-step is a ridge regression (``f_ridge``, authors' code) for a well-posed solve, and
      the objective monitored includes ``nu * f_ridge ||P||^2`` so every step is an exact block
      minimisation; a last F-step after the loop fits the hash function to the final codes;
    - the B-step starts from the current codes, stops early after a sweep that changes no bit;
      initial codes are random +-1 from a generator seeded by torch's global RNG (as the anchors);
    - fitting in float64, stored as float32; ``sign(0) = +1``.
    """

    config_class = SDHConfig
    search_space = (
        Param("method.num_anchors", 100, 3000, log=True, integer=True),
        Param("method.lam", 1e-3, 1e2, log=True),
        Param("method.nu", 1e-7, 1e-1, log=True),
    )

    def build(self) -> None:
        m = self.config.num_anchors
        self.register_buffer("anchors", torch.zeros(m, self.feature_dim))
        self.register_buffer("anchors_used", torch.zeros((), dtype=torch.long))
        self.register_buffer("sigma", torch.ones(()))
        self.register_buffer("phi_mean", torch.zeros(m))
        self.register_buffer("projection", torch.zeros(m, self.bits))
        self.register_buffer("bias", torch.zeros(self.bits))

    def fit(self, features, labels) -> dict[str, float]:
        cfg = self.config
        X, Y = features.double(), labels.double()
        n, m = len(X), min(cfg.num_anchors, len(X))
        gen = generator_from_global_rng()
        anchors = X[torch.randperm(n, generator=gen)[:m].to(X.device)]
        B0 = (torch.randint(0, 2, (n, self.bits), generator=gen) * 2 - 1).to(X)
        sigma = cfg.sigma if cfg.sigma is not None else float(squared_distances(X, anchors).sqrt().mean())
        sigma = sigma if sigma > 0 else 1.0  # all items identical: any width gives the same phi
        phi = rbf_features(X, anchors, sigma)
        phi_mean = phi.mean(0)
        P, bias, _, _, objectives = sdh_alternate(phi - phi_mean, Y, B0, cfg.iterations, cfg.lam,
                                                  cfg.nu, cfg.f_ridge, cfg.dcc_passes)
        for buffer in (self.anchors, self.phi_mean, self.projection):
            buffer.zero_()
        self.anchors[:m] = anchors
        self.phi_mean[:m] = phi_mean
        self.projection[:m] = P
        self.bias.copy_(bias)
        self.anchors_used.fill_(m)
        self.sigma.fill_(sigma)
        # start: the random codes' objective once W is fitted (before that, W = 0 is arbitrary)
        return {"anchors": float(m), "sigma": sigma, "objective_start": objectives[1],
                "objective": objectives[-1]}

    def project(self, features):
        m = int(self.anchors_used)
        phi = rbf_features(features, self.anchors[:m], float(self.sigma))
        return (phi - self.phi_mean[:m]) @ self.projection[:m] + self.bias
