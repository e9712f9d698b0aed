"""Data-parallel training with PyTorch's own engine (``torchrun ... -m cxrlab train``).

Each process (rank) trains on its share of every global batch; DistributedDataParallel
averages the gradients, and the loss is scaled so the average equals the single-process
mean over the whole batch. Validation and test run once, on rank 0, over the full sets
(no padded or duplicated samples); rank 0 alone writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError

__all__ = ["Distributed", "init_distributed", "sync_batchnorm"]


@dataclass
class Distributed:
    """This process's place in a (possibly one-process) group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False
    # where collective tensors live: NCCL reduces CUDA tensors only, gloo CPU tensors
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def any(self, *flags: bool) -> list[bool]:
        """Each flag, true if it is true on any rank (so every rank takes the same branch)."""
        if not self.active:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def sum(self, *values: float) -> list[float]:
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj: object) -> object:
        """``obj`` from rank 0, on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's contiguous part of one global batch."""
        return np.array_split(rows, self.world)[self.rank] if self.active else rows

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device_name: str = "auto") -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    NCCL on CUDA GPUs, gloo on CPUs. Without ``WORLD_SIZE > 1`` this is a no-op.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        gpu = torch.cuda.is_available() and device_name in ("auto", "cuda")
        if gpu:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if gpu else "gloo")
        owns = True
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", local) if nccl else torch.device("cpu")
    return Distributed(rank, world, local, owns, device)


def sync_batchnorm(net: nn.Module, keep: list[nn.Module], device: torch.device) -> int:
    """Replace, in place, the BatchNorm layers of ``net`` that train by ``nn.SyncBatchNorm``.

    Modules in ``keep`` (the frozen ones, held in eval mode) and everything inside them stay as
    they are: their BatchNorm uses its running statistics and must remain the very modules
    the freezing policy holds in eval mode.
    Returns the number of layers replaced. PyTorch's SyncBatchNorm runs on GPUs only.
    """
    if device.type != "cuda":
        raise ConfigError(
            "--sync-bn needs CUDA GPUs: PyTorch's SyncBatchNorm does not run on the CPU "
            "(gloo); train without it"
        )
    kept = {id(m) for m in keep}
    count = 0
    for name, child in list(net.named_children()):
        if id(child) in kept:
            continue  # a frozen module, with everything inside it
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(net, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
            count += 1
        else:
            count += sync_batchnorm(child, keep, device)
    return count
