"""Data-parallel training with PyTorch's own engine (``torchrun ... -m cxrlab train``).

Each process (rank) trains on its share of every global batch; DistributedDataParallel
averages the gradients, and the loss is scaled so the average equals the single-process
mean over the whole batch. Validation and test run once, on rank 0, over the full sets
(no padded or duplicated samples); rank 0 alone writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Distributed", "init_distributed"]


@dataclass
class Distributed:
    """This process's place in a (possibly one-process) group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

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
        t = torch.tensor([float(f) for f in flags])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def sum(self, *values: float) -> list[float]:
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
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
    return Distributed(rank, world, local, owns)
