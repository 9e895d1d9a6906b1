"""SCHN networks (method.md, "Networks"): image net, label net, interaction module, discriminator.

Choices the doc leaves open, fixed here:
- every attention is single-head, ``softmax(q k^T / sqrt(w)) v`` with learned linear
  projections of width ``attention_dim`` for query, key *and* value (so every attention output
  is ``attention_dim`` wide, and the reconstruction MLPs take ``attention_dim`` inputs);
- the graph convolution is ``ReLU(A_n (H W) + b)`` with one bias vector added after the
  propagation (not ``A (H W + b)``); ``A_n`` is ``A`` itself by default (the doc's formula),
  optionally row- or symmetrically normalised (``graph_norm``);
- the discriminator's hidden layers use ReLU and its output ``tanh``; since
  ``(tanh(x) + 1) / 2 = sigmoid(2x)`` it returns the logit ``2x`` for a stable BCE.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

LABEL_HIDDEN = 1024
LABEL_FEATURE_DIM = 512  # width of F_L
GRAPH_NORM_CHOICES = ("none", "row", "symmetric")
LATENT_ACTIVATION_CHOICES = ("sigmoid", "tanh")
VARIANT_CHOICES = ("mmasia", "tomm")


def hash_mlp(in_dim: int, bits: int) -> nn.Sequential:
    """``in -> 1024 -> ReLU -> 512 -> ReLU -> Linear(512, c) -> tanh`` (the reconstruction MLP)."""
    return nn.Sequential(
        nn.Linear(in_dim, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(),
        nn.Linear(512, bits), nn.Tanh(),
    )


class LabelNet(nn.Module):
    """``K -> 1024 -> ReLU -> 512 -> ReLU`` = ``F_L`` -> ``Linear(512, c)`` -> tanh = ``U_L``."""

    def __init__(self, num_classes: int, bits: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Linear(num_classes, LABEL_HIDDEN), nn.ReLU(),
            nn.Linear(LABEL_HIDDEN, LABEL_FEATURE_DIM), nn.ReLU(),
        )
        self.hash = nn.Linear(LABEL_FEATURE_DIM, bits)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(y)
        return features, torch.tanh(self.hash(features))


class Attention(nn.Module):
    """Single-head scaled dot-product attention across the items of a batch.

    Query and key come from the same source in every use in SCHN, so they share one input.
    A batch of one item attends to itself with weight 1.
    """

    def __init__(self, qk_dim: int, v_dim: int, width: int):
        super().__init__()
        self.query = nn.Linear(qk_dim, width)
        self.key = nn.Linear(qk_dim, width)
        self.value = nn.Linear(v_dim, width)
        self.scale = 1.0 / math.sqrt(width)

    def forward(self, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.query(qk) @ self.key(qk).T * self.scale, dim=-1)
        return weights @ self.value(v)


def normalise_graph(A: torch.Tensor, mode: str) -> torch.Tensor:
    """``A`` as given (``none``), ``D^-1 A`` (``row``) or ``D^-1/2 A D^-1/2`` (``symmetric``)."""
    if mode == "none":
        return A
    degree = A.sum(dim=1).clamp_min(1e-12)  # >= 1 thanks to the self loops
    if mode == "row":
        return A / degree[:, None]
    inv_sqrt = degree.rsqrt()
    return inv_sqrt[:, None] * A * inv_sqrt[None, :]


@dataclass
class InteractionOutput:
    latent: torch.Tensor      # U_Z
    rec_image: torch.Tensor   # reconstruction of U_I
    rec_label: torch.Tensor   # reconstruction of U_L


class InteractionModule(nn.Module):
    """The cycle: latent fusion, graph convolution, latent code and the two reconstructions.

    Callers pass detached ``F_I``, ``F_L`` (the doc's stop-gradient); ``A`` is the batch's
    label graph with self loops.
    """

    def __init__(
        self, image_dim: int, bits: int, variant: str = "mmasia", attention_dim: int = 512,
        latent_dim: int = 1024, dropout: float = 0.5, latent_activation: str = "sigmoid",
        graph_norm: str = "none",
    ):
        super().__init__()
        self.variant = variant
        self.graph_norm = graph_norm
        self.fusion = Attention(LABEL_FEATURE_DIM, image_dim, attention_dim)  # H
        self.gcn_weight = nn.Linear(attention_dim, latent_dim, bias=False)
        self.gcn_bias = nn.Parameter(torch.zeros(latent_dim))
        self.dropout = nn.Dropout(dropout)
        self.latent_hash = nn.Linear(latent_dim, bits)
        self.latent_act = torch.sigmoid if latent_activation == "sigmoid" else torch.tanh
        if variant == "mmasia":  # q/k from the other space, values from Z
            self.rec_image_attn = Attention(LABEL_FEATURE_DIM, latent_dim, attention_dim)
            self.rec_label_attn = Attention(image_dim, latent_dim, attention_dim)
        else:  # tomm: q/k from Z, values from the other space
            self.rec_image_attn = Attention(latent_dim, LABEL_FEATURE_DIM, attention_dim)
            self.rec_label_attn = Attention(latent_dim, image_dim, attention_dim)
        self.rec_image_mlp = hash_mlp(attention_dim, bits)
        self.rec_label_mlp = hash_mlp(attention_dim, bits)

    def forward(self, F_I: torch.Tensor, F_L: torch.Tensor, A: torch.Tensor) -> InteractionOutput:
        H = self.fusion(F_L, F_I)
        Z = torch.relu(normalise_graph(A, self.graph_norm) @ self.gcn_weight(H) + self.gcn_bias)
        latent = self.latent_act(self.latent_hash(self.dropout(Z)))
        if self.variant == "mmasia":
            rec_image = self.rec_image_mlp(self.rec_image_attn(F_L, Z))
            rec_label = self.rec_label_mlp(self.rec_label_attn(F_I, Z))
        else:
            rec_image = self.rec_image_mlp(self.rec_image_attn(Z, F_L))
            rec_label = self.rec_label_mlp(self.rec_label_attn(Z, F_I))
        return InteractionOutput(latent, rec_image, rec_label)


def _judge(bits: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(bits, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 1),
    )


class Discriminator(nn.Module):
    """Journal variant: one judge for image codes, one for label codes.

    The doc's probability is ``(tanh(x) + 1) / 2``, which equals ``sigmoid(2x)``; the methods
    return the logit ``2x`` so the BCE can use ``binary_cross_entropy_with_logits``.
    """

    def __init__(self, bits: int):
        super().__init__()
        self.image = _judge(bits)
        self.label = _judge(bits)

    def image_logit(self, codes: torch.Tensor) -> torch.Tensor:
        return 2 * self.image(codes).squeeze(1)

    def label_logit(self, codes: torch.Tensor) -> torch.Tensor:
        return 2 * self.label(codes).squeeze(1)

    @staticmethod
    def probability(logit: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logit)
