"""Knowledge-neuron experiments (Dai et al., ACL 2022; evaluated by Huang et al., ICLR 2025).

- [`fidelity`][tl_capability.experiments.kn.fidelity]: are the knowledge neurons of a fact the same
  whichever paraphrase asks for it? Coarse neurons (``s > t · max s`` on one prompt's IG) are
  located from every paraphrase separately and compared pairwise (overlap, IoU). The control
  compares the first paraphrases of two *different* facts: fidelity means something only if it beats
  that.
- [`reliability`][tl_capability.experiments.kn.reliability]: the IPP of the CNL poster — does
  suppressing a located set lower the answer's probability more than the *best* of ``n`` random sets
  of the same size per layer?
- [`decoupling`][tl_capability.experiments.kn.decoupling]: the poster's coincidence rate between the
  knowledge neurons of paired samples that share their main part and differ in a replaceable part.
- [`fact_edits`][tl_capability.experiments.kn.fact_edits]: suppress, amplify and edit (with undo)
  single facts' knowledge neurons, each beside random sets of the same shape.
- [`knowledge_neurons`][tl_capability.experiments.kn.knowledge_neurons]: the refined knowledge
  neurons of each fact (coarse + refine); [`fidelity`][tl_capability.experiments.kn.fidelity]
  returns them too (``result.masks``), so both need not be run.

Random sets come from [`random_controls`][tl_capability.masks.random_controls] (set ``i`` seeded
``seed + i``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch

from tl_capability.attribution import attribute
from tl_capability.data import CapabilityDataset
from tl_capability.edits import edit_knowledge
from tl_capability.evaluate import answer_probability
from tl_capability.masks import NeuronMask, coarse_masks, random_controls, refine
from tl_capability.tables import Row, Table, mean_ci


@dataclass(frozen=True)
class FidelityRow(Row):
    """One fact's paraphrases compared, or a summary (``fact`` = ``"mean"`` or
    ``"different facts"``, with ``None`` in the per-fact fields).

    Attributes:
        fact: The fact's name, or the summary's label.
        paraphrases: Number of paraphrased prompts.
        coarse_per_prompt: Mean number of coarse neurons per prompt.
        refined: Number of refined knowledge neurons.
        overlap: Mean pairwise overlap of the prompts' coarse sets (summaries: the mean).
        iou: Mean pairwise IoU.
        ci95: Summaries: half-width of the mean's 95 % interval.
    """

    fact: str
    paraphrases: int | None
    coarse_per_prompt: float | None
    refined: int | None
    overlap: float
    iou: float | None
    ci95: float | None


@dataclass(frozen=True)
class FidelityResult(Table):
    """What [`fidelity`][tl_capability.experiments.kn.fidelity] measured.

    Attributes:
        rows: One row per fact, then the ``mean`` row and (for two facts or more) the
            ``different facts`` control row.
        masks: Each fact's refined knowledge neurons (what
            [`knowledge_neurons`][tl_capability.experiments.kn.knowledge_neurons] gives).
    """

    rows: tuple[FidelityRow, ...]
    masks: dict[str, NeuronMask]

    @property
    def summary(self) -> tuple[FidelityRow, ...]:
        """The summary rows (``mean``, ``different facts``)."""
        return tuple(r for r in self.rows if r.paraphrases is None)

    @property
    def mean_overlap(self) -> float:
        """The mean over facts of their paraphrases' overlap."""
        return next(r.overlap for r in self.rows if r.fact == "mean")


@dataclass(frozen=True)
class ReliabilityRow(Row):
    """One item's located set against its random sets, or the ``IPP`` summary (``None`` in
    the per-item fields, the share of wins in ``beats_best_random``).

    Attributes:
        item: The item's name, or ``"IPP"``.
        neurons: Size of the located set.
        base_prob: Mean answer probability with nothing suppressed.
        located_effect: Drop of the mean answer probability with the located set zeroed.
        best_random_effect: The largest drop among the random sets.
        mean_random_effect: The random sets' mean drop.
        beats_best_random: Whether the located set beats the best random one (``IPP`` row:
            the share of items where it does).
    """

    item: str
    neurons: int | None
    base_prob: float | None
    located_effect: float | None
    best_random_effect: float | None
    mean_random_effect: float | None
    beats_best_random: bool | float


