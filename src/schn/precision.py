"""Mixed precision for training: how the image network's training forward pass runs.

``fp32`` (default): as is. ``bf16``: autocast to bfloat16 (CPU and GPU; no scaler needed, the
exponent range is fp32's). ``fp16``: autocast to float16 with a gradient scaler, meant for GPUs
(it runs on CPU too, slower than bf16 there). Only the networks' forward passes are autocast;
their outputs are cast back to fp32 before the losses, and the discrete code update, the
optimisers and evaluation stay in fp32.
"""
from __future__ import annotations

import contextlib

import torch

from .errors import SchnError

KINDS = ("fp32", "bf16", "fp16")


class Precision:
    def __init__(self, kind: str = "fp32", device: str | torch.device = "cpu"):
        if kind not in KINDS:
            raise SchnError(f"train.precision must be one of {', '.join(KINDS)}, got {kind!r}")
        self.kind, self.device_type = kind, torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type) if kind == "fp16" else None

    def autocast(self):
        if self.kind == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16 if self.kind == "bf16" else torch.float16)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer) -> None:
        if self.scaler is not None:
            if any(p.grad is not None for group in optimizer.param_groups for p in group["params"]):
                self.scaler.step(optimizer)  # unscales first; skips the step on inf/NaN gradients
        else:
            optimizer.step()

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict:
        return {"kind": self.kind, "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


FP32 = Precision()
