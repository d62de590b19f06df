"""The set of neurons (private module of [`tl_capability.masks`][tl_capability.masks]):
[`NeuronMask`][tl_capability.masks.NeuronMask] and the random placebo sets of
[`random_controls`][tl_capability.masks.random_controls]."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tl_capability._neuron_hooks import neuron_hooks
from tl_capability._storage import load_pair, save_pair
from tl_capability.options import InterventionMode, Site, check_option, check_positive_int


@dataclass(frozen=True, eq=False)
class NeuronMask:
    """A set of MLP neurons of one model.

    Attributes:
        tensor: ``tensor[l, j]`` is true when neuron ``j`` of layer ``l`` is in the set.
        model_name: The model's name when known (provenance, not checked).
        site: ``"post"`` or ``"pre"``: which hook the neurons live on.
        selection: How the set was chosen (rule, parameters, dataset), for reports.
    """

    tensor: Bool[Tensor, "layer d_mlp"]
    model_name: str | None = None
    site: str = "post"
    selection: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tensor.dtype != torch.bool or self.tensor.dim() != 2:
            raise ValueError(
                f"a mask is a 2-D bool tensor, got {self.tensor.dtype} {tuple(self.tensor.shape)}"
            )
        object.__setattr__(self, "tensor", self.tensor.detach().cpu())

    # ------------------------------------------------------------------ construction

    @classmethod
    def empty(cls, n_layers: int, d_mlp: int, **meta: Any) -> NeuronMask:
        """The empty set for a model of this shape."""
        return cls(torch.zeros(n_layers, d_mlp, dtype=torch.bool), **meta)

    @classmethod
    def from_indices(
        cls, pairs: Sequence[tuple[int, int]] | Tensor, n_layers: int, d_mlp: int, **meta: Any
    ) -> NeuronMask:
        """The set of the given ``(layer, index)`` pairs."""
        mask = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
        pairs = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2)
        if len(pairs) and (
            (pairs[:, 0] < 0).any()
            or (pairs[:, 0] >= n_layers).any()
            or (pairs[:, 1] < 0).any()
            or (pairs[:, 1] >= d_mlp).any()
        ):
            raise ValueError(f"neuron index out of range for {n_layers} layers x {d_mlp}")
        mask[pairs[:, 0], pairs[:, 1]] = True
        return cls(mask, **meta)

    # ------------------------------------------------------------------ shape

    @property
    def n_layers(self) -> int:
        return self.tensor.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.tensor.shape[1]

    def __len__(self) -> int:
        return int(self.tensor.sum())

    def per_layer(self) -> list[int]:
        """Number of neurons in each layer."""
        return self.tensor.sum(1).tolist()

    def indices(self) -> Int[Tensor, "neuron 2"]:
        """``(layer, index)`` of every neuron, sorted."""
        return self.tensor.nonzero()

    @property
    def fraction(self) -> float:
        """Fraction of all the model's neurons in the set."""
        return len(self) / self.tensor.numel()

    def check_fits(self, n_layers: int, d_mlp: int, site: str | None = None) -> None:
        """Raises ``ValueError`` unless the mask was made for a model of this shape and site."""
        if (self.n_layers, self.d_mlp) != (n_layers, d_mlp):
            raise ValueError(
                f"this mask is for a model with {self.n_layers} layers of {self.d_mlp} neurons "
                f"(model {self.model_name!r}), not {n_layers} x {d_mlp}"
            )
        if site is not None and site != self.site:
            raise ValueError(f"this mask is for site {self.site!r}, not {site!r}")

    def __repr__(self) -> str:
        return (
            f"NeuronMask({len(self)} of {self.tensor.numel()} neurons, per layer "
            f"{self.per_layer()}, site={self.site!r})"
        )

    # ------------------------------------------------------------------ algebra

    def _other(self, other: NeuronMask) -> Tensor:
        if not isinstance(other, NeuronMask):
            raise TypeError(f"expected a NeuronMask, got {type(other).__name__}")
        other.check_fits(self.n_layers, self.d_mlp, self.site)
        return other.tensor

    def _derived(self, tensor: Tensor, op: str) -> NeuronMask:
        return replace(self, tensor=tensor, selection={"op": op})

    def __and__(self, other: NeuronMask) -> NeuronMask:
        return self._derived(self.tensor & self._other(other), "and")

    def __or__(self, other: NeuronMask) -> NeuronMask:
        return self._derived(self.tensor | self._other(other), "or")

    def __sub__(self, other: NeuronMask) -> NeuronMask:
        return self._derived(self.tensor & ~self._other(other), "minus")

    def __invert__(self) -> NeuronMask:
        return self._derived(~self.tensor, "not")

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, NeuronMask)
            and self.tensor.shape == other.tensor.shape
            and bool(torch.equal(self.tensor, other.tensor))
            and self.site == other.site
        )

    __hash__ = None  # type: ignore[assignment]

    def overlap(self, other: NeuronMask) -> float:
        """``(|a∩b|/|a| + |a∩b|/|b|) / 2`` (CNL poster); 1 for two empty sets, 0 for one."""
        both = int((self.tensor & self._other(other)).sum())
        a, b = len(self), len(other)
        if a == 0 or b == 0:
            return float(a == b)
        return (both / a + both / b) / 2

    def iou(self, other: NeuronMask) -> float:
        """``|a∩b| / |a∪b|``; 1 for two empty sets."""
        union = int((self.tensor | self._other(other)).sum())
        if union == 0:
            return 1.0
        return int((self.tensor & other.tensor).sum()) / union

    def random_like(self, seed: int = 0) -> NeuronMask:
        """A random set with the same number of neurons in every layer: the placebo for any
        claim about these neurons."""
        gen = torch.Generator().manual_seed(seed)
        out = torch.zeros_like(self.tensor)
        for layer, count in enumerate(self.per_layer()):
            out[layer, torch.randperm(self.d_mlp, generator=gen)[:count]] = True
        return replace(
            self, tensor=out, selection={"rule": "random_like", "seed": seed, "of": self.selection}
        )

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Writes ``mask.safetensors`` and ``mask.json`` into the directory ``path``.

        The pair is replaced as a whole (see ``_storage.save_pair``): an interrupted save
        leaves the previous pair, or one that [`load`][tl_capability.masks.NeuronMask.load] refuses.
        """
        meta = {
            "model_name": self.model_name,
            "site": self.site,
            "selection": self.selection,
            "n_layers": self.n_layers,
            "d_mlp": self.d_mlp,
            "count": len(self),
        }
        save_pair(Path(path), "mask", {"mask": self.tensor.contiguous()}, meta)

    @classmethod
    def load(cls, path: str | Path) -> NeuronMask:
        """Reads what [`save`][tl_capability.masks.NeuronMask.save] wrote, checking the tensor
        against the JSON.

        Raises:
            FileNotFoundError: When a file is missing.
            ValueError: Naming the folder, for unreadable or mismatched files, a tensor that is
                not a 2-D bool mask, a site other than ``"post"`` / ``"pre"``, or a stored
                ``count`` / ``n_layers`` / ``d_mlp`` that disagrees with the tensor.
        """
        path = Path(path)
        tensors, meta = load_pair(path, "mask")

        def bad(why: str) -> ValueError:
            return ValueError(f"{path} does not hold a valid mask: {why}")

        tensor = tensors.get("mask")
        if tensor is None or tensor.dtype != torch.bool or tensor.dim() != 2:
            what = "nothing" if tensor is None else f"{tensor.dtype} {tuple(tensor.shape)}"
            raise bad(f"mask.safetensors holds {what}, expected a 2-D bool 'mask' tensor")
        site = meta.get("site", "post")
        try:
            check_option(site, Site, "site")
        except ValueError as e:
            raise bad(str(e)) from None
        selection = meta.get("selection", {})
        if not isinstance(selection, dict):
            raise bad(f"selection must be a JSON object, got {type(selection).__name__}")
        model = meta.get("model_name")
        if model is not None and not isinstance(model, str):
            raise bad(f"model_name must be a string, got {model!r}")
        stored = {"count": int(tensor.sum()), "n_layers": tensor.shape[0], "d_mlp": tensor.shape[1]}
        for key, actual in stored.items():
            if key in meta and (type(meta[key]) is not int or meta[key] != actual):
                raise bad(f"mask.json says {key} = {meta[key]!r}, the tensor has {actual}")
        return cls(tensor, model, site, selection)

    # ------------------------------------------------------------------ interventions

    def hooks(self, mode: InterventionMode = "zero", **kwargs: Any) -> list[tuple[str, Any]]:
        """Forward hooks applying an intervention to these neurons, for ``model.hooks(...)``,
        ``run_with_hooks`` or ``run_with_cache``; the keyword arguments and errors are
        [`mask_hooks`][tl_capability.interventions.mask_hooks]'s. When run, a hook refuses
        activations of another width than the mask's (a mask made for another model)."""
        return neuron_hooks(self.tensor, self.site, mode, **kwargs)


