"""What each knowledge localizer locates for a fact (shared by the knowledge-neuron experiments).

``method="kn"``: knowledge neurons (Dai et al., ACL 2022: coarse per paraphrase, then
[`refine`][tl_capability.masks.refine]); ``"rome"``: the MLP layer causal tracing locates (Meng et
al. 2022); ``"kc"``: a knowledge circuit (Yao et al. 2024), whose corrupted prompts swap the
subject for another fact's
([`corrupt_subjects`][tl_capability.experiments.kn_locators.corrupt_subjects]).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tl_capability.attribution import attribute
from tl_capability.circuits import KnowledgeCircuit, knowledge_circuit
from tl_capability.data import CapabilityDataset
from tl_capability.masks import NeuronMask, coarse_masks, refine
from tl_capability.options import Localizer, check_option
from tl_capability.tracing import CausalTrace

Method = Localizer
"""What [`fidelity`][tl_capability.experiments.kn_fidelity.fidelity] and
[`reliability`][tl_capability.experiments.kn_reliability.reliability] locate: knowledge neurons
(Dai et al.), the MLP layer of causal tracing (ROME, Meng et al.), or a knowledge circuit
(Yao et al.)."""


def _check_method(method: Any) -> str:
    return check_option(method, Localizer, "method")


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

    [`fidelity`][tl_capability.experiments.kn_fidelity.fidelity] computes the same sets (its
    ``masks``): after it, use those.
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
