"""The one method interface that the training engine drives.

A method is its model, its loss and its update. The engine (``schn.engine``) owns everything
else: data loading, the outer loop and the sampled set, timing, logging, validation-based model
selection, checkpoints. Positions handed to a method are *train-pool positions* ``0..n_train-1``
(row numbers of the learned database codes), never indices into the whole data set.

Under torchrun each process is handed its slice of every global batch; a method gathers the
network outputs of the whole global batch (``schn.distributed.gather_rows``) and computes the
loss of the whole batch, so its pairwise terms, its recorded outputs and its discrete update are
those of one process with the same batch, and the same on every process.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..precision import FP32, Precision


class HashingMethod(nn.Module):
    """Base class. Subclasses set ``bits`` and implement the hooks below."""

    bits: int
    # "shallow": fitted in closed form on fixed features; "deep": an image network trained by
    # back-propagation, database encoded by it; "asymmetric": deep, plus learned database codes.
    # The benchmark picks each method's schedule from it (schn.benchmark).
    family: str = "deep"
    # what ``schn tune`` searches (schn.space.Param specs, declared beside each method's config)
    search_space: tuple = ()
    # how the training forward pass runs (set by the engine from train.precision)
    precision: Precision = FP32

    def begin_iteration(self, iteration: int, sample: np.ndarray) -> None:
        """Called before the epochs of outer iteration ``iteration`` on sampled positions ``sample``."""

    def training_step(
        self, inputs: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor, record: bool
    ) -> dict[str, float]:
        """One mini-batch: forward, backward, optimiser step(s). Returns each loss term as a float.

        ``record`` is true during the last epoch of an outer iteration: the method keeps the
        outputs it needs for :meth:`end_iteration` (keyed by ``positions``).
        """
        raise NotImplementedError

    def fit_codes_step(self, inputs: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor) -> dict[str, float]:
        """``train.final_fit_epochs``: one mini-batch fitting the image network to the learned
        database codes, which stay fixed (methods with learned codes only)."""
        raise NotImplementedError(f"{type(self).__name__} has no learned database codes to fit")

    def end_iteration(self) -> dict[str, float]:
        """Called after the epochs of an outer iteration (e.g. the discrete code update)."""
        return {}

    @torch.no_grad()
    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """Real-valued codes (before ``sign``) of a batch, in eval mode. Binary code = sign."""
        raise NotImplementedError

    def database_codes(self) -> torch.Tensor | None:
        """Learned +-1 codes of the training pool, ``(n_train, bits)``, or None for symmetric methods."""
        return None

    def set_database_codes(self, positions: torch.Tensor, codes: torch.Tensor) -> None:
        """Overwrite rows of the learned codes (used for items the loop never sampled)."""
        raise NotImplementedError

    def parallel_image_net(self) -> nn.Module:
        """``self.image_net`` as the training forward pass runs it: wrapped in
        DistributedDataParallel under torchrun (kept outside the registered submodules, so the
        state dict and checkpoints are the same with and without it)."""
        wrapped = self.__dict__.get("_parallel_image_net")
        if wrapped is None:
            wrapped = self.__dict__["_parallel_image_net"] = distributed.data_parallel(self.image_net)
        return wrapped

    def optimizer_states(self) -> dict:
        """State of every optimiser, for checkpoints."""
        return {}

    def load_optimizer_states(self, states: dict) -> None:
        """Inverse of :meth:`optimizer_states`."""