def random_controls(
    mask: NeuronMask,
    n: int,
    *,
    seed: int,
    per_layer: bool = True,
    exclude: NeuronMask | None = None,
    size: int | None = None,
) -> tuple[NeuronMask, ...]:
    """``n`` random control sets for a claim about ``mask``'s neurons: the placebo of every
    experiment (erase, amplify, enhancement, reliability, linearity, the skill probe, erase
    curves and the CLI draw their random sets here).

    Set ``i`` is drawn with its own generator seeded ``seed + i``, so it depends on
    ``(seed, i)`` only: asking for more sets adds sets and leaves the first ones unchanged.

    Example:
        >>> controls = random_controls(mask, 5, seed=0)  # same count in every layer
        >>> outside = random_controls(top, 1, seed=0, per_layer=False, exclude=top, size=20)

    Args:
        mask: The set the controls stand beside; they share its shape, site and model name.
        n: Number of sets (0 gives none).
        seed: Seed of the first set; set ``i`` uses ``seed + i``.
        per_layer: ``True``: every set has ``mask``'s number of neurons in every layer (with
            no ``exclude``, set ``i`` equals ``mask.random_like(seed=seed + i)``). ``False``:
            every set has ``size`` neurons drawn uniformly among all layers' neurons.
        exclude: Neurons never drawn (e.g. ``mask`` itself, for random neurons outside it).
        size: With ``per_layer=False``, the neurons per set (default ``len(mask)``).

    Returns:
        The ``n`` sets, in seed order.

    Raises:
        ValueError: For a negative ``n`` or ``size``, ``size`` given with ``per_layer=True``,
            or fewer neurons left to draw from (after ``exclude``) than a set needs.
        TypeError: For an ``exclude`` that is not a [`NeuronMask`][tl_capability.masks.NeuronMask].
    """
    check_positive_int(n, "n", minimum=0)
    if per_layer and size is not None:
        raise ValueError("size is for per_layer=False; per-layer sets keep mask's counts")
    size = len(mask) if size is None else size
    check_positive_int(size, "size", minimum=0)
    allowed = ~mask._other(exclude) if exclude is not None else torch.ones_like(mask.tensor)
    if per_layer:
        counts = mask.per_layer()
        short = [i for i, c in enumerate(counts) if c > int(allowed[i].sum())]
        if short:
            raise ValueError(f"too few neurons left to draw from in layers {short}")
    elif size > int(allowed.sum()):
        raise ValueError(f"{size} neurons asked for, {int(allowed.sum())} left to draw from")
    excluded = 0 if exclude is None else len(exclude)
    sets = []
    for i in range(n):
        gen = torch.Generator().manual_seed(seed + i)
        out = torch.zeros_like(mask.tensor)
        if per_layer:
            for layer, count in enumerate(counts):
                pool = allowed[layer].nonzero().squeeze(1)
                out[layer, pool[torch.randperm(len(pool), generator=gen)[:count]]] = True
        else:
            pool = allowed.flatten().nonzero().squeeze(1)
            out.view(-1)[pool[torch.randperm(len(pool), generator=gen)[:size]]] = True
        selection = {
            "rule": "random_controls",
            "seed": seed + i,
            "per_layer": per_layer,
            "excluded": excluded,
            "of": mask.selection,
        }
        sets.append(replace(mask, tensor=out, selection=selection))
    return tuple(sets)
