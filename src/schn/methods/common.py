"""Pieces every method shares: the image network, label similarity, input checks, Adam, and the
base class of the deep methods that train an image network by back-propagation alone.

A deep method subclasses :class:`DeepHashingMethod` and writes only its loss
(:meth:`DeepHashingMethod.compute_losses`), plus any state of its own (a classifier, hash
centres, a memory of outputs) in :meth:`DeepHashingMethod.build`. Its image network is the same
``backbone -> Linear(d, c)`` head as SCHN's, so methods compared on one backbone differ only in
their loss and update.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbones import OverBackbone
from ..bounds import bounded
from .. import distributed
from ..codes import to_signed
from ..errors import SchnError
from .base import HashingMethod

HEAD_ACTIVATIONS = ("tanh", "none")


def similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """``S_ij = 1[y_i . y_j > 0]`` in {0, 1} (sharing at least one class), float."""
    return (labels_a.float() @ labels_b.float().T > 0).float()


def generator_from_global_rng(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from torch's global RNG, so the engine's seed fixes every draw."""
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator(device=device).manual_seed(seed)


def bitwise_sweep(B: torch.Tensor, U: torch.Tensor, P: torch.Tensor, sign=to_signed) -> torch.Tensor:
    """One pass over the bits of the asymmetric methods' discrete code update; returns a new ``B``.

    Minimises ``||B U^T||^2 - 2 tr(B^T P)`` over ``B`` in {-1,+1}, one column at a time: with the
    others fixed, column ``k`` is exactly ``sign(P_k - B_!k U_!k^T U_k)``, each column using
    those already updated in this pass. ``U`` holds the network outputs of the rows that have
    one (``|Omega|`` rows, ``B`` may have more).
    """
    B = B.clone()
    for k in range(B.shape[1]):
        B[:, k] = sweep_column(B, U, P, k, sign)
    return B


def sweep_column(B: torch.Tensor, U: torch.Tensor, P: torch.Tensor, k: int, sign=to_signed) -> torch.Tensor:
    """Column ``k`` of :func:`bitwise_sweep`: ``sign(P_k - B_!k U_!k^T U_k)``, the exact minimiser
    of ``||B U^T||^2 - 2 tr(B^T P)`` over column ``k`` with the other columns fixed."""
    rest = [j for j in range(B.shape[1]) if j != k]
    # (U_rest^T U_k) first: a (c-1) vector, so a column costs O(n c), not O(n |Omega|)
    return sign(P[:, k] - B[:, rest] @ (U[:, rest].T @ U[:, k]))


def check_method_inputs(train_labels, num_classes: int, bits: int) -> torch.Tensor:
    """The training labels as a float ``(n_train, K)`` tensor; one clear error otherwise."""
    train_labels = torch.as_tensor(train_labels).float()
    if train_labels.ndim != 2 or train_labels.shape[1] != num_classes:
        raise SchnError(
            f"train labels must be (n_train, {num_classes}) multi-hot, got shape {tuple(train_labels.shape)}"
        )
    if bits < 1:
        raise SchnError(f"code length must be at least 1 bit, got {bits}")
    return train_labels


def adam(groups, lr: float, weight_decay: float) -> torch.optim.Adam:
    # fused: one kernel per step for all parameters; ~1.9x faster steps on CPU here
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, fused=True)


def backbone_groups(backbone: nn.Module, head_params, lr: float, backbone_lr_scale: float) -> list[dict]:
    """Parameter groups: the head at ``lr``, a trainable backbone at ``lr * backbone_lr_scale``."""
    groups = [{"params": list(head_params)}]
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    if trainable:
        groups.append({"params": trainable, "lr": lr * backbone_lr_scale})
    return groups