@dataclass(frozen=True)
class ReliabilityResult(Table):
    """What [`reliability`][tl_capability.experiments.kn.reliability] measured.

    Attributes:
        rows: One row per item, then the ``IPP`` row.
        n_random: Random sets per item.
        seed: Seed of the first random set (set ``i`` uses ``seed + i``).
    """

    rows: tuple[ReliabilityRow, ...]
    n_random: int
    seed: int

    @property
    def ipp(self) -> float:
        """The share of items whose located set beats the best random set."""
        return float(self.rows[-1].beats_best_random)


@dataclass(frozen=True)
class DecouplingRow(Row):
    """One coincidence rate.

    Attributes:
        rate: ``"C(1,2)"``, ``"C(1,1)"`` or ``"C(2,2)"``.
        value: The rate, normalised by all neurons (as in the poster).
        neurons: The intersection's size (mean over pairs for ``C(1,2)``).
        relative: The intersection relative to the mean size of the sets involved.
    """

    rate: str
    value: float
    neurons: float
    relative: float


@dataclass(frozen=True)
class DecouplingResult(Table):
    """What [`decoupling`][tl_capability.experiments.kn.decoupling] measured: rows ``C(1,2)``,
    ``C(1,1)``, ``C(2,2)``."""

    rows: tuple[DecouplingRow, ...]


