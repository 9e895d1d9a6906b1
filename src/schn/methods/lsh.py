"""LSH: sign random projections (the data-independent baseline)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SchnError
from .common import generator_from_global_rng
from .shallow import ShallowHashingMethod

__all__ = ["LSH", "LSHConfig", "random_projection", "lsh_project"]


@dataclass
class LSHConfig:
    """LSH options. No hyper-parameter in the papers; the one switch is the centring."""

    centre: bool = True  # subtract the training mean (hashing-benchmark practice); False = Charikar as is

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.centre, bool):
            raise SchnError(f"method option centre={self.centre!r} must be true or false")


def random_projection(feature_dim: int, bits: int, generator: torch.Generator) -> torch.Tensor:
    """``(feature_dim, bits)`` i.i.d. standard Gaussian directions (rotation invariant, so each
    bit is a uniformly random hyperplane through the origin)."""
    return torch.randn(feature_dim, bits, generator=generator)


def lsh_project(features: torch.Tensor, mean: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """``(x - mean) W``: the real values whose signs are the LSH bits."""
    return (features - mean) @ projection


class LSH(ShallowHashingMethod):
    """Sign random projections.

    Reference: M. Charikar, "Similarity estimation techniques from rounding algorithms", STOC
    2002 (random-hyperplane hashing, ``h_w(x) = sign(w^T x)``, ``w ~ N(0, I)``); Gaussian
    (2-stable) projections as in M. Datar, N. Immorlica, P. Indyk, V. Mirrokni, "Locality-sensitive
    hashing scheme based on p-stable distributions", SoCG 2004.

    Equations: ``b(x) = sign(W^T (x - mu))``, ``W`` a ``(d, c)`` matrix of i.i.d. ``N(0, 1)``
    entries, ``mu`` the mean of the training features; ``Pr[b_k(x) != b_k(y)] = angle(x-mu, y-mu)/pi``.

    Decisions where the papers are silent:
    - centring by the training mean (``centre=True``): common practice in hashing benchmarks,
      which mean-centre the features before every method (ITQ, the next baseline, is defined on
      zero-centred data). Hyperplanes then pass through the data rather than through the origin
      of a non-negative feature space (ReLU features, pixels), where many bits would be nearly
      constant; the mean is the only thing LSH "learns";
    - ``W`` is drawn once, at construction, from a generator seeded by torch's global RNG (the
      engine's seed fixes it); fitting never redraws it;
    - multi-label data: labels are not used (unsupervised).
    """

    config_class = LSHConfig

    def build(self) -> None:
        self.register_buffer("mean", torch.zeros(self.feature_dim))
        self.register_buffer("projection", random_projection(self.feature_dim, self.bits,
                                                             generator_from_global_rng()))

    def fit(self, features, labels) -> dict[str, float]:
        if self.config.centre:
            self.mean.copy_(features.double().mean(0))
        return {}

    def project(self, features):
        return lsh_project(features, self.mean, self.projection)
