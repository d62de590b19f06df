"""Mergeable running statistics for per-neuron scores.

Attribution over a dataset of any length keeps only a count, a sum and a sum of squares per
neuron, in float64. Two :class:`Moments` over disjoint shards merge exactly (``a + b``), which is
what lets distributed ranks all-reduce (:func:`all_reduce_sum`) and interrupted runs resume from
an atomic checkpoint (:func:`save_atomic`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor


@dataclass
class Moments:
    """Count, sum and sum of squares of samples of a fixed-shape tensor.

    Attributes:
        count: Number of samples added.
        total: Sum of the samples (float64).
        total_sq: Sum of their squares (float64).
    """

    count: int
    total: Float[Tensor, ...]
    total_sq: Float[Tensor, ...]

    @classmethod
    def zeros(cls, *shape: int) -> Moments:
        """Empty statistics for samples of ``shape``."""
        z = torch.zeros(shape, dtype=torch.float64)
        return cls(0, z, z.clone())

    def add(self, samples: Float[Tensor, "n ..."]) -> None:
        """Adds a batch of samples (first axis) in place."""
        if samples.shape[1:] != self.total.shape:
            raise ValueError(
                f"samples of shape {tuple(samples.shape[1:])}, expected {tuple(self.total.shape)}"
            )
        x = samples.detach().to(device="cpu", dtype=torch.float64)
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.total_sq += (x * x).sum(0)

    def __add__(self, other: Moments) -> Moments:
        if self.total.shape != other.total.shape:
            raise ValueError("cannot merge statistics of different shapes")
        return Moments(
            self.count + other.count, self.total + other.total, self.total_sq + other.total_sq
        )

    @property
    def mean(self) -> Float[Tensor, ...]:
        """The mean, in float32."""
        if self.count == 0:
            raise ValueError("no samples")
        return (self.total / self.count).float()

    @property
    def std(self) -> Float[Tensor, ...]:
        """The sample standard deviation (``n - 1`` in the denominator; 0 for one sample)."""
        if self.count < 2:
            return torch.zeros_like(self.total, dtype=torch.float32)
        mean = self.total / self.count
        var = (self.total_sq - self.count * mean * mean) / (self.count - 1)
        return var.clamp_min(0).sqrt().float()

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors for safetensors (the count as a one-element int64 tensor)."""
        return {
            "count": torch.tensor([self.count], dtype=torch.int64),
            "total": self.total.contiguous(),
            "total_sq": self.total_sq.contiguous(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> Moments:
        """Inverse of :meth:`state_dict`."""
        return cls(int(state["count"][0]), state["total"].double(), state["total_sq"].double())


def distributed_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the ``torch.distributed`` group, or ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensors: list[Tensor], device: torch.device | None = None) -> list[Tensor]:
    """Sums tensors across ranks (a no-op in a single process); returns them on the CPU.

    NCCL reduces only GPU tensors, so they travel through ``device`` (the model's) there.
    """
    import torch.distributed as dist

    if distributed_info()[1] == 1:
        return tensors
    use = device if dist.get_backend() == "nccl" else torch.device("cpu")
    out = []
    for t in tensors:
        moved = t.to(use).contiguous()
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        out.append(moved.cpu())
    return out


def save_atomic(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Writes ``path`` (safetensors, with ``meta`` as JSON in its header) atomically: a run
    killed mid-write leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"meta": json.dumps(meta)}
    )
    os.replace(tmp, path)


def load_atomic(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Reads what :func:`save_atomic` wrote."""
    with safe_open(path, framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    return tensors, meta
