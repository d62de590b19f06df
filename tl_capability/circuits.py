"""Knowledge circuits (Yao et al. 2024, zjunlp/KnowledgeCircuits): the edges between attention
heads and MLPs that carry a fact, scored by edge attribution patching (EAP; EAP-IG, Hanna et al.
2024, hannamw/EAP-IG), selected, pruned, and checked by patching every other edge.

The graph is EAP-IG's: nodes ``"input"`` (token and position embeddings), every head
``"a{l}.h{h}"``, every MLP ``"m{l}"`` and ``"logits"``; an edge runs from each node to the input
of each later node, and the query, key and value inputs of a head are apart (``"a1.h2<q>"``; on
grouped-query models the key/value inputs are per key/value head, ``"a1.g0<k>"`` feeding heads
``0 … r−1`` of the group). A node's input is the residual stream *before* its norm, the sum of
its parents' outputs (plus biases, the same on every run); a head's output is
``z[..., h, :] @ W_O[h]``. Edge ``u → v`` scores

``(out_u(corrupted) − out_u(clean)) · ∂metric/∂in_v``, summed over positions, averaged over
samples,

the gradient taken on the clean run (``"eap"``: one corrupted and one clean pass, one backward
pass, for every edge at once), or averaged over ``steps`` runs whose input embeddings go from
the corrupted ones towards the clean ones, ``α = k / steps`` for ``k = 0 … steps − 1``
(``"eap-ig"``, as EAP-IG's code). A score estimates how the metric changes when that edge alone
carries its corrupted value. The metric is the logit of the answer's first token minus that of
the corrupted answer's first token at the last prompt position (``"logit_diff"``), or the log
probability of the answer's first token (``"logprob"``).

What the model must offer is in the error that
[`knowledge_circuit`][tl_capability.circuits.knowledge_circuit] raises without it:
TransformerLens's split q/k/v inputs, ``hook_mlp_in`` and ``hook_z``, switched on for the call
and restored after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

import tl_capability._circuit_graph as cg
from tl_capability._circuit_data import batches, check, metric_fn, pairs_of, patched_means
from tl_capability.circuit_mask import CircuitMask
from tl_capability.data import CapabilityDataset
from tl_capability.options import check_option, check_positive_int
from tl_capability.sites import model_device, model_name

__all__ = [
    "CircuitMask",
    "CircuitMethod",
    "CircuitMetric",
    "Faithfulness",
    "KnowledgeCircuit",
    "faithfulness",
    "knowledge_circuit",
]

CircuitMethod = Literal["eap", "eap-ig"]
"""Edge attribution patching, or its integrated-gradients form."""

CircuitMetric = Literal["logit_diff", "logprob"]
"""``answer − corrupted answer`` logits, or ``log P(answer)``, at the last prompt position."""


@dataclass(frozen=True, eq=False)
class KnowledgeCircuit:
    """Scores of every edge of the graph, and the circuit once chosen
    ([`select`][tl_capability.circuits.KnowledgeCircuit.select]).

    Attributes:
        scores: ``scores[u, c]``: the edge from parent node ``u`` into child input ``c``
            (0 where there is no edge); names in ``parent_names`` / ``child_names``.
        graph: The layout (private type).
        method: ``"eap"`` or ``"eap-ig"``.
        metric: The metric the scores are gradients of.
        steps: Interpolation steps (1 for EAP).
        clean_metric: The metric on the clean prompts (mean over samples).
        corrupted_metric: The metric on the corrupted prompts.
        n_samples: Samples scored.
        d_mlp: Neurons per MLP.
        model_name: The model's name when known.
        chosen: The circuit's edges after pruning, or ``None`` before selection.
        selection: How they were chosen.
    """

    scores: Float[Tensor, "parent child"]
    graph: cg.Graph
    method: str
    metric: str
    steps: int
    clean_metric: float
    corrupted_metric: float
    n_samples: int
    d_mlp: int | None = None
    model_name: str | None = None
    chosen: Bool[Tensor, "parent child"] | None = None
    selection: dict[str, Any] = field(default_factory=dict)

    @property
    def parent_names(self) -> list[str]:
        return self.graph.parent_names

    @property
    def child_names(self) -> list[str]:
        return self.graph.child_names

    def _index(self, parent: str, child: str) -> tuple[int, int]:
        try:
            u, c = self.parent_names.index(parent), self.child_names.index(child)
        except ValueError:
            raise KeyError(f"no node {parent!r} or node input {child!r} in this graph") from None
        if not self.graph.valid[u, c]:
            raise KeyError(f"{parent!r} does not feed {child!r} (it is not computed before)")
        return u, c

    def score(self, parent: str, child: str) -> float:
        """The score of one edge, e.g. ``score("m0", "a1.h2<q>")``.

        Raises:
            KeyError: For an unknown node, or a pair that is not an edge.
        """
        return float(self.scores[self._index(parent, child)])

    def _ranked(self, among: Tensor, n: int | None) -> list[tuple[str, str, float]]:
        top = self.graph.top(self.scores, among, n).nonzero().tolist()
        rows = [
            (self.parent_names[u], self.child_names[c], float(self.scores[u, c])) for u, c in top
        ]
        return sorted(rows, key=lambda row: -abs(row[2]))

    def edges(self, n: int | None = None) -> list[tuple[str, str, float]]:
        """``(parent, child, score)`` of the ``n`` edges of largest ``|score|`` in the graph, or,
        with ``n=None``, of the chosen circuit, largest first.

        Raises:
            ValueError: With ``n=None`` before a circuit was chosen.
        """
        if n is None:
            return self._ranked(self._chosen(), None)
        return self._ranked(self.graph.valid, n)

    def select(self, n: int | None = None, threshold: float | None = None) -> KnowledgeCircuit:
        """The circuit of the ``n`` edges of largest ``|score|``, or of every edge with
        ``|score| ≥ threshold``, without the edges on no path input → … → logits.

        Raises:
            ValueError: Unless exactly one of ``n`` (≥ 0) and ``threshold`` is given.
        """
        if (n is None) == (threshold is None) or (n is not None and n < 0):
            raise ValueError(
                f"give n >= 0 or threshold, not both; got n={n}, threshold={threshold}"
            )
        valid = self.graph.valid
        if n is not None:
            picked = self.graph.top(self.scores, valid, n)
        else:
            picked = valid & (self.scores.abs() >= threshold)
        rule = {"n": n} if n is not None else {"threshold": threshold}
        return replace(self, chosen=self.graph.prune(picked), selection=rule)

    def _chosen(self) -> Tensor:
        if self.chosen is None:
            raise ValueError("choose the circuit first: .select(n=...) or .select(threshold=...)")
        return self.chosen

    @property
    def n_edges(self) -> int:
        """Edges in the chosen circuit."""
        return int(self._chosen().sum())

    @property
    def nodes(self) -> list[str]:
        """The chosen circuit's nodes (``"input"``, heads, MLPs, ``"logits"``)."""
        chosen = self._chosen()
        used = chosen.any(1)
        names = [name for name, keep in zip(self.parent_names, used.tolist(), strict=True) if keep]
        return [*names, "logits"] if chosen[:, self.graph.logits].any() else names

    @property
    def mask(self) -> CircuitMask:
        """The chosen circuit's heads and MLPs."""
        used, g = self._chosen().any(1), self.graph
        layers = range(g.n_layers)
        heads = torch.stack([used[g.head(i) : g.head(i) + g.n_heads] for i in layers])
        mlps = torch.stack([used[g.mlp(i)] for i in layers])
        return CircuitMask(heads, mlps, self.d_mlp, self.model_name)