def fidelity(
    model: Any,
    facts: Mapping[str, CapabilityDataset],
    *,
    fraction_of_max: float = 0.2,
    share: float = 0.7,
    **attribute_kwargs: Any,
) -> FidelityResult:
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
        paraphrases); and each fact's refined knowledge neurons (``masks``).
    """
    attribute_kwargs.setdefault("progress", False)
    rows = []
    refined: dict[str, NeuronMask] = {}
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
        refined[name] = refine(masks, share)
        rows.append(
            FidelityRow(
                fact=name,
                paraphrases=len(data),
                coarse_per_prompt=sum(len(m) for m in masks) / len(masks),
                refined=len(refined[name]),
                overlap=overlap,
                iou=sum(a.iou(b) for a, b in pairs) / len(pairs),
                ci95=None,
            )
        )
    summaries = [("mean", overlaps)]
    if len(firsts) >= 2:
        summaries.append(("different facts", [a.overlap(b) for a, b in combinations(firsts, 2)]))
    for label, values in summaries:
        mean, half = mean_ci(values)
        rows.append(FidelityRow(label, None, None, None, mean, None, half))
    return FidelityResult("Knowledge-neuron fidelity across paraphrases", tuple(rows), refined)


def knowledge_neurons(
    model: Any,
    facts: Mapping[str, CapabilityDataset],
    *,
    fraction_of_max: float = 0.2,
    share: float = 0.7,
    **attribute_kwargs: Any,
) -> dict[str, NeuronMask]:
    """Each fact's refined knowledge neurons: coarse per paraphrase, then
    [`refine`][tl_capability.masks.refine].

    [`fidelity`][tl_capability.experiments.kn.fidelity] computes the same sets (its ``masks``):
    after it, use those.
    """
    attribute_kwargs.setdefault("progress", False)
    return {
        name: refine(
            coarse_masks(
                attribute(model, data, per_sample=True, **attribute_kwargs), fraction_of_max
            ),
            share,
        )
        for name, data in facts.items()
    }


def _suppressed_probability(model: Any, mask: NeuronMask, data: CapabilityDataset) -> float:
    return answer_probability(model, data, hooks=lambda b: mask.hooks()).mean().item()


def reliability(
    model: Any,
    masks: Mapping[str, NeuronMask],
    datasets: Mapping[str, CapabilityDataset],
    *,
    n_random: int = 20,
    seed: int = 0,
) -> ReliabilityResult:
    """IPP: how often a located set beats the best of ``n_random`` random sets of its size.

    For every item (a fact, or a capability) the located set and ``n_random`` random sets with
    the same number of neurons per layer (``random_controls(mask, n_random, seed=seed)``) are
    zeroed in turn; the effect is the drop of the mean answer probability
    ([`answer_probability`][tl_capability.evaluate.answer_probability]) on the item's data.

    Returns:
        One row per item (neurons, base probability, located effect, best and mean random
        effect, whether the located set beats the best random one), then an ``IPP`` row: the
        share of items whose located set wins (items with an empty set count as losses).
    """
    if n_random < 1:
        raise ValueError("n_random must be at least 1")
    missing = sorted(set(masks) - set(datasets))
    if missing:
        raise ValueError(f"no dataset for the masks {missing}")
    rows = []
    for name, mask in masks.items():
        data = datasets[name]
        base = answer_probability(model, data).mean().item()
        if len(mask):
            located = base - _suppressed_probability(model, mask, data)
            randoms = [
                base - _suppressed_probability(model, control, data)
                for control in random_controls(mask, n_random, seed=seed)
            ]
        else:
            located, randoms = 0.0, [0.0]
        rows.append(
            ReliabilityRow(
                item=name,
                neurons=len(mask),
                base_prob=base,
                located_effect=located,
                best_random_effect=max(randoms),
                mean_random_effect=sum(randoms) / len(randoms),
                beats_best_random=bool(len(mask)) and located > max(randoms),
            )
        )
    wins = [float(r.beats_best_random) for r in rows]
    rows.append(ReliabilityRow("IPP", None, None, None, None, None, sum(wins) / max(1, len(wins))))
    return ReliabilityResult(
        f"Reliability (IPP against the best of {n_random} random sets)",
        tuple(rows),
        n_random,
        seed,
    )


def decoupling(
    model: Any,
    first: CapabilityDataset,
    second: CapabilityDataset,
    *,
    fraction_of_max: float = 0.2,
    **attribute_kwargs: Any,
) -> DecouplingResult:
    """Coincidence rates of knowledge neurons between paired samples (CNL poster, Fig. 2).

    ``first[k]`` and ``second[k]`` share their main part and differ in a replaceable part.
    Every sample's coarse knowledge neurons ``A(x)`` (``s > t · max s``) are located, then, with
    ``L · J`` the number of neurons, as in the poster:

    - ``C(1,2) = 1/(n·L·J) Σ_k |A(x_k¹) ∩ A(x_k²)|`` (paired samples),
    - ``C(t,t) = 1/(L·J) |∩_k A(x_kᵗ)|`` (everything the samples of one group share).

    Because the poster's normalisation by all neurons makes the rates depend on how many
    neurons the coarse rule keeps, each row also gives the rate relative to the mean set size.

    Returns:
        Rows ``C(1,2)``, ``C(1,1)``, ``C(2,2)``: the rate, the intersection size, and the rate
        relative to the mean size of the sets involved.
    """
    if len(first) != len(second) or not len(first):
        raise ValueError(
            f"decoupling needs two aligned non-empty datasets, got {len(first)} "
            f"and {len(second)} samples"
        )
    attribute_kwargs.setdefault("progress", False)
    a = [
        m.tensor
        for m in coarse_masks(
            attribute(model, first, per_sample=True, **attribute_kwargs), fraction_of_max
        )
    ]
    b = [
        m.tensor
        for m in coarse_masks(
            attribute(model, second, per_sample=True, **attribute_kwargs), fraction_of_max
        )
    ]
    total = a[0].numel()
    size = sum(float(m.sum()) for m in a + b) / (len(a) + len(b))
    paired = sum(float((x & y).sum()) for x, y in zip(a, b, strict=True)) / len(a)
    rows = [DecouplingRow("C(1,2)", paired / total, paired, paired / max(size, 1e-9))]
    for label, group in (("C(1,1)", a), ("C(2,2)", b)):
        shared = float(torch.stack(group).all(0).sum())
        own = sum(float(m.sum()) for m in group) / len(group)
        rows.append(DecouplingRow(label, shared / total, shared, shared / max(own, 1e-9)))
    return DecouplingResult("Decoupling: coincidence rates of knowledge neurons", tuple(rows))


@dataclass(frozen=True)
class FactEditRow(Row):
    """One fact's knowledge neurons intervened on, against random sets of the same shape.

    Attributes:
        fact: The fact's name.
        neurons: Size of its refined set.
        p_clean: Mean P(answer) over its paraphrases, in percent.
        p_suppressed: The same with the set zeroed.
        p_suppressed_random: Mean over the random sets zeroed.
        p_amplified: The same with the set doubled.
        p_amplified_random: Mean over the random sets doubled.
        new_answer: The object the edit writes in (another fact's answer).
        p_new_before: Mean P(new answer) before the edit, in percent.
        p_new_after: Mean P(new answer) after it.
        p_new_after_random: Mean over the same edit in the random sets.
        undone: Whether undoing the edit restored every weight bit for bit.
    """

    fact: str
    neurons: int
    p_clean: float
    p_suppressed: float
    p_suppressed_random: float
    p_amplified: float
    p_amplified_random: float
    new_answer: str
    p_new_before: float
    p_new_after: float
    p_new_after_random: float
    undone: bool


@dataclass(frozen=True)
class FactEditResult(Table):
    """Suppress, amplify and edit of single facts (see
    [`fact_edits`][tl_capability.experiments.kn.fact_edits])."""

    rows: tuple[FactEditRow, ...]


def _mean_probability(model: Any, data: CapabilityDataset, hooks: list | None = None) -> float:
    chosen = (lambda b: hooks) if hooks else None
    return 100 * answer_probability(model, data, hooks=chosen).mean().item()


def _edited(
    model: Any, mask: NeuronMask, old: str, renamed: CapabilityDataset
) -> tuple[float, bool]:
    """Mean P(new answer) with the fact edited in ``mask``'s value slots, and whether undoing
    the edit restored every weight bit for bit."""
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    handle = edit_knowledge(model, mask, old, renamed.answers[0])
    try:
        p = _mean_probability(model, renamed)
    finally:
        handle.undo()
    after = model.state_dict()
    return p, all(torch.equal(v, after[k]) for k, v in before.items())


def fact_edits(
    model: Any,
    masks: Mapping[str, NeuronMask],
    facts: Mapping[str, CapabilityDataset],
    *,
    n_random: int = 3,
    seed: int = 0,
    factor: float = 2.0,
) -> FactEditResult:
    """Dai et al.'s interventions on single facts, each beside random sets of the same shape.

    Each fact's set is zeroed (suppress) and scaled by ``factor`` (amplify) while P(answer) is
    read on its paraphrases; then
    [`edit_knowledge`][tl_capability.edits.edit_knowledge] rewrites the answer to the next fact's
    answer (facts in a ring) and P(new answer) is read, then the edit is undone. Random sets are
    [`random_controls`][tl_capability.masks.random_controls] of each located set.

    Args:
        model: The model (restored after every measurement).
        masks: Each fact's knowledge neurons (e.g. ``fidelity(...).masks``).
        facts: Each fact's paraphrases (one answer per fact), the keys of ``masks``.
        n_random: Random sets per fact.
        seed: Seed of the random sets.
        factor: The amplify factor.

    Raises:
        ValueError: For fewer than two facts, or a fact without a set.
    """
    names = list(facts)
    if len(names) < 2:
        raise ValueError("fact_edits needs at least two facts (an edit writes another's answer)")
    missing = [n for n in names if n not in masks]
    if missing:
        raise ValueError(f"no knowledge neurons given for {missing}")
    rows = []
    for i, name in enumerate(names):
        data, mask = facts[name], masks[name]
        new = facts[names[(i + 1) % len(names)]].answers[0]
        renamed = CapabilityDataset.from_pairs(data.prompts, [new] * len(data), name)
        if not len(mask):  # refine kept no neuron: nothing to intervene on
            nan = float("nan")
            p = _mean_probability(model, data)
            rows.append(FactEditRow(name, 0, p, nan, nan, nan, nan, new, nan, nan, nan, True))
            continue
        controls = random_controls(mask, n_random, seed=seed)
        p_new, undone = _edited(model, mask, data.answers[0], renamed)
        random_new = mean_ci([_edited(model, c, data.answers[0], renamed)[0] for c in controls])

        def intervene(m: NeuronMask, mode: str, d: CapabilityDataset = data) -> float:
            kwargs = {"factor": factor} if mode == "scale" else {}
            return _mean_probability(model, d, m.hooks(mode, **kwargs))

        rows.append(
            FactEditRow(
                fact=name,
                neurons=len(mask),
                p_clean=_mean_probability(model, data),
                p_suppressed=intervene(mask, "zero"),
                p_suppressed_random=mean_ci([intervene(c, "zero") for c in controls])[0],
                p_amplified=intervene(mask, "scale"),
                p_amplified_random=mean_ci([intervene(c, "scale") for c in controls])[0],
                new_answer=new,
                p_new_before=_mean_probability(model, renamed),
                p_new_after=p_new,
                p_new_after_random=random_new[0],
                undone=undone,
            )
        )
    return FactEditResult(
        f"Suppress (zero), amplify (×{factor:g}) and edit of single facts' knowledge neurons, "
        f"against {n_random} random sets of the same shape (P in percent, over paraphrases)",
        tuple(rows),
    )
