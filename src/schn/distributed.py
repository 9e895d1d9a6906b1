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
        cuda = torch.cuda.is_available() and (device in (None, "auto") or str(device).startswith("cuda"))
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
        on = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only
        value = torch.tensor([count], dtype=torch.int64, device=on)
        dist.all_reduce(value)
        return int(value.item())
    return count


def broadcast(obj):
    """The first process's ``obj``, in every process (any picklable object)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- data-parallel training: every process computes the loss of the whole global batch --------
def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(t: torch.Tensor, grad_scale: bool = False) -> torch.Tensor:
    """The rows of ``t`` from every process, in rank order (row counts may differ by one).

    Gradients reach this process's own rows only. With ``grad_scale`` they are multiplied by the
    number of processes: DistributedDataParallel then averages the networks' gradients, and the
    average of (processes x the gradient through one's own rows) is exactly the gradient of the
    whole batch's loss, as one process computing it would get."""
    if not active():
        return t
    size, rank = dist.get_world_size(), dist.get_rank()
    count = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    counts = [torch.zeros_like(count) for _ in range(size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[:t.shape[0]] = t.detach()
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    own = t * size - t.detach() * (size - 1) if grad_scale else t  # same values, gradient x size
    return torch.cat([own if i == rank else parts[i][:int(counts[i].item())] for i in range(size)])


def check_same(t: torch.Tensor, what: str) -> None:
    """Fail loudly if ``t`` differs between processes (compared by the first process's copy)."""
    if not active():
        return
    reference = t.detach().clone()
    dist.broadcast(reference, src=0)
    if not torch.equal(reference, t.detach()):
        from .errors import SchnError

        raise SchnError(f"{what} differ between the processes; data-parallel training lost its consistency")


def average_gradients(parameters) -> None:
    """Average the gradients of ``parameters`` over the processes (those computed on the whole
    gathered batch are equal everywhere already; this keeps the replicas bit-for-bit together)."""
    if not active():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def data_parallel(module: torch.nn.Module):
    """``module`` wrapped in DistributedDataParallel when processes are running together, else itself."""
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    if module_device(module).type == "cuda":
        # batch statistics over the global batch, as one process has them (SyncBatchNorm is CUDA-only;
        # on CPU each process normalises its own slice, which is why such runs differ more)
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, device_ids=[module_device(module)])
    return DistributedDataParallel(module)


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