# ------------------------------------------------------------------------------- scoring


def knowledge_circuit(
    model: Any,
    clean: CapabilityDataset,
    corrupted: CapabilityDataset,
    method: CircuitMethod = "eap",
    *,
    metric: CircuitMetric = "logit_diff",
    steps: int = 5,
    n: int | None = None,
    threshold: float | None = None,
    batch_size: int = 8,
) -> KnowledgeCircuit:
    """Scores every edge of the model's graph for the facts in ``clean`` against ``corrupted``.

    Args:
        model: A TransformerLens model in eval mode with split q/k/v inputs (see the module).
        clean: The facts; each answer's first token is the metric's target.
        corrupted: The same facts with another subject, sample by sample, each prompt of the
            same token length as its clean one; its answers are the corrupted answers.
        method: ``"eap"`` or ``"eap-ig"``.
        metric: ``"logit_diff"`` (default) or ``"logprob"``.
        steps: Interpolation steps of ``"eap-ig"`` (ignored by ``"eap"``).
        n: Choose the circuit of the ``n`` top edges now (see ``select``).
        threshold: Or of the edges with ``|score| ≥ threshold``.
        batch_size: Pairs per pass.

    Returns:
        The scores, with the circuit chosen when ``n`` or ``threshold`` is given.

    Raises:
        ValueError: For an unknown method or metric, a model in training mode or without
            per-head inputs and outputs, datasets of different sizes, or a pair whose prompts
            tokenize to different lengths (naming it).
    """
    check_option(method, CircuitMethod, "method")
    check_option(metric, CircuitMetric, "metric")
    if method == "eap-ig":
        check_positive_int(steps, "steps")
    graph = check(model, batch_size)
    pairs = pairs_of(model, clean, corrupted)
    runs = steps if method == "eap-ig" else 1
    scores = torch.zeros(graph.n_parents, graph.n_children, device=model_device(model))
    totals = [0.0, 0.0]
    with cg.split_inputs(model):
        for tokens, bad_tokens, last, answer, other in batches(model, pairs, batch_size):
            size, d_model = tokens.shape, model.cfg.d_model
            diff = torch.zeros(*size, graph.n_parents, d_model, device=tokens.device)
            measure = metric_fn(metric, last, answer, other)
            totals[1] += float(measure(cg.record_pass(model, graph, bad_tokens, diff, 1.0)).sum())
            bad_input = diff[:, :, 0].clone()
            totals[0] += float(measure(cg.record_pass(model, graph, tokens, diff, -1.0)).sum())
            good_input = bad_input - diff[:, :, 0]
            for k in range(runs):
                start = good_input if method == "eap" else bad_input + k / runs * -diff[:, :, 0]
                cg.gradient_pass(model, graph, tokens, start, measure, diff, scores)
    n_samples = len(pairs.answer)
    result = KnowledgeCircuit(
        (scores / (n_samples * runs)).cpu(),
        graph,
        method,
        metric,
        runs,
        totals[0] / n_samples,
        totals[1] / n_samples,
        n_samples,
        getattr(model.cfg, "d_mlp", None),
        model_name(model),
    )
    if n is None and threshold is None:
        return result
    return result.select(n, threshold)


