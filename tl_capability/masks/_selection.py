"""Selection rules from scores (private module of [`tl_capability.masks`][tl_capability.masks]):
[`select`][tl_capability.masks.select], [`coarse_masks`][tl_capability.masks.coarse_masks],
[`refine`][tl_capability.masks.refine]."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_capability.masks._mask import NeuronMask
from tl_capability.options import (
    Side,
    check_fraction,
    check_option,
    check_positive_int,
    check_range,
)


def _scores_tensor(scores: Any) -> Float[Tensor, "layer d_mlp"]:
    values = scores if isinstance(scores, Tensor) else getattr(scores, "values", None)
    if not isinstance(values, Tensor) or values.dim() != 2:
        raise ValueError("scores must be NeuronScores or a [layer, d_mlp] tensor")
    if not torch.isfinite(values).all():
        bad = (~torch.isfinite(values)).nonzero()[0].tolist()
        raise ValueError(f"scores contain NaN or infinite values (first at layer, neuron {bad})")
    return values.detach().float().cpu()


DEFAULT_SIGMA = 2.0


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
        check_range(param, "sigma", 0.0)
        centred = values - values.mean()
        deviation = {"positive": centred, "negative": -centred, "both": centred.abs()}[side]
        mask = deviation > param * values.std()
    elif rule == "top_k":
        if check_positive_int(param, "top_k", minimum=0) > values.numel():
            raise ValueError(f"top_k must be in 0..{values.numel()}, got {param}")
        mask = torch.zeros(values.numel(), dtype=torch.bool)
        mask[signed.flatten().topk(int(param)).indices] = True
        mask = mask.view_as(values)
    elif rule == "fraction_of_max":
        check_fraction(param, "fraction_of_max", zero_ok=True)
        mask = values > param * values.max()
    else:
        check_fraction(param, "quantile", zero_ok=True)
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
