"""SCHN: Semantically Cycle-consistent Hashing Networks.

Reference: "Discriminative Visual Similarity Search with Semantically Cycle-consistent Hashing
Networks", ACM TOMM 18(2s), 2022 (variant ``tomm``), and its ACM Multimedia Asia 2021 version
(variant ``mmasia``). The algorithm as implemented is fixed by ``shared/docs/method.md``.

Decisions where that page is silent:
- the interaction module's inputs ``F_I``, ``F_L`` are detached (method.md); the reconstruction
  terms ``mean((U_hat - U)^2)`` reach the image and label nets through their own hash outputs
  ``U_I``, ``U_L`` only (``detach_rec_targets=True`` cuts that too, for comparison);
- one Adam per network (image net, label net, interaction module, discriminator); the
  backbone, when trainable, is a second parameter group of the image-net Adam with
  ``lr * backbone_lr_scale``;
- the ``U_I``, ``U_L``, ``U_Z`` kept for the discrete update are those of the training forward
  pass (train mode) of the iteration's last epoch; a position seen twice keeps the last one.

Departures from method.md, each an option that is off by default (``update_scope``, ``pairing``,
``detach_cycle_inputs``, ``label_target_weight``; beside them the engine's ``train.final_fit_epochs``
and ``model.head``): see :class:`SCHNConfig`; their measured effects go into RESULTS.md.

The label side (label net, the attentions queried by ``F_L``, the graph product) runs once per
distinct label row of a batch (``InteractionModule.by_group``), equal up to rounding to the
per-item pass (``InteractionModule.forward``, tested against it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import nn

from ..bounds import bounded
from .. import distributed
from ..errors import SchnError
from ..space import ASYMMETRIC_SPACE, Param
from .adsh import adsh_similarity, balance_ratio, similarity_t_times
from .base import HashingMethod
from .common import (ImageNet, adam, backbone_groups, check_choice, check_method_inputs, check_positive,
                     generator_from_global_rng)
from .schn_loss import (
    SIGN_ZERO_CHOICES,
    asymmetric_loss,
    database_update,
    discrete_objective,
    discrete_update,
    similarity,
    soft_similarity,
)
from .schn_nets import (
    GRAPH_NORM_CHOICES,
    LATENT_ACTIVATION_CHOICES,
    VARIANT_CHOICES,
    Discriminator,
    InteractionModule,
    LabelGroups,
    LabelNet,
)

__all__ = [
    "SCHN", "SCHNConfig", "asymmetric_loss", "discrete_objective", "discrete_update",
    "similarity", "soft_similarity",
]

INIT_CODES_CHOICES = ("random", "zeros")
UPDATE_SCOPE_CHOICES = ("sampled", "database")
PAIRING_CHOICES = ("batch", "sampled", "database")


@dataclass
class SCHNConfig:
    """SCHN options. Defaults: method.md (authors' values; sane column of its last table)."""

    variant: str = "mmasia"             # "tomm" adds the adversarial discriminator
    alpha: float = bounded(2.0, 0, 1e6)                 # weight of U_L in the discrete update
    beta: float = bounded(0.1, 0, 1e6)                  # weight of U_Z in the discrete update
    gamma: float = bounded(10.0, 0, 1e6)                # quantisation weight (loss and update)
    lr: float = bounded(4e-5, 0, 10, above=True)
    weight_decay: float = bounded(1e-5, 0, 10)
    init_codes: str = "random"          # "zeros" = authors' code
    latent_activation: str = "sigmoid"  # U_Z activation, as the authors; "tanh" for comparison
    sign_zero: str = "plus_one"         # "zero" = authors' sign(0) = 0 in the discrete update
    full_similarity: bool = False       # True = authors': S~ over Omega x D, then sliced
    graph_norm: str = "none"            # GCN adjacency: "none" (the doc's A), "row", "symmetric"
    attention_dim: int = bounded(512, 1, 65_536)
    latent_dim: int = bounded(1024, 1, 65_536)
    dropout: float = bounded(0.5, 0, 0.99)
    backbone_lr_scale: float = bounded(1.0, 0, 1000)     # lr multiplier for a trainable backbone
    detach_rec_targets: bool = False    # True: reconstruction terms train the interaction module only
    # ablations: weights of the loss terms (1 = method.md). With latent and reconstruction weights
    # and beta all 0 (mmasia) the interaction module is not run at all.
    label_loss_weight: float = bounded(1.0, 0, 1e6)
    latent_loss_weight: float = bounded(1.0, 0, 1e6)
    rec_loss_weight: float = bounded(1.0, 0, 1e6)
    # tomm: the inputs of the adversarial steps. "fresh" (method.md): a second forward pass of the
    # image and label nets after the step on L, without gradient; "full": the same values with
    # gradient, as the authors' code runs it; "reuse": the step's own outputs (no second pass)
    adversarial_pass: str = "fresh"
    # Departures from method.md (issue 14), each off by default; measured in RESULTS.md.
    # "database": after each outer iteration every database code is updated (ADSH's scope), with
    # S~ over Omega x D and U_L from the label net over every item's labels; "sampled" = method.md
    update_scope: str = "sampled"
    # the pair term of the losses against the batch's own codes ("batch", method.md), every code of
    # Omega ("sampled") or every database code ("database"), the last two with the balanced S~ rows
    pairing: str = "batch"
    # False: the interaction module's inputs keep their gradient, so the cycle (latent and
    # reconstruction terms) trains the image and label nets; True = method.md
    detach_cycle_inputs: bool = True
    # > 0: the label net's code as a class anchor for the image net, w * mean((U_I - U_L)^2) with U_L
    # fixed (a term of its own, "loss_label_target"); 0 = method.md
    label_target_weight: float = bounded(0.0, 0, 1e6)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        choices = {
            "variant": VARIANT_CHOICES, "init_codes": INIT_CODES_CHOICES,
            "latent_activation": LATENT_ACTIVATION_CHOICES, "sign_zero": SIGN_ZERO_CHOICES,
            "graph_norm": GRAPH_NORM_CHOICES, "adversarial_pass": ("fresh", "full", "reuse"),
            "update_scope": UPDATE_SCOPE_CHOICES, "pairing": PAIRING_CHOICES,
        }
        for name, allowed in choices.items():
            check_choice(self, name, allowed)
        check_positive(self, "alpha", "beta", "gamma", "weight_decay", "backbone_lr_scale", "label_loss_weight",
                       "latent_loss_weight", "rec_loss_weight", "label_target_weight")
        check_positive(self, "lr", strict=True)
        for name in ("attention_dim", "latent_dim"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise SchnError(f"method option {name}={getattr(self, name)!r} must be a positive integer")
        if not 0 <= self.dropout < 1:
            raise SchnError(f"method option dropout={self.dropout!r} must be in [0, 1)")
        for name in ("full_similarity", "detach_cycle_inputs"):
            if not isinstance(getattr(self, name), bool):
                raise SchnError(f"method option {name}={getattr(self, name)!r} must be true or false")


class SCHN(HashingMethod):
    """Asymmetric SCHN: image/label/interaction nets, learned database codes ``B``."""

    config_class = SCHNConfig
    search_space = ASYMMETRIC_SPACE + (
        Param("method.alpha", 1e-2, 1e3, log=True),
        Param("method.beta", 1e-3, 1e2, log=True),
        Param("method.gamma", 1e-1, 1e3, log=True),
    )
    family = "asymmetric"

    def __init__(
        self,
        config: SCHNConfig,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        bits: int,
        train_labels: torch.Tensor,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        config.validate()
        train_labels = check_method_inputs(train_labels, num_classes, bits)
        self.config = config
        self.bits = int(bits)
        self.device = torch.device(device)
        cfg = config

        self.image_net = ImageNet(backbone, feature_dim, bits)
        self.label_net = LabelNet(num_classes, bits)
        self.interaction = InteractionModule(
            feature_dim, bits, cfg.variant, cfg.attention_dim, cfg.latent_dim, cfg.dropout,
            cfg.latent_activation, cfg.graph_norm,
        )
        self.discriminator = Discriminator(bits) if cfg.variant == "tomm" else None

        n = train_labels.shape[0]
        if cfg.init_codes == "random":
            # Own generator seeded from torch's global RNG: the engine's seed fixes B.
            gen = generator_from_global_rng()
            B = torch.randint(0, 2, (n, bits), generator=gen).float() * 2 - 1
        else:
            B = torch.zeros(n, bits)
        self.register_buffer("B", B)
        self.register_buffer("train_labels", train_labels, persistent=False)
        self.to(self.device)

        def make_adam(groups):
            return adam(groups, cfg.lr, cfg.weight_decay)

        image_groups = backbone_groups(backbone, self.image_net.hash.parameters(), cfg.lr, cfg.backbone_lr_scale)
        self.optimizers = {
            "image": make_adam(image_groups),
            "label": make_adam(self.label_net.parameters()),
            "interaction": make_adam(self.interaction.parameters()),
        }
        if self.discriminator is not None:
            self.optimizers["discriminator"] = make_adam(self.discriminator.parameters())
        self._omega = self._pair_ratio = None  # the outer iteration's sampled set, for pairing
        self._clear_records()

    # ----- records of the last epoch, for the discrete update -----
    def _clear_records(self) -> None:
        self._recorded = torch.zeros(self.B.shape[0], dtype=torch.bool, device=self.B.device)
        self._rec = {k: torch.zeros_like(self.B) for k in ("image", "label", "latent")}

    def begin_iteration(self, iteration, sample) -> None:
        self._clear_records()
        self._omega = torch.as_tensor(sample, device=self.B.device).long()
        self._pair_ratio = None

    def _pairs(self, labels) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The codes a batch's pair term compares with (None: its own) and its similarity rows:
        {0, 1} against its own codes (method.md), else the balanced S~ rows (+1 / -P/N, the ratio
        over Omega x Omega or Omega x D, as the discrete update's S~) against Omega's or all codes."""
        if self.config.pairing == "batch":
            return None, similarity(labels, labels)
        omega = self._omega  # None before the first outer iteration
        sampled = self.config.pairing == "sampled" and omega is not None
        other = self.train_labels[omega] if sampled else self.train_labels
        if omega is None:
            ratio = balance_ratio(labels, other)
        elif self._pair_ratio is None:
            ratio = self._pair_ratio = balance_ratio(self.train_labels[omega], other)
        else:
            ratio = self._pair_ratio
        return (self.B[omega] if sampled else self.B), adsh_similarity(labels, other, ratio)

    # ----- mini-batch -----
    @staticmethod
    def label_graph(labels: torch.Tensor) -> torch.Tensor:
        """``A_ij = 1[y_i . y_j > 0]`` with self loops forced (an unlabelled item keeps one)."""
        A = similarity(labels, labels)
        A.fill_diagonal_(1.0)
        return A

    def uses_interaction(self) -> bool:
        cfg = self.config
        return self.discriminator is not None or max(cfg.latent_loss_weight, cfg.rec_loss_weight, cfg.beta) > 0

    def compute_losses(self, inputs, labels, positions) -> tuple[dict[str, torch.Tensor], dict]:
        """Forward pass and every term of ``L``; also returns the outputs (for recording)."""
        cfg = self.config
        with self.precision.autocast():
            F_I, U_I = self.parallel_image_net()(inputs)
        # under torchrun: the whole global batch on every process (one process: unchanged); fp32 losses
        detach = cfg.detach_cycle_inputs
        F_I = distributed.gather_rows(F_I.detach().float()) if detach else distributed.gather_rows(
            F_I.float(), grad_scale=True)
        U_I = distributed.gather_rows(U_I.float(), grad_scale=True)
        labels, positions = distributed.gather_rows(labels), distributed.gather_rows(positions)
        groups = LabelGroups.of(labels)  # the label side runs once per distinct label row
        F_L, U_L = self.label_net(groups.rows)
        U_L = groups.expand(U_L)
        B_b = self.B[positions]
        B_pair, S_b = self._pairs(labels)
        g = cfg.gamma
        terms = {
            "loss_image": asymmetric_loss(U_I, B_b, S_b, g, B_pair),
            "loss_label": cfg.label_loss_weight * asymmetric_loss(U_L, B_b, S_b, g, B_pair),
        }
        if cfg.label_target_weight > 0:
            terms["loss_label_target"] = cfg.label_target_weight * ((U_I - U_L.detach()) ** 2).mean()
        latent = torch.zeros_like(U_I)
        if self.uses_interaction():
            out = self.interaction.by_group(F_I, F_L.detach() if detach else F_L, groups)
            latent = out.latent
            target_I, target_L = (U_I.detach(), U_L.detach()) if cfg.detach_rec_targets else (U_I, U_L)
            terms["loss_latent"] = cfg.latent_loss_weight * asymmetric_loss(out.latent, B_b, S_b, g, B_pair)
            terms["loss_rec_image"] = cfg.rec_loss_weight * ((out.rec_image - target_I) ** 2).mean()
            terms["loss_rec_label"] = cfg.rec_loss_weight * ((out.rec_label - target_L) ** 2).mean()
        terms["loss"] = sum(terms.values())
        return terms, {"image": U_I, "label": U_L, "latent": latent, "positions": positions, "labels": labels,
                       "F_I": F_I, "F_L": F_L, "groups": groups}

    def _to_device(self, inputs, labels, positions):
        return (inputs.to(self.device), labels.to(self.device).float(),
                torch.as_tensor(positions, device=self.device).long())

    def training_step(self, inputs, labels, positions, record) -> dict[str, float]:
        self.train()
        inputs, labels, positions = self._to_device(inputs, labels, positions)
        terms, outputs = self.compute_losses(inputs, labels, positions)
        main = [self.optimizers[k] for k in ("image", "label", "interaction")]
        for opt in main:
            opt.zero_grad(set_to_none=True)
        self.precision.backward(terms["loss"])
        distributed.average_gradients([*self.label_net.parameters(), *self.interaction.parameters()])
        for opt in main:
            self.precision.step(opt)
        self.precision.update()
        if record:
            positions = outputs["positions"]
            self._recorded[positions] = True
            for k in ("image", "label", "latent"):
                self._rec[k][positions] = outputs[k].detach()
        result = {k: float(v.detach()) for k, v in terms.items()}
        if self.discriminator is not None:
            first = outputs if self.config.adversarial_pass == "reuse" else None
            result.update(self._adversarial_steps(inputs, labels, first))
        return result

    def fit_codes_step(self, inputs, labels, positions) -> dict[str, float]:
        """The image term of ``L`` alone, the image net's optimiser only: B, the label net and the
        interaction module stay as training left them."""
        self.train()
        inputs, labels, positions = self._to_device(inputs, labels, positions)
        with self.precision.autocast():
            U_I = self.parallel_image_net()(inputs)[1]
        U_I = distributed.gather_rows(U_I.float(), grad_scale=True)
        labels, positions = distributed.gather_rows(labels), distributed.gather_rows(positions)
        B_pair, S_b = self._pairs(labels)
        loss = asymmetric_loss(U_I, self.B[positions], S_b, self.config.gamma, B_pair)
        opt = self.optimizers["image"]
        opt.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        self.precision.step(opt)
        self.precision.update()
        return {"loss_image": float(loss.detach())}

    # ----- journal variant -----
    def _adversarial_steps(self, inputs, labels, first: dict | None = None) -> dict[str, float]:
        # method.md: a fresh pass after the step on L. Only the interaction module is updated from
        # here on, so the image and label nets run without gradient (same values as a full pass).
        # adversarial_pass="reuse" takes the step's own (pre-step) outputs instead: no second pass.
        # adversarial_pass="full" re-creates the authors' step: the second pass with gradient, and the
        # generator's backward through the image and label nets (whose gradients the next step clears)
        if first is not None:
            F_I, U_I, F_L, U_L = (first[k].detach() for k in ("F_I", "image", "F_L", "label"))
            groups = first["groups"]
        else:
            with torch.set_grad_enabled(self.config.adversarial_pass == "full"):
                with self.precision.autocast():
                    F_I, U_I = self.image_net(inputs)
                F_I, U_I, labels = (distributed.gather_rows(t) for t in (F_I.float(), U_I.float(), labels))
                groups = LabelGroups.of(labels)
                F_L, U_L = self.label_net(groups.rows)
                U_L = groups.expand(U_L)
        out = self.interaction.by_group(F_I, F_L, groups)
        loss_disc = self._discriminator_step(U_I.detach(), U_L.detach(), out.rec_image.detach(),
                                             out.rec_label.detach())
        loss_gen = self._generator_step(out.rec_image, out.rec_label)
        return {"loss_disc": loss_disc, "loss_gen": loss_gen}

    def _discriminator_step(self, real_image, real_label, fake_image, fake_label) -> float:
        d, bce = self.discriminator, nnf.binary_cross_entropy_with_logits
        real_i, real_l = d.image_logit(real_image), d.label_logit(real_label)
        fake_i, fake_l = d.image_logit(fake_image), d.label_logit(fake_label)
        loss = (bce(real_i, torch.ones_like(real_i)) + bce(fake_i, torch.zeros_like(fake_i))
                + bce(real_l, torch.ones_like(real_l)) + bce(fake_l, torch.zeros_like(fake_l)))
        opt = self.optimizers["discriminator"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.discriminator.parameters())
        opt.step()
        return float(loss.detach())

    def _generator_step(self, rec_image, rec_label) -> float:
        d, bce = self.discriminator, nnf.binary_cross_entropy_with_logits
        fake_i, fake_l = d.image_logit(rec_image), d.label_logit(rec_label)
        loss = bce(fake_i, torch.ones_like(fake_i)) + bce(fake_l, torch.ones_like(fake_l))
        opt = self.optimizers["interaction"]
        opt.zero_grad(set_to_none=True)
        loss.backward()  # also fills discriminator grads; its optimiser clears them before use
        distributed.average_gradients(self.interaction.parameters())
        opt.step()
        return float(loss.detach())

    # ----- discrete update -----
    @torch.no_grad()
    def end_iteration(self) -> dict[str, float]:
        omega = self._recorded.nonzero().squeeze(1)
        if omega.numel() == 0:
            return {}
        cfg = self.config
        if cfg.update_scope == "database":
            return self._update_every_code(omega)
        labels = self.train_labels[omega]
        if cfg.full_similarity:
            # Authors' way: r is taken over the whole Omega x D matrix, then Omega x Omega is kept.
            S_tilde = soft_similarity(labels, self.train_labels)[:, omega]
        else:
            S_tilde = soft_similarity(labels, labels)
        old = self.B[omega]
        new = discrete_update(
            old, self._rec["image"][omega], self._rec["label"][omega], self._rec["latent"][omega],
            S_tilde, cfg.gamma, cfg.alpha, cfg.beta, cfg.sign_zero,
        )
        self.B[omega] = new
        self._clear_records()
        return {"bits_changed": float((new != old).float().mean()), "codes_updated": float(omega.numel())}

    def _update_every_code(self, omega) -> dict[str, float]:
        cfg = self.config
        U, labels = self._rec["image"][omega], self.train_labels[omega]
        S_t_U = similarity_t_times(labels, self.train_labels, U, balance_ratio(labels, self.train_labels))
        rows, inverse = torch.unique(self.train_labels, dim=0, return_inverse=True)
        U_L = self.label_net(rows)[1][inverse]  # the label net sees labels only: one pass per label row
        new = database_update(self.B, U, omega, S_t_U, U_L, self._rec["latent"][omega], cfg.gamma, cfg.alpha,
                              cfg.beta, cfg.sign_zero)
        changed = float((new != self.B).float().mean())
        self.B.copy_(new)
        self._clear_records()
        return {"bits_changed": changed, "codes_updated": float(len(new))}

    # ----- codes -----
    @torch.no_grad()
    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        self.eval()
        return self.image_net(inputs.to(self.device))[1]

    def database_codes(self) -> torch.Tensor:
        return self.B.detach().clone()

    @torch.no_grad()
    def set_database_codes(self, positions, codes) -> None:
        positions = torch.as_tensor(positions, device=self.B.device).long()
        self.B[positions] = torch.as_tensor(codes).to(self.B)

    # ----- checkpoints -----
    def optimizer_states(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_optimizer_states(self, states: dict) -> None:
        missing = sorted(set(self.optimizers) - set(states))
        if missing:
            raise SchnError(
                f"checkpoint lacks optimiser state(s) {', '.join(missing)}; "
                f"was it written with another SCHN variant?"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(states[name])
