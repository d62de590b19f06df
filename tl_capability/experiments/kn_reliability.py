"""Reliability of located knowledge (the IPP of the CNL poster).

[`reliability`][tl_capability.experiments.kn_reliability.reliability]: does suppressing a located
set lower the answer's probability more than the *best* of ``n`` random sets of the same size per
layer? ``method="rome"``: a rank-one edit ([`rome_edit`][tl_capability.experiments.rome_edit]) at
the located layer against the same edit at random layers; ``method="kc"``: the circuit ablated
against random edge sets of its size. Random sets come from
[`random_controls`][tl_capability.masks.random_controls] (set ``i`` seeded ``seed + i``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from tl_capability.circuits import KnowledgeCircuit
from tl_capability.data import CapabilityDataset
from tl_capability.evaluate import answer_probability
from tl_capability.experiments.kn_locators import (
    Method,
    _check_method,
    _circuit,
    _corruptions,
    _require_subjects,
    trace_window,
)
from tl_capability.masks import NeuronMask, random_controls
from tl_capability.options import check_positive_int
from tl_capability.tables import Row, Table
from tl_capability.tracing import causal_trace


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
    """What [`reliability`][tl_capability.experiments.kn_reliability.reliability] measured.

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
    check_positive_int(n_random, "n_random")
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
