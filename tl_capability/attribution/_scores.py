"""[`NeuronScores`][tl_capability.attribution.NeuronScores]: per-neuron scores over a dataset,
ranked, saved and loaded; [`neuron_order`][tl_capability.attribution.neuron_order] ranks any
``[layer, d_mlp]`` values the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_capability._storage import load_pair, save_pair
from tl_capability.options import AttributionMethod, check_option, check_positive_int


def neuron_order(values: Float[Tensor, "layer d_mlp"]) -> Int[Tensor, "neuron 2"]:
    """Every neuron as ``(layer, index)``, highest value first (ties: lower flat index first;
    ``-inf`` last, so callers can rule neurons out)."""
    flat = torch.sort(-values.flatten(), stable=True).indices
    return torch.stack(torch.unravel_index(flat, values.shape), dim=1)


@dataclass(frozen=True)
class NeuronScores:
    """Per-neuron attribution scores over a dataset.

    Attributes:
        values: Mean score over samples.
        std: Standard deviation over samples (``n - 1`` denominator).
        n: Number of samples.
        method: ``"ig"``, ``"grad_x_act"``, ``"neurgrad"`` or ``"activation"``.
        params: The method's parameters and the model's signature (``n_layers``, ``d_mlp``,
            ``model_name``, ``site``), for provenance and for refusing foreign models.
        per_sample: Each sample's score, in dataset order, when asked for.
    """

    values: Float[Tensor, "layer d_mlp"]
    std: Float[Tensor, "layer d_mlp"]
    n: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    per_sample: Float[Tensor, "sample layer d_mlp"] | None = None

    @property
    def n_layers(self) -> int:
        return self.values.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.values.shape[1]

    def ranking(self, *, absolute: bool = False) -> Int[Tensor, "neuron 2"]:
        """Every neuron as ``(layer, index)``, highest score first (ties by flat index).

        Args:
            absolute: Rank by ``|score|`` (NeurGrad and grad × act scores are signed).
        """
        return neuron_order(self.values.abs() if absolute else self.values)

    def top(self, k: int, *, absolute: bool = False) -> Int[Tensor, "k 2"]:
        """The ``k`` highest-scoring neurons as ``(layer, index)`` rows, best first.

        Args:
            k: How many (0 to the number of neurons).
            absolute: Rank by ``|score|``.

        Raises:
            ValueError: When ``k`` is not an integer in ``0..n_layers * d_mlp``.
        """
        total = self.values.numel()
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= total:
            raise ValueError(f"k must be an integer in 0..{total}, got {k!r}")
        return self.ranking(absolute=absolute)[:k]

    def save(self, path: str | Path) -> None:
        """Writes ``scores.safetensors`` and ``scores.json`` into the directory ``path``.

        The pair is replaced as a whole: an interrupted save leaves the previous pair, or one
        that [`load`][tl_capability.attribution.NeuronScores.load] refuses; the tensors carry a
        checksum.

        Raises:
            ValueError: When a tensor holds NaN or infinite values (``load`` would refuse
                them); nothing is written.
        """
        tensors = {"values": self.values.contiguous(), "std": self.std.contiguous()}
        if self.per_sample is not None:
            tensors["per_sample"] = self.per_sample.contiguous()
        for name, t in tensors.items():  # what load would refuse is refused before writing
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(
                    f"cannot save these scores: {name} holds NaN or infinite values, which "
                    f"NeuronScores.load refuses (nothing was written to {path})"
                )
        meta = {"n": self.n, "method": self.method, "params": self.params}
        save_pair(Path(path), "scores", tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> NeuronScores:
        """Reads what [`save`][tl_capability.attribution.NeuronScores.save] wrote, checking that it
        is whole and consistent.

        Raises:
            FileNotFoundError: When a file is missing.
            ValueError: Naming the folder, for unreadable or mismatched files, tensors of the
                wrong shapes, dtypes or with NaN / infinite values, or bad metadata.
        """
        path = Path(path)
        tensors, meta = load_pair(path, "scores")

        def bad(why: str) -> ValueError:
            return ValueError(f"{path} does not hold valid scores: {why}")

        n, method, params = meta.get("n"), meta.get("method"), meta.get("params", {})
        try:
            check_positive_int(n, "n")
            check_option(method, AttributionMethod, "method")
        except ValueError as e:
            raise bad(str(e)) from None
        if not isinstance(params, dict):
            raise bad(f"params must be a JSON object, got {type(params).__name__}")
        missing = {"values", "std"} - set(tensors)
        if missing:
            raise bad(f"scores.safetensors lacks {sorted(missing)}")
        values, std, per_sample = tensors["values"], tensors["std"], tensors.get("per_sample")
        if values.dim() != 2 or std.shape != values.shape:
            raise bad(
                f"values {tuple(values.shape)} and std {tuple(std.shape)} must share one "
                "[layer, d_mlp] shape"
            )
        for key, size in (("n_layers", values.shape[0]), ("d_mlp", values.shape[1])):
            if key in params and params[key] != size:
                raise bad(f"params say {key} = {params[key]!r} but the tensors have {size}")
        if per_sample is not None and per_sample.shape != (n, *values.shape):
            raise bad(
                f"per_sample has shape {tuple(per_sample.shape)}, expected "
                f"{(n, *values.shape)} (n = {n})"
            )
        for name, t in tensors.items():
            if name not in ("values", "std", "per_sample"):
                raise bad(f"unexpected tensor {name!r}")
            if not t.is_floating_point():
                raise bad(f"{name} has dtype {t.dtype}, expected a float dtype")
            if not torch.isfinite(t).all():
                raise bad(f"{name} holds NaN or infinite values")
        return cls(values, std, n, method, params, per_sample)
