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

    def by_group(self, qk: torch.Tensor, v: torch.Tensor, groups: "LabelGroups", qk_grouped: bool,
                 v_grouped: bool) -> torch.Tensor:
        """:meth:`forward` when ``qk`` and/or ``v`` hold one row per label group (``groups``)
        instead of one per item: the same values (up to rounding), grouped where ``qk`` is.

        A key repeated ``n`` times enters the softmax as one key with ``log n`` added; a weight
        row sums to 1, so ``W @ value(v) = value(W @ v)`` and items' values are pooled first."""
        logits = self.query(qk) @ self.key(qk).T * self.scale
        if not qk_grouped:  # one row per item: sum each row's weights per group of values
            weights = torch.softmax(logits, dim=-1)
            return groups.sum_columns(weights) @ self.value(v) if v_grouped else weights @ self.value(v)
        weights = torch.softmax(logits + groups.counts.log(), dim=-1)  # groups x groups
        if v_grouped:
            return weights @ self.value(v)
        return self.value(groups.spread_columns(weights) @ v)


@dataclass
class LabelGroups:
    """A batch's items grouped by equal label rows: ``rows`` (g x K) the distinct rows, ``onehot``
    (b x g) each item's group, ``counts`` (g) items per group. SCHN's label net and most of its
    interaction module see labels only, so they run once per group (few on single-label data).
    Moving between items and groups is a product with ``onehot``: a matrix product is
    deterministic on several threads, where an accumulating index (``index_add_``, the gradient
    of ``x[inverse]``) is not, and training must be repeatable (resume is bit-identical)."""

    rows: torch.Tensor
    onehot: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def of(cls, labels: torch.Tensor) -> "LabelGroups":
        rows, inverse = torch.unique(labels, dim=0, return_inverse=True)
        onehot = torch.nn.functional.one_hot(inverse, len(rows)).to(labels.dtype)
        return cls(rows, onehot, onehot.sum(0))

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """One row per group -> one per item."""
        return self.onehot @ x

    def sum_columns(self, w: torch.Tensor) -> torch.Tensor:
        """``w @ onehot``: an items-wide row summed per group."""
        return w @ self.onehot

    def spread_columns(self, w: torch.Tensor) -> torch.Tensor:
        """A groups-wide row of weights over items: each item gets its group's weight / count."""
        return (w / self.counts) @ self.onehot.T

    def graph(self, mode: str) -> torch.Tensor:
        """The label graph ``A`` (self loops forced) propagated over groups: ``(A_n X)`` for ``X``
        equal within groups is ``C X_g`` with ``C`` this groups x groups matrix (``A_n`` of
        :func:`normalise_graph`). An empty label row links an item to itself only."""
        A = (self.rows @ self.rows.T > 0).to(self.counts.dtype)
        C = A * self.counts
        empty = self.rows.sum(1) == 0
        C[empty, empty] = 1.0
        # an item's degree is its group's row sum of C, so A's normalisations are C's
        return normalise_graph(C, mode)


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

    def by_group(self, F_I: torch.Tensor, F_L: torch.Tensor, groups: LabelGroups) -> InteractionOutput:
        """:meth:`forward` with ``F_L`` one row per label group (``A`` is the groups' label graph):
        the same outputs up to rounding, with every label-side product computed once per group.
        ``H`` and ``Z`` are equal within a group (their queries, keys and graph rows are); the
        dropout before ``U_Z`` still draws one mask per item, as in :meth:`forward`."""
        H = self.fusion.by_group(F_L, F_I, groups, qk_grouped=True, v_grouped=False)
        Z = torch.relu(groups.graph(self.graph_norm) @ self.gcn_weight(H) + self.gcn_bias)
        latent = self.latent_act(self.latent_hash(self.dropout(groups.expand(Z))))
        if self.variant == "mmasia":
            rec_image = groups.expand(self.rec_image_mlp(
                self.rec_image_attn.by_group(F_L, Z, groups, qk_grouped=True, v_grouped=True)))
            rec_label = self.rec_label_mlp(self.rec_label_attn.by_group(F_I, Z, groups, qk_grouped=False,
                                                                        v_grouped=True))
        else:
            rec_image = groups.expand(self.rec_image_mlp(
                self.rec_image_attn.by_group(Z, F_L, groups, qk_grouped=True, v_grouped=True)))
            rec_label = groups.expand(self.rec_label_mlp(
                self.rec_label_attn.by_group(Z, F_I, groups, qk_grouped=True, v_grouped=False)))
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
