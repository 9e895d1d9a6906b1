"""Processes started by ``torchrun``: who am I, and the process group (gloo on CPU, NCCL on GPU).

One process (no ``WORLD_SIZE`` in the environment, or 1) is the ordinary case: every helper here
is then a no-op, so code paths are the same with and without torchrun.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from torchrun's environment variables."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def init(device: str | None = None) -> World:
    """Join the process group when started by torchrun with more than one process; NCCL when the
    processes use CUDA, gloo otherwise. Returns this process's :class:`World`."""
    here = world()
    if here.size > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        if cuda:
            torch.cuda.set_device(here.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return here


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def total(count: int) -> int:
    """The sum of ``count`` over all processes."""
    if dist.is_available() and dist.is_initialized():
        value = torch.tensor([count], dtype=torch.int64)
        dist.all_reduce(value)
        return int(value.item())
    return count


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
