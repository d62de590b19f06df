"""What a knowledge circuit covers: its heads and MLPs
([`CircuitMask`][tl_capability.circuits.CircuitMask]), with overlap, IoU and the MLP neurons as a
[`NeuronMask`][tl_capability.masks.NeuronMask]. [`tl_capability.circuits`][tl_capability.circuits]
re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor

from tl_capability.masks import NeuronMask


@dataclass(frozen=True, eq=False)
class CircuitMask:
    """The heads and MLPs of a circuit: the located parameters, comparable like
    [`NeuronMask`][tl_capability.masks.NeuronMask]s.

    Attributes:
        heads: ``heads[l, h]``: head ``h`` of layer ``l`` is in the circuit.
        mlps: ``mlps[l]``: the MLP of layer ``l`` is in the circuit.
        d_mlp: Neurons per MLP, for [`neuron_mask`][tl_capability.circuits.CircuitMask.neuron_mask].
        model_name: The model's name when known.
    """

    heads: Bool[Tensor, "layer head"]
    mlps: Bool[Tensor, " layer"]
    d_mlp: int | None = None
    model_name: str | None = None

    def __post_init__(self) -> None:
        if self.heads.dtype != torch.bool or self.mlps.dtype != torch.bool:
            raise ValueError("a CircuitMask holds bool tensors")
        if self.heads.dim() != 2 or self.mlps.shape != self.heads.shape[:1]:
            raise ValueError(f"heads {tuple(self.heads.shape)} and mlps {tuple(self.mlps.shape)}")

    def __len__(self) -> int:
        return int(self.heads.sum() + self.mlps.sum())

    def __repr__(self) -> str:
        return f"CircuitMask({int(self.heads.sum())} heads, {int(self.mlps.sum())} MLPs)"

    @property
    def layers(self) -> list[int]:
        """The layers with a head or the MLP in the circuit."""
        return (self.heads.any(1) | self.mlps).nonzero().flatten().tolist()

    def _flat(self, other: CircuitMask | None = None) -> Tensor:
        mask = self if other is None else other
        if not isinstance(mask, CircuitMask):
            raise TypeError(f"expected a CircuitMask, got {type(mask).__name__}")
        if mask.heads.shape != self.heads.shape:
            raise ValueError(f"masks of {tuple(self.heads.shape)} and {tuple(mask.heads.shape)}")
        return torch.cat([mask.heads.flatten(), mask.mlps])

    def overlap(self, other: CircuitMask) -> float:
        """``(|a∩b|/|a| + |a∩b|/|b|) / 2``, as ``NeuronMask.overlap``; 1 for two empty sets."""
        a, b = self._flat(), self._flat(other)
        both, na, nb = int((a & b).sum()), int(a.sum()), int(b.sum())
        return float(na == nb) if na == 0 or nb == 0 else (both / na + both / nb) / 2

    def iou(self, other: CircuitMask) -> float:
        """``|a∩b| / |a∪b|``; 1 for two empty sets."""
        a, b = self._flat(), self._flat(other)
        union = int((a | b).sum())
        return 1.0 if union == 0 else int((a & b).sum()) / union

    def neuron_mask(self, d_mlp: int | None = None) -> NeuronMask:
        """Every neuron of the circuit's MLPs.

        Raises:
            ValueError: Without ``d_mlp`` when the mask does not know it.
        """
        width = d_mlp or self.d_mlp
        if width is None:
            raise ValueError("pass d_mlp: this mask does not know the MLPs' width")
        tensor = self.mlps[:, None].expand(-1, width).clone()
        return NeuronMask(tensor, self.model_name, selection={"rule": "circuit MLPs"})
