"""Sharding over ``torch.distributed`` ranks and the sum that brings the shards together.

Under ``torchrun`` (gloo or NCCL) every rank takes every ``world_size``-th sample and reduces
its own statistics; [`all_reduce_sum`][tl_capability.attribution._distributed.all_reduce_sum]
then gives every rank the single-process sums.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def distributed_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the ``torch.distributed`` group, or ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensors: list[Tensor], device: torch.device | None = None) -> list[Tensor]:
    """Sums tensors across ranks (a no-op in a single process); returns them on the CPU.

    NCCL reduces only GPU tensors, so they travel through ``device`` (the model's) there.
    """
    if distributed_info()[1] == 1:
        return tensors
    use = device if dist.get_backend() == "nccl" else torch.device("cpu")
    out = []
    for t in tensors:
        moved = t.to(use).contiguous()
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        out.append(moved.cpu())
    return out
