"""Sets of neurons: selection from scores, set algebra, overlap, random placebos, save / load.

A [`NeuronMask`][tl_capability.masks.NeuronMask] is a boolean ``[layer, d_mlp]`` tensor plus where
it came from (the model's shape and name, the neuron site, how it was selected). Selection rules:

- ``sigma``: the capability-localization rule (Huang et al., ICLR 2025),
  ``|s − mean(s)| > σ · std(s)`` over all neurons of all layers. The poster writes the variance;
  we read it as the standard deviation (the variance is not in the scores' units).
- ``top_k`` / ``quantile``: the largest scores.

``side`` says which tail counts: ``"positive"`` (the default: neurons that *raise* the answer's
probability, the ones whose removal should hurt), ``"negative"``, or ``"both"`` (``|s|``, the
poster's literal rule). The defaults, ``sigma=2`` on the positive side, were chosen by measuring
on the zoo model and on two sibling models trained with other seeds and shapes; see
``docs/findings.md`` (the paper's σ = 3, 6, 12 keep too few neurons of a small model to matter).
- ``fraction_of_max``: the knowledge-neuron coarse rule (Dai et al., ACL 2022),
  ``s > t · max(s)``, applied per prompt by [`coarse_masks`][tl_capability.masks.coarse_masks];
  [`refine`][tl_capability.masks.refine] then keeps the neurons shared by more than a fraction ``p``
  of one fact's prompts.

Masks give intervention hooks ([`NeuronMask.hooks`][tl_capability.masks.NeuronMask.hooks], see
[`tl_capability.interventions`][tl_capability.interventions]) that compose with any TransformerLens
analysis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_capability._storage import load_pair, save_pair
from tl_capability.options import Side, Site, check_option

SITES = get_args(Site)


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

    def hooks(self, mode: str = "zero", **kwargs: Any) -> list[tuple[str, Any]]:
        """Forward hooks applying an intervention to these neurons, for ``model.hooks(...)``,
        ``run_with_hooks`` or ``run_with_cache``. See
        [`mask_hooks`][tl_capability.interventions.mask_hooks]."""
        from tl_capability.interventions import mask_hooks

        return mask_hooks(self, mode, **kwargs)


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
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if per_layer and size is not None:
        raise ValueError("size is for per_layer=False; per-layer sets keep mask's counts")
    size = len(mask) if size is None else size
    if size < 0:
        raise ValueError(f"size must be non-negative, got {size}")
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


def _scores_tensor(scores: Any) -> Float[Tensor, "layer d_mlp"]:
    values = scores if isinstance(scores, Tensor) else getattr(scores, "values", None)
    if not isinstance(values, Tensor) or values.dim() != 2:
        raise ValueError("scores must be NeuronScores or a [layer, d_mlp] tensor")
    if not torch.isfinite(values).all():
        bad = (~torch.isfinite(values)).nonzero()[0].tolist()
        raise ValueError(f"scores contain NaN or infinite values (first at layer, neuron {bad})")
    return values.detach().float().cpu()


DEFAULT_SIGMA = 2.0
SIDES = get_args(Side)


def select(
    scores: Any,
    *,
    sigma: float | None = None,
    top_k: int | None = None,
    fraction_of_max: float | None = None,
    quantile: float | None = None,
    side: Side = "positive",
) -> NeuronMask:
    """Selects neurons from scores by one rule (``sigma=2`` when none is given).

    Args:
        scores: [`NeuronScores`][tl_capability.attribution.NeuronScores] or a ``[layer, d_mlp]``
            tensor.
        sigma: ``d > σ · std(s)`` over all neurons, with ``d = s − mean(s)`` on the positive
            side, ``mean(s) − s`` on the negative side, ``|s − mean(s)|`` for both.
        top_k: The ``k`` neurons with the largest ``s`` (``−s``, ``|s|`` by ``side``).
        fraction_of_max: ``s > t · max(s)`` (knowledge-neuron coarse rule; ignores ``side``).
        quantile: Scores at or above this quantile (0.99 keeps the top 1 %), by ``side``.
        side: ``"positive"``, ``"negative"`` or ``"both"`` (see the module docstring).

    Raises:
        ValueError: For more than one rule, an unknown side, or a parameter out of range.
    """
    check_option(side, Side, "side")
    values = _scores_tensor(scores)
    signed = {"positive": values, "negative": -values, "both": values.abs()}[side]
    given = {
        k: v
        for k, v in dict(
            sigma=sigma, top_k=top_k, fraction_of_max=fraction_of_max, quantile=quantile
        ).items()
        if v is not None
    }
    if len(given) > 1:
        raise ValueError(f"choose one selection rule, got {sorted(given)}")
    rule, param = next(iter(given.items())) if given else ("sigma", DEFAULT_SIGMA)
    if rule == "sigma":
        if param < 0:
            raise ValueError("sigma must be non-negative")
        centred = values - values.mean()
        deviation = {"positive": centred, "negative": -centred, "both": centred.abs()}[side]
        mask = deviation > param * values.std()
    elif rule == "top_k":
        if not 0 <= param <= values.numel():
            raise ValueError(f"top_k must be in 0..{values.numel()}")
        mask = torch.zeros(values.numel(), dtype=torch.bool)
        mask[signed.flatten().topk(int(param)).indices] = True
        mask = mask.view_as(values)
    elif rule == "fraction_of_max":
        if not 0 <= param <= 1:
            raise ValueError("fraction_of_max must be in [0, 1]")
        mask = values > param * values.max()
    else:
        if not 0 <= param <= 1:
            raise ValueError("quantile must be in [0, 1]")
        mask = signed >= torch.quantile(signed.flatten(), param)
    params = {} if isinstance(scores, Tensor) else getattr(scores, "params", {})
    return NeuronMask(
        mask,
        params.get("model_name"),
        params.get("site", "post"),
        {
            "rule": rule,
            "value": param,
            "side": "positive" if rule == "fraction_of_max" else side,
            "method": getattr(scores, "method", None),
            "dataset": params.get("dataset"),
        },
    )


def coarse_masks(scores: Any, fraction_of_max: float = 0.2) -> list[NeuronMask]:
    """Knowledge-neuron coarse selection per prompt: ``s > t · max(s)`` on each sample's scores
    (``scores`` computed with ``per_sample=True``; t = 0.2 in Dai et al.'s code)."""
    per_sample = getattr(scores, "per_sample", None)
    if per_sample is None:
        raise ValueError("coarse_masks needs scores computed with per_sample=True")
    meta = {k: getattr(scores, "params", {}).get(k) for k in ("model_name", "site")}
    return [
        replace(
            select(s, fraction_of_max=fraction_of_max),
            model_name=meta["model_name"],
            site=meta["site"] or "post",
        )
        for s in per_sample
    ]


def refine(
    masks: Sequence[NeuronMask],
    share: float = 0.7,
    negatives: NeuronMask | Sequence[NeuronMask] | None = None,
    negative_share: float = 0.0,
) -> NeuronMask:
    """Knowledge-neuron refinement: neurons selected in more than ``share`` of the masks.

    Args:
        masks: One mask per paraphrased prompt of a fact (from
            [`coarse_masks`][tl_capability.masks.coarse_masks]).
        share: Keep neurons in strictly more than this fraction of ``masks`` (0.7 in Dai et
            al.'s code, 0.5 in EleutherAI's library).
        negatives: Masks of unrelated facts; neurons found in more than ``negative_share`` of
            them are removed (they express something other than this fact).
        negative_share: Threshold for ``negatives`` (0: any occurrence removes the neuron).
    """
    if not masks:
        raise ValueError("refine needs at least one mask")
    first = masks[0]
    stack = torch.stack([first._other(m) for m in masks])
    kept = stack.float().mean(0) > share
    if negatives is not None:
        negs = [negatives] if isinstance(negatives, NeuronMask) else list(negatives)
        if negs:
            neg = torch.stack([first._other(m) for m in negs]).float().mean(0)
            kept &= ~(neg > negative_share)
    return replace(
        first,
        tensor=kept,
        selection={
            "rule": "refine",
            "share": share,
            "prompts": len(masks),
            "negatives": 0 if negatives is None else len(negs),
            "negative_share": negative_share,
        },
    )
