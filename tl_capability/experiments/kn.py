"""Knowledge-neuron experiments (Dai et al., ACL 2022; evaluated by Huang et al., ICLR 2025).

- :func:`fidelity`: are the knowledge neurons of a fact the same whichever paraphrase asks for
  it? Coarse neurons (``s > t · max s`` on one prompt's IG) are located from every paraphrase
  separately and compared pairwise (overlap, IoU). The control compares the first paraphrases of
  two *different* facts: fidelity means something only if it beats that.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from typing import Any

from tl_capability.attribution import attribute
from tl_capability.data import CapabilityDataset
from tl_capability.experiments._results import Table, mean_ci
from tl_capability.masks import NeuronMask, coarse_masks, refine


def fidelity(
    model: Any,
    facts: Mapping[str, CapabilityDataset],
    *,
    fraction_of_max: float = 0.2,
    share: float = 0.7,
    **attribute_kwargs: Any,
) -> Table:
    """Overlap of the knowledge neurons located from different paraphrases of the same fact.

    Args:
        model: The model.
        facts: For each fact, a dataset of its paraphrased prompts (same answer), at least two.
        fraction_of_max: Coarse rule threshold ``t`` per prompt (Dai et al.: 0.2).
        share: Refinement threshold for the per-fact refined set (Dai et al.: 0.7).

    Returns:
        One row per fact (paraphrases, coarse neurons per prompt, refined neurons, mean
        pairwise overlap and IoU), then a ``mean`` row (± 95 % over facts) and a
        ``different facts`` control row (pairwise overlap of different facts' first
        paraphrases).
    """
    attribute_kwargs.setdefault("progress", False)
    rows = []
    firsts: list[NeuronMask] = []
    overlaps: list[float] = []
    for name, data in facts.items():
        if len(data) < 2:
            raise ValueError(f"fact {name!r} needs at least two paraphrases")
        scores = attribute(model, data, per_sample=True, **attribute_kwargs)
        masks = coarse_masks(scores, fraction_of_max)
        firsts.append(masks[0])
        pairs = list(combinations(masks, 2))
        overlap = sum(a.overlap(b) for a, b in pairs) / len(pairs)
        overlaps.append(overlap)
        rows.append(
            {
                "fact": name,
                "paraphrases": len(data),
                "coarse_per_prompt": sum(len(m) for m in masks) / len(masks),
                "refined": len(refine(masks, share)),
                "overlap": overlap,
                "iou": sum(a.iou(b) for a, b in pairs) / len(pairs),
                "ci95": None,
            }
        )
    summaries = [("mean", overlaps)]
    if len(firsts) >= 2:
        summaries.append(("different facts", [a.overlap(b) for a, b in combinations(firsts, 2)]))
    for label, values in summaries:
        mean, half = mean_ci(values)
        rows.append(
            {
                "fact": label,
                "paraphrases": None,
                "coarse_per_prompt": None,
                "refined": None,
                "overlap": mean,
                "iou": None,
                "ci95": half,
            }
        )
    return Table("Knowledge-neuron fidelity across paraphrases", tuple(rows))