class ImageNet(OverBackbone):
    """Backbone -> ``F`` -> ``Linear(d, c)`` -> activation (tanh, or none for methods whose
    paper uses the linear output) -> ``U``.

    A backbone with no trainable parameter (``nn.Identity`` over cached features, or a frozen
    CNN) runs without gradient and stays in eval mode (:class:`OverBackbone`): freeze the
    backbone before building the method.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, bits: int, activation: str = "tanh"):
        if activation not in HEAD_ACTIVATIONS:
            raise SchnError(f"head activation {activation!r} is not one of {', '.join(HEAD_ACTIVATIONS)}")
        super().__init__(backbone)
        self.hash = nn.Linear(feature_dim, bits)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        out = self.hash(features)
        return features, torch.tanh(out) if self.activation == "tanh" else out


@dataclass
class DeepConfig:
    """Optimiser options shared by the deep methods (Adam, as SCHN; same defaults as SCHN so a
    comparison on one backbone changes the loss, not the optimiser)."""

    lr: float = bounded(4e-5, 0, 10, above=True)
    weight_decay: float = bounded(1e-5, 0, 10)
    backbone_lr_scale: float = bounded(1.0, 0, 1000)  # lr multiplier for a trainable backbone

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        check_positive(self, "lr", strict=True)
        check_positive(self, "weight_decay", "backbone_lr_scale")


def check_choice(config, name: str, allowed) -> None:
    if getattr(config, name) not in allowed:
        raise SchnError(f"method option {name}={getattr(config, name)!r} is not valid; "
                        f"choose one of: {', '.join(map(str, allowed))}")


def check_positive(config, *names: str, strict: bool = False) -> None:
    for name in names:
        value = getattr(config, name)
        if not (value > 0 if strict else value >= 0):
            raise SchnError(f"method option {name}={value!r} must be {'>' if strict else '>='} 0")


class DeepHashingMethod(HashingMethod):
    """An image network trained by one Adam on a loss over mini-batches (symmetric: database
    items are encoded by the network, so :meth:`database_codes` is None).

    Subclasses set ``config_class`` and ``head_activation`` and implement
    :meth:`compute_losses`; :meth:`build` adds their own modules and buffers (registered before
    the optimiser is made, so trainable extras are optimised with the head).
    """

    head_activation = "tanh"

    def __init__(self, config, backbone: nn.Module, feature_dim: int, num_classes: int, bits: int,
                 train_labels, device: torch.device | str = "cpu"):
        super().__init__()
        config.validate()
        train_labels = check_method_inputs(train_labels, num_classes, bits)
        self.config = config
        self.bits = int(bits)
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        self.image_net = ImageNet(backbone, feature_dim, bits, self.head_activation)
        self.register_buffer("train_labels", train_labels, persistent=False)
        self.build()
        self.to(self.device)
        head = [p for name, p in self.named_parameters() if not name.startswith("image_net.backbone.")]
        self.optimizer = adam(backbone_groups(backbone, head, config.lr, config.backbone_lr_scale),
                              config.lr, config.weight_decay)
        self.steps = 0

    def build(self) -> None:
        """Create the method's own modules and buffers (none by default)."""

    def compute_losses(self, U: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor) -> dict:
        """Every loss term for the batch's network outputs ``U``; ``"loss"`` is the total."""
        raise NotImplementedError

    def training_step(self, inputs, labels, positions, record) -> dict[str, float]:
        self.train()
        inputs = inputs.to(self.device)
        labels = labels.to(self.device).float()
        positions = torch.as_tensor(positions, device=self.device).long()
        with self.precision.autocast():
            U = self.parallel_image_net()(inputs)[1]
        # under torchrun: the whole global batch (one process: unchanged); losses in fp32
        U = distributed.gather_rows(U.float(), grad_scale=True)
        labels, positions = distributed.gather_rows(labels), distributed.gather_rows(positions)
        terms = self.compute_losses(U, labels, positions)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(terms["loss"])
        distributed.average_gradients(p for name, p in self.named_parameters() if not name.startswith("image_net."))
        self.precision.step(self.optimizer)
        self.precision.update()
        self.steps += 1
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()}

    @torch.no_grad()
    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        self.eval()
        return self.image_net(inputs.to(self.device))[1]

    def optimizer_states(self) -> dict:
        return {"image": self.optimizer.state_dict()}

    def load_optimizer_states(self, states: dict) -> None:
        if "image" not in states:
            raise SchnError("checkpoint lacks the optimiser state of the image network")
        self.optimizer.load_state_dict(states["image"])