# ------------------------------------------------------------------------------- faithfulness


@dataclass(frozen=True)
class Faithfulness:
    """The metric with every edge outside a circuit patched to its corrupted value.

    Attributes:
        clean: The full model's metric (mean over samples).
        corrupted: The metric on the corrupted prompts (every edge patched).
        circuit: With only the circuit's edges clean.
        random: The same for random edge sets of the circuit's size, one per seed.
        n_edges: Edges in the circuit.
    """

    clean: float
    corrupted: float
    circuit: float
    random: tuple[float, ...]
    n_edges: int

    def _normalized(self, value: float) -> float:
        gap = self.clean - self.corrupted
        return float("nan") if gap == 0 else (value - self.corrupted) / gap

    @property
    def normalized(self) -> float:
        """``(circuit − corrupted) / (clean − corrupted)``: 1 when the circuit recovers the
        model, 0 when it recovers nothing."""
        return self._normalized(self.circuit)

    @property
    def random_normalized(self) -> tuple[float, ...]:
        return tuple(self._normalized(v) for v in self.random)


def faithfulness(
    model: Any,
    clean: CapabilityDataset,
    corrupted: CapabilityDataset,
    circuit: KnowledgeCircuit,
    n_random: int = 10,
    seed: int = 0,
    batch_size: int = 8,
) -> Faithfulness:
    """Runs the clean prompts with every edge outside ``circuit`` carrying its parent's output
    on the corrupted prompt (each node's input is the sum over its parents of their current
    outputs for circuit edges and their corrupted outputs for the others), against the full
    model and ``n_random`` random edge sets of the same size (drawn from every edge of the graph,
    not pruned; seeded by ``seed``).

    Args:
        model: The model the circuit was found on.
        clean: The facts.
        corrupted: Their corruptions, as for ``knowledge_circuit``.
        circuit: A circuit with its edges chosen; its metric is used.
        n_random: Random edge sets.
        seed: Their seed.
        batch_size: Pairs per pass.

    Returns:
        The metrics.

    Raises:
        ValueError: As ``knowledge_circuit``, and for a circuit with no edges chosen or of
            another model's shape.
    """
    graph = check(model, batch_size)
    if graph != circuit.graph:
        raise ValueError(f"the circuit is of a {circuit.graph}, the model a {graph}")
    chosen, valid = circuit._chosen(), graph.valid
    gen = torch.Generator().manual_seed(seed)
    sets = [chosen]
    for _ in range(n_random):
        sets.append(graph.top(torch.rand(valid.shape, generator=gen), valid, int(chosen.sum())))
    means = patched_means(
        model, graph, pairs_of(model, clean, corrupted), circuit.metric, sets, batch_size
    )
    return Faithfulness(means[0], means[1], means[2], tuple(means[3:]), int(chosen.sum()))
