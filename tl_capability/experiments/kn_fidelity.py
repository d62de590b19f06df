"""Knowledge-neuron fidelity (Dai et al., ACL 2022; evaluated by Huang et al., ICLR 2025).

[`fidelity`][tl_capability.experiments.kn_fidelity.fidelity]: are the knowledge neurons of a fact
the same whichever paraphrase asks for it? Coarse neurons (``s > t · max s`` on one prompt's IG)
are located from every paraphrase separately and compared pairwise (overlap, IoU). The control
compares the first paraphrases of two *different* facts: fidelity means something only if it
beats that. ``method="rome"`` compares the MLP layers causal tracing locates instead, and
``method="kc"`` the heads and MLPs of knowledge circuits. It returns the refined knowledge
neurons too (``result.masks``), so
[`knowledge_neurons`][tl_capability.experiments.kn_locators.knowledge_neurons] need not be run
after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from tl_capability.attribution import attribute
from tl_capability.data import CapabilityDataset
from tl_capability.experiments.kn_locators import (
    Method,
    _check_method,
    _circuit,
    _corruptions,
    _layer_mask,
    _require_subjects,
    trace_window,
)
from tl_capability.masks import coarse_masks, refine
from tl_capability.tables import Row, Table, mean_ci
from tl_capability.tracing import causal_trace


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
    """What [`fidelity`][tl_capability.experiments.kn_fidelity.fidelity] measured.

    Attributes:
        rows: One row per fact, then the ``mean`` row and (for two facts or more) the
            ``different facts`` control row.
        masks: Each fact's located parameters over all its paraphrases: ``"kn"``, its refined
            knowledge neurons (what
            [`knowledge_neurons`][tl_capability.experiments.kn_locators.knowledge_neurons] gives);
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
      ``window`` [`trace_window`][tl_capability.experiments.kn_locators.trace_window] unless
      given); the set is every neuron of the layer of the largest indirect effect at the last
      subject token ([`CausalTrace.mask`][tl_capability.tracing.CausalTrace.mask]), so two
      paraphrases overlap 1 when they locate the same layer and 0 otherwise.
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
