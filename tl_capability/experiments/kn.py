"""Knowledge-neuron experiments (Dai et al., ACL 2022; evaluated by Huang et al., ICLR 2025).

- [`fidelity`][tl_capability.experiments.kn.fidelity]: are the knowledge neurons of a fact the same
  whichever paraphrase asks for it? Coarse neurons (``s > t · max s`` on one prompt's IG) are
  located from every paraphrase separately and compared pairwise (overlap, IoU). The control
  compares the first paraphrases of two *different* facts: fidelity means something only if it beats
  that. ``method="rome"`` compares the MLP layers causal tracing locates instead, and
  ``method="kc"`` the heads and MLPs of knowledge circuits.
- [`reliability`][tl_capability.experiments.kn.reliability]: the IPP of the CNL poster — does
  suppressing a located set lower the answer's probability more than the *best* of ``n`` random sets
  of the same size per layer? ``method="rome"``: a rank-one edit
  ([`rome_edit`][tl_capability.experiments.rome_edit]) at the located layer against the same edit at
  random layers; ``method="kc"``: the circuit ablated against random edge sets of its size.
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

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, get_args

import torch

from tl_capability.attribution import attribute
from tl_capability.circuits import KnowledgeCircuit, knowledge_circuit
from tl_capability.data import CapabilityDataset
from tl_capability.edits import edit_knowledge
from tl_capability.evaluate import answer_probability
from tl_capability.masks import NeuronMask, coarse_masks, random_controls, refine
from tl_capability.options import Localizer, check_option
from tl_capability.tables import Row, Table, mean_ci
from tl_capability.tracing import CausalTrace, causal_trace

Method = Localizer
"""What [`fidelity`][tl_capability.experiments.kn.fidelity] and
[`reliability`][tl_capability.experiments.kn.reliability] locate: knowledge neurons (Dai et al.),
the MLP layer of causal tracing (ROME, Meng et al.), or a knowledge circuit (Yao et al.)."""

METHODS: tuple[str, ...] = get_args(Method)


def _check_method(method: Any) -> str:
    return check_option(method, Localizer, "method")


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
        masks: Each fact's located parameters over all its paraphrases: ``"kn"``, its refined
            knowledge neurons (what
            [`knowledge_neurons`][tl_capability.experiments.kn.knowledge_neurons] gives);
            ``"rome"``, every neuron of the MLP layer of the largest average indirect effect
            over its paraphrases (a [`NeuronMask`][tl_capability.masks.NeuronMask]); ``"kc"``,
            the [`CircuitMask`][tl_capability.circuits.CircuitMask] of the circuit found on
            all its paraphrases at once.
        method: ``"kn"``, ``"rome"`` or ``"kc"``.
        located: Each fact's located parameters per paraphrase, the sets compared (coarse
            neurons, the located layer's neurons, or the circuit's heads and MLPs).
    """

    rows: tuple[FidelityRow, ...]
    masks: dict[str, Any]
    method: str = "kn"
    located: dict[str, tuple[Any, ...]] = field(default_factory=dict)

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
        seed: Seed of the first random set (set ``i`` uses ``seed + i``), of the random
            layers (``"rome"``) or of the random edge sets (``"kc"``).
        method: ``"kn"``, ``"rome"`` or ``"kc"``.
        located: Per item, what was intervened on: the mask (``"kn"``), the edited layer
            (``"rome"``) or the [`KnowledgeCircuit`][tl_capability.circuits.KnowledgeCircuit]
            with its edges chosen (``"kc"``).
        new_answers: ``"rome"``: the object each fact's edit writes in.
    """

    rows: tuple[ReliabilityRow, ...]
    n_random: int
    seed: int
    method: str = "kn"
    located: dict[str, Any] = field(default_factory=dict)
    new_answers: dict[str, str] = field(default_factory=dict)

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
    method: Method = "kn",
    fraction_of_max: float = 0.2,
    share: float = 0.7,
    n_edges: int = 50,
    corrupted: Mapping[str, CapabilityDataset] | None = None,
    **locate_kwargs: Any,
) -> FidelityResult:
    """Overlap of the parameters located from different paraphrases of the same fact.

    Every paraphrase locates its own set, and the sets of a fact's paraphrases are compared
    pairwise with the poster's overlap ``(|a∩b|/|a| + |a∩b|/|b|) / 2`` and with IoU:

    - ``"kn"`` (default): coarse knowledge neurons (``s > t · max s`` on the paraphrase's IG).
    - ``"rome"``: causal tracing of the MLP outputs (``causal_trace(..., kind="mlp")``, with
      ``window`` [`trace_window`][tl_capability.experiments.kn.trace_window] unless given); the
      set is every neuron of the layer of the largest indirect effect at the last subject token
      ([`CausalTrace.mask`][tl_capability.tracing.CausalTrace.mask]), so two paraphrases
      overlap 1 when they locate the same layer and 0 otherwise.
    - ``"kc"``: a knowledge circuit (EAP by default) of the paraphrase against its corruption,
      its ``n_edges`` top edges (after pruning), compared by its heads and MLPs
      ([`CircuitMask`][tl_capability.circuits.CircuitMask]).

    Args:
        model: The model (``"kc"``: with split q/k/v inputs, see
            [`knowledge_circuit`][tl_capability.circuits.knowledge_circuit]).
        facts: For each fact, a dataset of its paraphrased prompts (same answer), at least two;
            ``"rome"`` and ``"kc"`` need subjects (``from_pairs(..., subjects=[...])``).
        method: ``"kn"``, ``"rome"`` or ``"kc"``.
        fraction_of_max: ``"kn"``: coarse rule threshold ``t`` per prompt (Dai et al.: 0.2).
        share: ``"kn"``: refinement threshold of the per-fact refined set (Dai et al.: 0.7).
        n_edges: ``"kc"``: edges per circuit (50 suits the zoo's 4-layer models; Yao et al.
            keep a few hundred on GPT-2 small).
        corrupted: ``"kc"``: each fact's corrupted paraphrases, aligned with ``facts`` (same
            token lengths; their answers are the corrupted answers). By default each
            paraphrase's subject is replaced by another given fact's subject that tokenizes to
            as many tokens in it (one whose answer starts with another token when there is one),
            and that fact's answer is the corrupted answer.
        **locate_kwargs: Passed to [`attribute`][tl_capability.attribution.attribute]
            (``"kn"``), [`causal_trace`][tl_capability.tracing.causal_trace] (``"rome"``:
            ``samples``, ``noise``, ``window``, ``seed``...) or
            [`knowledge_circuit`][tl_capability.circuits.knowledge_circuit] (``"kc"``:
            ``method`` as ``circuit_method``, ``metric``, ``steps``, ``batch_size``).

    Returns:
        One row per fact (paraphrases, located set size per prompt, size of the fact's set
        over all its paraphrases, mean pairwise overlap and IoU), then a ``mean`` row (± 95 %
        over facts) and a ``different facts`` control row (pairwise overlap of different facts'
        first paraphrases); each fact's set over all its paraphrases (``masks``) and the
        per-paraphrase sets (``located``).

    Raises:
        ValueError: For an unknown method, a fact with fewer than two paraphrases, or (``"rome"``,
            ``"kc"``) without subjects; ``"kc"``: a fact no other fact's subject can corrupt.
    """
    _check_method(method)
    for name, data in facts.items():
        if len(data) < 2:
            raise ValueError(f"fact {name!r} needs at least two paraphrases")
    if method == "kn":
        locate_kwargs.setdefault("progress", False)
    else:
        _require_subjects(facts, method)
    if method == "kc":
        corrupted = _corruptions(model, facts, corrupted)
    rows = []
    refined: dict[str, Any] = {}
    located: dict[str, tuple[Any, ...]] = {}
    firsts: list[Any] = []
    overlaps: list[float] = []
    for name, data in facts.items():
        if method == "kn":
            scores = attribute(model, data, per_sample=True, **locate_kwargs)
            masks = coarse_masks(scores, fraction_of_max)
            refined[name] = refine(masks, share)
        elif method == "rome":
            locate_kwargs.setdefault("window", trace_window(model))
            trace = causal_trace(model, data, "mlp", **locate_kwargs)
            masks = list(trace.masks)
            refined[name] = _layer_mask(trace, trace.aie_peak)
        else:
            bad = corrupted[name]  # type: ignore[index]
            masks = [
                _circuit(model, data.select([i]), bad.select([i]), n_edges, locate_kwargs).mask
                for i in range(len(data))
            ]
            refined[name] = _circuit(model, data, bad, n_edges, locate_kwargs).mask
        located[name] = tuple(masks)
        firsts.append(masks[0])
        pairs = list(combinations(masks, 2))
        overlap = sum(a.overlap(b) for a, b in pairs) / len(pairs)
        overlaps.append(overlap)
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
    title = {
        "kn": "Knowledge-neuron fidelity across paraphrases",
        "rome": "ROME (causal tracing, MLP layer) fidelity across paraphrases",
        "kc": f"Knowledge-circuit fidelity across paraphrases ({n_edges} edges)",
    }[method]
    return FidelityResult(title, tuple(rows), refined, method, located)


def trace_window(model: Any) -> int:
    """The MLP window ``"rome"`` traces with unless given: ROME's 10 layers on GPT-2 XL's 48,
    a quarter of the layers on shallower models (``max(1, min(10, n_layers // 4))``). The
    window of [`causal_trace`][tl_capability.tracing.causal_trace] (10) restores every MLP of
    a model of 5 layers or fewer at once, so every layer would tie and the located layer
    would always be the first."""
    return max(1, min(10, model.cfg.n_layers // 4))


def _require_subjects(facts: Mapping[str, CapabilityDataset], method: str) -> None:
    for name, data in facts.items():
        if data.subjects is None or not all(isinstance(s, str) and s for s in data.subjects):
            raise ValueError(
                f"fact {name!r} has no subjects: method {method!r} needs each paraphrase's "
                "subject (CapabilityDataset.from_pairs(prompts, answers, subjects=[...]))"
            )


def _layer_mask(trace: CausalTrace, layer: int) -> NeuronMask:
    tensor = torch.zeros(trace.scores[0].shape[1], trace.d_mlp, dtype=torch.bool)
    tensor[layer] = True
    selection = {"method": "causal_trace", "kind": trace.kind, "layer": layer, "rule": "AIE peak"}
    return NeuronMask(tensor, model_name=trace.model_name, selection=selection)


def _circuit(
    model: Any,
    clean: CapabilityDataset,
    bad: CapabilityDataset,
    n_edges: int,
    kwargs: Mapping[str, Any],
) -> KnowledgeCircuit:
    options = dict(kwargs)
    circuit_method = options.pop("circuit_method", options.pop("method", "eap"))
    return knowledge_circuit(model, clean, bad, circuit_method, n=n_edges, **options)


def corrupt_subjects(
    model: Any, facts: Mapping[str, CapabilityDataset]
) -> dict[str, CapabilityDataset]:
    """Each fact's paraphrases with the subject replaced by another fact's subject, for
    knowledge circuits: the first other fact (in order) whose subject makes every paraphrase
    tokenize to as many tokens as before, preferring one whose answer's first token differs
    from the fact's (so that a logit difference means something). The corrupted answers are
    that fact's answer.

    Raises:
        ValueError: For a fact without subjects, or naming the fact no other subject fits.
    """
    _require_subjects(facts, "kc")
    from tl_capability.data import tokenize

    first = {n: tokenize(model, d.select([0]))[0].answer[0] for n, d in facts.items()}
    out = {}
    for name, data in facts.items():
        lengths = [len(s.prompt) for s in tokenize(model, data)]
        fits = []
        for other, odata in facts.items():
            new = odata.subjects[0]  # type: ignore[index]
            if other == name or new in data.subjects:  # type: ignore[operator]
                continue
            prompts = [
                p.replace(s, new, 1)
                for p, s in zip(data.prompts, data.subjects, strict=True)  # type: ignore[arg-type]
            ]
            candidate = CapabilityDataset.from_pairs(
                prompts, [odata.answers[0]] * len(data), name=f"{name} -> {other}"
            )
            if [len(s.prompt) for s in tokenize(model, candidate)] == lengths:
                fits.append((first[other] == first[name], candidate))
        if not fits:
            raise ValueError(
                f"fact {name!r}: no other fact's subject tokenizes to as many tokens in its "
                "paraphrases; give the corrupted prompts with corrupted={...}"
            )
        out[name] = min(fits, key=lambda fit: fit[0])[1]
    return out


def _corruptions(
    model: Any,
    facts: Mapping[str, CapabilityDataset],
    corrupted: Mapping[str, CapabilityDataset] | None,
) -> dict[str, CapabilityDataset]:
    if corrupted is None:
        return corrupt_subjects(model, facts)
    missing = [n for n in facts if n not in corrupted]
    if missing:
        raise ValueError(f"no corrupted prompts given for the facts {missing}")
    for name, data in facts.items():
        if len(corrupted[name]) != len(data):
            raise ValueError(
                f"fact {name!r}: {len(data)} paraphrases but {len(corrupted[name])} corrupted"
            )
    return dict(corrupted)


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
    masks: Mapping[str, Any] | None = None,
    datasets: Mapping[str, CapabilityDataset] | None = None,
    *,
    method: Method = "kn",
    n_random: int = 20,
    seed: int = 0,
    n_edges: int = 50,
    corrupted: Mapping[str, CapabilityDataset] | None = None,
    new_answers: Mapping[str, str] | None = None,
    edit_steps: int = 20,
    edit_lr: float = 0.5,
    **locate_kwargs: Any,
) -> ReliabilityResult:
    """IPP: how often a method's own intervention on the located parameters beats the best of
    ``n_random`` random choices of the same kind.

    - ``"kn"`` (default): ``masks`` (each item's located neurons) and ``n_random`` random sets
      with the same number of neurons per layer
      (``random_controls(mask, n_random, seed=seed)``) are zeroed in turn; the effect is the
      drop of the mean answer probability
      ([`answer_probability`][tl_capability.evaluate.answer_probability]) on the item's data.
    - ``"rome"``: a rank-one edit of ``W_out``
      ([`rome_edit`][tl_capability.experiments.rome_edit.rome_edit], a simplified ROME: no key
      covariance, no prefix averaging; see that module) at the fact's located layer writes a new
      object (``new_answers``, default the next fact's answer, facts in a ring) from the fact's
      first paraphrase; the effect is the gain of ``log P(new object)`` (teacher forced, summed
      over its tokens, in nats; a probability saturates), mean over all its paraphrases, and
      ``base_prob`` is the mean ``P(new object)`` before the edit; the edit is undone (bit for
      bit) after each measurement. The random choices
      are the same edit at ``n_random`` layers drawn uniformly (``random.Random(seed)``) from
      the other layers. The located layer is the first layer of ``masks[fact]`` when given
      (e.g. ``fidelity(..., method="rome").masks``), else the peak of the average MLP indirect
      effect of the fact's paraphrases (``causal_trace(..., kind="mlp")``, ``window`` as for
      ``fidelity``).
    - ``"kc"``: the fact's circuit (``masks[fact]``, a
      [`KnowledgeCircuit`][tl_capability.circuits.KnowledgeCircuit] with edges chosen, else
      found on all its paraphrases with ``n_edges`` edges) is ablated: its edges carry their
      corrupted values (the corruptions as for ``fidelity``) and every other edge its clean
      one; the effect is the drop of the circuit's metric (logit difference by default) from
      the clean model. The random choices are ``n_random`` random edge sets of the same size
      (from every edge of the graph, ``torch.Generator().manual_seed(seed)``), ablated alike.

    Args:
        model: The model (restored after every measurement).
        masks: ``"kn"``: each item's neurons (required); ``"rome"`` / ``"kc"``: optional
            located layers / circuits.
        datasets: Each item's data (``"rome"`` / ``"kc"``: each fact's paraphrases, with
            subjects).
        method: ``"kn"``, ``"rome"`` or ``"kc"``.
        n_random: Random choices per item.
        seed: Their seed.
        n_edges: ``"kc"``: edges per circuit when it is located here.
        corrupted: ``"kc"``: each fact's corrupted paraphrases (default: see ``fidelity``).
        new_answers: ``"rome"``: the object each fact's edit writes.
        edit_steps: ``"rome"``: Adam steps of the value optimisation.
        edit_lr: ``"rome"``: their learning rate.
        **locate_kwargs: ``"rome"``: passed to ``causal_trace``; ``"kc"``: to
            ``knowledge_circuit`` (``circuit_method``, ``metric``, ``batch_size``...).

    Returns:
        One row per item (size of the located set: neurons, the layer's neurons, or edges;
        base value: P(answer), P(new object) before the edit, or the clean metric; located
        effect, best and mean random effect, whether the located one beats the best random
        one), then an ``IPP`` row: the share of items whose located choice wins (items with an
        empty set count as losses).

    Raises:
        ValueError: For an unknown method, ``n_random < 1``, a missing dataset or mask, or
            (``"rome"``, ``"kc"``) facts without subjects.
    """
    _check_method(method)
    if n_random < 1:
        raise ValueError("n_random must be at least 1")
    if method == "kn":
        if masks is None or datasets is None:
            raise ValueError("method 'kn' needs the masks and the datasets")
        rows = _kn_rows(model, masks, datasets, n_random, seed)
        located: dict[str, Any] = dict(masks)
        news: dict[str, str] = {}
    else:
        if datasets is None:
            raise ValueError(f"method {method!r} needs the facts' paraphrases as datasets=")
        _require_subjects(datasets, method)
        extra = sorted(set(masks or {}) - set(datasets))
        if extra:
            raise ValueError(f"no dataset for the masks {extra}")
        if method == "rome":
            rows, located, news = _rome_rows(
                model, masks, datasets, n_random, seed, new_answers, edit_steps, edit_lr,
                locate_kwargs,
            )  # fmt: skip
        else:
            rows, located = _kc_rows(
                model, masks, datasets, n_random, seed, n_edges, corrupted, locate_kwargs
            )
            news = {}
    wins = [float(r.beats_best_random) for r in rows]
    rows.append(ReliabilityRow("IPP", None, None, None, None, None, sum(wins) / max(1, len(wins))))
    against = {
        "kn": f"the best of {n_random} random sets",
        "rome": f"the same rank-one edit at the best of {n_random} random layers",
        "kc": f"the best of {n_random} random edge sets of the circuit's size",
    }[method]
    return ReliabilityResult(
        f"Reliability ({method}: IPP against {against})",
        tuple(rows),
        n_random,
        seed,
        method,
        located,
        news,
    )


def _row(name: str, size: int, base: float, located: float, randoms: list[float]) -> ReliabilityRow:
    return ReliabilityRow(
        item=name,
        neurons=size,
        base_prob=base,
        located_effect=located,
        best_random_effect=max(randoms),
        mean_random_effect=sum(randoms) / len(randoms),
        beats_best_random=bool(size) and located > max(randoms),
    )


def _kn_rows(
    model: Any,
    masks: Mapping[str, NeuronMask],
    datasets: Mapping[str, CapabilityDataset],
    n_random: int,
    seed: int,
) -> list[ReliabilityRow]:
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
        rows.append(_row(name, len(mask), base, located, randoms))
    return rows


def _answer_logprob(model: Any, data: CapabilityDataset) -> float:
    """The mean over samples of ``log P(answer)`` (teacher forced, summed over its tokens)."""
    from tl_capability.evaluate import _answer_logits

    total = torch.zeros(len(data), dtype=torch.float64)
    for batch, logits in _answer_logits(model, data, 64, False, None):
        logp = logits.float().log_softmax(-1).gather(-1, batch.target_token[:, None])[:, 0]
        rows = batch.sample_index.cpu()[batch.target_row.cpu()]
        total.index_add_(0, rows, logp.double().cpu())
    return float(total.mean())


def _rome_rows(
    model: Any,
    masks: Mapping[str, Any] | None,
    facts: Mapping[str, CapabilityDataset],
    n_random: int,
    seed: int,
    new_answers: Mapping[str, str] | None,
    steps: int,
    lr: float,
    trace_kwargs: Mapping[str, Any],
) -> tuple[list[ReliabilityRow], dict[str, Any], dict[str, str]]:
    from tl_capability.experiments.rome_edit import rome_edit

    names, n_layers = list(facts), model.cfg.n_layers
    if new_answers is None:
        new_answers = {}
        for i, name in enumerate(names):
            own = facts[name].answers[0]
            ring = [facts[m].answers[0] for m in names[i + 1 :] + names[:i]]
            new = next((a for a in ring if a != own), None)
            if new is None:
                raise ValueError(
                    f"fact {name!r}: method 'rome' writes another fact's answer and no other "
                    "fact has another answer; give new_answers={...}"
                )
            new_answers[name] = new
    missing = [n for n in names if n not in new_answers]
    if missing:
        raise ValueError(f"no new answer given for the facts {missing}")
    if n_layers < 2:
        raise ValueError("method 'rome' compares the located layer with other layers: 1 layer")
    rng = random.Random(seed)
    rows, layers = [], {}
    for name in names:
        data = facts[name]
        new = new_answers[name]
        if masks is not None and name in masks:
            used = masks[name].tensor.any(1).nonzero().flatten().tolist()
            if not used:
                raise ValueError(f"the mask of {name!r} selects no layer")
            layer = int(used[0])
        else:
            options = {"window": trace_window(model), **trace_kwargs}
            layer = causal_trace(model, data, "mlp", **options).aie_peak
        layers[name] = layer
        renamed = CapabilityDataset.from_pairs(
            data.prompts, [new] * len(data), name, subjects=data.subjects
        )
        base = answer_probability(model, renamed).mean().item()
        base_logp = _answer_logprob(model, renamed)
        effects: dict[int, float] = {}
        others = [k for k in range(n_layers) if k != layer]
        rng_layers = [rng.choice(others) for _ in range(n_random)]
        for at in [layer, *rng_layers]:
            if at not in effects:
                handle, _ = rome_edit(model, renamed.select([0]), at, steps=steps, lr=lr)
                try:
                    effects[at] = _answer_logprob(model, renamed) - base_logp
                finally:
                    handle.undo()
        randoms = [effects[at] for at in rng_layers]
        rows.append(_row(name, model.cfg.d_mlp, base, effects[layer], randoms))
    return rows, layers, dict(new_answers)


def _kc_rows(
    model: Any,
    masks: Mapping[str, Any] | None,
    facts: Mapping[str, CapabilityDataset],
    n_random: int,
    seed: int,
    n_edges: int,
    corrupted: Mapping[str, CapabilityDataset] | None,
    circuit_kwargs: Mapping[str, Any],
) -> tuple[list[ReliabilityRow], dict[str, Any]]:
    from tl_capability._circuit_data import pairs_of, patched_means

    bad = _corruptions(model, facts, corrupted)
    batch_size = circuit_kwargs.get("batch_size", 8)
    rows, circuits = [], {}
    for name, data in facts.items():
        if masks is not None and name in masks:
            circuit = masks[name]
            if not isinstance(circuit, KnowledgeCircuit):
                raise ValueError(
                    f"method 'kc' takes KnowledgeCircuits as masks; {name!r} has a "
                    f"{type(circuit).__name__}"
                )
        else:
            circuit = _circuit(model, data, bad[name], n_edges, circuit_kwargs)
        circuits[name] = circuit
        chosen, graph = circuit._chosen(), circuit.graph
        size = int(chosen.sum())
        gen = torch.Generator().manual_seed(seed)
        sets = [chosen]
        for _ in range(n_random):
            sets.append(graph.top(torch.rand(graph.valid.shape, generator=gen), graph.valid, size))
        kept = [graph.valid & ~edges for edges in sets]  # the set's edges carry corrupted values
        means = patched_means(
            model, graph, pairs_of(model, data, bad[name]), circuit.metric, kept, batch_size
        )
        clean = means[0]
        drops = [clean - m for m in means[2:]]
        rows.append(_row(name, size, clean, drops[0], drops[1:]))
    return rows, circuits


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
