"""CSQ: Central Similarity Quantization.

Reference: Li Yuan, Tao Wang, Xiaopeng Zhang, Francis E. H. Tay, Zequn Jie, Wei Liu, Jiashi
Feng, "Central Similarity Quantization for Efficient Image and Video Retrieval", CVPR 2020.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

from ..bounds import bounded
from ..codes import to_signed
from ..space import DEEP_SPACE, Param
from .common import DeepConfig, DeepHashingMethod, check_positive, generator_from_global_rng

RANDOM_CENTER_DRAWS = 20  # Bernoulli case: keep the best of this many draws (authors' codes retry 20 times)


@dataclass
class CSQConfig(DeepConfig):
    """CSQ options."""

    # Quantisation weight. 1e-4: the authors' README command for AlexNet at 64 bits and the
    # DeepHash-pytorch port; the authors' README uses 1e-3 for AlexNet at 16/32 bits and 0.05
    # (their options.py default) for ResNet-50.
    lambda_q: float = bounded(1e-4, 0, 1e6)

    def validate(self) -> None:
        super().validate()
        check_positive(self, "lambda_q")


# ----- hash centres -----
def hadamard(size: int) -> torch.Tensor:
    """Sylvester's Hadamard matrix of ``size`` (a power of 2): ``H_2n = [[H, H], [H, -H]]``."""
    H = torch.ones(1, 1)
    while H.shape[0] < size:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def _min_pairwise_distance(C: torch.Tensor) -> float:
    if len(C) < 2:
        return float(C.shape[1])
    D = (C.shape[1] - C @ C.T) / 2
    return float(D[~torch.eye(len(C), dtype=torch.bool)].min())


def hash_centers(num_classes: int, bits: int, generator: torch.Generator) -> torch.Tensor:
    """One +-1 centre per class (paper, Algorithm 1).

    ``bits`` a power of 2 and ``num_classes <= 2 bits``: the first rows of ``[H; -H]`` (rows of a
    Hadamard matrix are ``bits/2`` apart; a row and its negation ``bits`` apart). Otherwise each
    bit of each centre is Bernoulli(1/2); of ``RANDOM_CENTER_DRAWS`` draws the one with the
    largest minimum pairwise distance is kept (random centres can collide at short codes).
    """
    if bits & (bits - 1) == 0 and num_classes <= 2 * bits:
        H = hadamard(bits)
        return torch.cat([H, -H], 0)[:num_classes].clone()
    draws = [torch.randint(0, 2, (num_classes, bits), generator=generator).float() * 2 - 1
             for _ in range(RANDOM_CENTER_DRAWS)]
    return max(draws, key=_min_pairwise_distance)  # max keeps the first of equals: deterministic


def item_centers(labels: torch.Tensor, centers: torch.Tensor, tie_break: torch.Tensor) -> torch.Tensor:
    """Each item's centre: the sign of the sum (same sign as the mean) of its labels' centres;
    a 0 entry (a tie, or an item with no label) takes the bit of the fixed ``tie_break``
    vector. A single label gives its class centre unchanged."""
    total = labels.float() @ centers
    return torch.where(total == 0, tie_break, to_signed(total))


def csq_loss(U: torch.Tensor, targets: torch.Tensor, lambda_q: float) -> dict[str, torch.Tensor]:
    """Central similarity ``BCE((u+1)/2, (t+1)/2)`` averaged over items and bits, plus
    ``lambda_q mean((|u| - 1)^2)``. ``U`` (b x c) in (-1,1), ``targets`` (b x c) +-1 centres."""
    central = nnf.binary_cross_entropy((U + 1) / 2, (targets + 1) / 2)
    quant = ((U.abs() - 1) ** 2).mean()
    return {"loss_central": central, "loss_quant": quant, "loss": central + lambda_q * quant}


class CSQ(DeepHashingMethod):
    """CSQ: L. Yuan et al., "Central Similarity Quantization for Efficient Image and Video
    Retrieval", CVPR 2020.

    Symmetric, point-wise: every class gets a fixed hash centre ``c_k`` in {-1,+1}^c, far from
    the others (:func:`hash_centers`), and each item's code ``u = tanh(F(x))`` is pulled to its
    centre by ``L = L_C + lambda L_Q``:
        ``L_C = mean_{i,k} BCE((u_ik + 1)/2, (t_ik + 1)/2)``,  ``L_Q = mean_{i,k} (|u_ik| - 1)^2``
    (:func:`csq_loss`; ``L_Q`` in the authors' code's squared form).

    Multi-label: an item's centre ``t`` is the centroid of its labels' centres, binarised by
    sign; a 0 entry (the labels' centres tie on that bit) takes the bit of one random +-1
    vector drawn once at construction (the authors' code); :func:`item_centers`. An item with no
    label gets that vector as its centre.

    Decisions where the paper is silent:
    - centres and the tie-break vector are buffers drawn at construction from an own generator
      seeded from torch's global RNG (so the run seed fixes them and a checkpoint restores them);
    - Hadamard centres are rows of Sylvester's matrix in class order; random centres: best of
      20 Bernoulli draws by minimum pairwise Hamming distance;
    - Adam with the project's shared defaults (:class:`DeepConfig`).
    """

    config_class = CSQConfig
    search_space = DEEP_SPACE + (Param("method.lambda_q", 1e-5, 1.0, log=True),)
    head_activation = "tanh"

    def build(self) -> None:
        gen = generator_from_global_rng()
        self.register_buffer("centers", hash_centers(self.num_classes, self.bits, gen))
        self.register_buffer("tie_break", torch.randint(0, 2, (self.bits,), generator=gen).float() * 2 - 1)

    def compute_losses(self, U, labels, positions) -> dict:
        return csq_loss(U, item_centers(labels, self.centers, self.tie_break), self.config.lambda_q)
