"""ITQ: PCA then an orthogonal rotation that minimises the quantisation loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..bounds import bounded
from ..codes import to_signed
from ..errors import SchnError
from ..space import Param
from .common import generator_from_global_rng
from .shallow import ShallowHashingMethod

__all__ = ["ITQ", "ITQConfig", "pca_directions", "random_rotation", "quantization_loss",
           "procrustes_rotation", "itq_rotation"]


@dataclass
class ITQConfig:
    """ITQ options."""

    iterations: int = bounded(50, 0, 100_000)  # Gong & Lazebnik 2011/2013: 50 alternations (loss has settled by then)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
            raise SchnError(f"method option iterations={self.iterations!r} must be an integer >= 0")


def pca_directions(centred: torch.Tensor, k: int) -> torch.Tensor:
    """``(d, k)`` orthonormal top-``k`` principal directions of ``(n, d)`` centred data.

    Eigen-decomposes the smaller of the ``d x d`` scatter and the ``n x n`` Gram matrix (features
    wider than the item count, e.g. raw pixels, stay cheap); columns by decreasing variance.
    """
    n, d = centred.shape
    if d <= n or k >= n:
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        return vectors.flip(1)[:, :k]
    _, vectors = torch.linalg.eigh(centred @ centred.T)
    directions = centred.T @ vectors.flip(1)[:, :k]  # X^T u_i is proportional to the i-th direction
    q, r = torch.linalg.qr(directions)  # normalises them (orthonormal even if rank-deficient)
    return q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q)


def random_rotation(k: int, generator: torch.Generator) -> torch.Tensor:
    """Haar-random ``k x k`` orthogonal matrix (QR of a Gaussian matrix, signs fixed by R)."""
    q, r = torch.linalg.qr(torch.randn(k, k, generator=generator, dtype=torch.float64))
    return q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q)


def quantization_loss(B: torch.Tensor, V: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``Q(B, R) = ||B - V R||_F^2`` (ITQ eq. 2)."""
    return ((B - V @ R) ** 2).sum()


def procrustes_rotation(V: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Orthogonal ``R`` minimising ``||B - V R||_F``: SVD ``B^T V = S Omega S_hat^T``, ``R = S_hat S^T``."""
    S, _, S_hat_T = torch.linalg.svd(B.T @ V)
    return S_hat_T.T @ S.T


def itq_rotation(V: torch.Tensor, R: torch.Tensor, iterations: int) -> tuple[torch.Tensor, list[float]]:
    """Alternate ``B = sign(V R)`` and the Procrustes update of ``R``.

    Returns the final ``R`` and the loss ``Q(sign(V R_0), R_0)`` then after each iteration's
    ``R`` update; each half step minimises ``Q`` over its block, so the list never increases.
    """
    losses = [float(quantization_loss(to_signed(V @ R), V, R))]
    for _ in range(iterations):
        B = to_signed(V @ R)
        R = procrustes_rotation(V, B)
        losses.append(float(quantization_loss(B, V, R)))
    return R, losses


class ITQ(ShallowHashingMethod):
    """Iterative Quantization.

    Reference: Y. Gong, S. Lazebnik, "Iterative Quantization: A Procrustean Approach to Learning
    Binary Codes", CVPR 2011 (and with A. Gordo, F. Perronnin, TPAMI 2013).

    Equations: centre the features, ``V = (X - mu) W`` with ``W`` the top-``c`` PCA directions;
    minimise ``Q(B, R) = ||B - V R||_F^2`` over codes ``B`` in {-1,1} and orthogonal ``R`` by
    alternating ``B = sign(V R)`` and ``R = S_hat S^T`` from the SVD ``B^T V = S Omega S_hat^T``
    (orthogonal Procrustes), from a random orthogonal ``R``. Codes: ``sign((x - mu) W R)``.

    Decisions where the paper is silent:
    - ``R_0`` is Haar-random (QR of a Gaussian matrix), drawn at each fit from a generator seeded
      by torch's global RNG (the engine's seed fixes it);
    - PCA, the rotation and the losses in float64, stored as float32; ``sign(0) = +1``;
    - ``bits`` may not exceed the feature dimension (PCA has no more directions): refused at
      construction;
    - multi-label data: labels are not used (unsupervised).
    """

    config_class = ITQConfig
    search_space = (Param("method.iterations", 1, 100, integer=True),)

    def build(self) -> None:
        if self.bits > self.feature_dim:
            raise SchnError(f"ITQ cannot learn {self.bits} bits from {self.feature_dim}-d features: PCA gives "
                            f"at most {self.feature_dim} directions; use bits <= {self.feature_dim}")
        self.register_buffer("mean", torch.zeros(self.feature_dim))
        self.register_buffer("pca", torch.eye(self.feature_dim, self.bits))
        self.register_buffer("rotation", torch.eye(self.bits))

    def fit(self, features, labels) -> dict[str, float]:
        X = features.double()
        mean = X.mean(0)
        W = pca_directions(X - mean, self.bits)
        V = (X - mean) @ W
        R0 = random_rotation(self.bits, generator_from_global_rng()).to(V.device)
        R, losses = itq_rotation(V, R0, self.config.iterations)
        self.mean.copy_(mean)
        self.pca.copy_(W)
        self.rotation.copy_(R)
        n = len(X)
        return {"quantization_loss_start": losses[0] / n, "quantization_loss": losses[-1] / n}

    def project(self, features):
        return (features - self.mean) @ self.pca @ self.rotation
