"""Mergeable running statistics of per-neuron scores.

Attribution over a dataset of any length keeps only a count, a sum and a sum of squares per
neuron, in float64. Two [`Moments`][tl_capability.attribution._moments.Moments] over disjoint
shards merge exactly (``a + b``), which is what lets distributed ranks all-reduce
([`all_reduce_sum`][tl_capability.attribution._distributed.all_reduce_sum]) and interrupted runs
resume from a checkpoint ([`Checkpoint`][tl_capability.attribution._checkpoint.Checkpoint]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
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
        """Inverse of [`state_dict`][tl_capability.attribution._moments.Moments.state_dict]."""
        return cls(int(state["count"][0]), state["total"].double(), state["total_sq"].double())
