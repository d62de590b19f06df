"""Where a learned mask's gates start: the start probe and the initial scores.

A learned mask ([`learn_mask`][tl_capability.learned.learn_mask]) starts every gate at one logit
``θ₀`` and prunes or grows from there. Which start works depends on the model: the zoo's small
models lose little with half of their neurons removed at random (sigmoid gates at ``θ₀ = 0``),
and the gates learn well from there; SmolLM2-135M is destroyed by it (the controls' KL reads
11-12 nats), and gates that start there learn nothing specific (``docs/findings.md``).
[`choose_start`][tl_capability.learn_start.choose_start] reads that from the model: one random
draw of the gates at each candidate start, the controls' KL against the clean model, and the
highest start that stays within [`START_MAX_KL`][tl_capability.learn_start.START_MAX_KL] nats.
[`learned_start`][tl_capability.learn_start.learned_start] adds the scores the gates start
from, as [`LearnConfig.init`][tl_capability.learned.LearnConfig] asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from jaxtyping import Float
from torch import Tensor

from tl_capability._gates import (
    CleanLogProbs,
    default_start,
    init_logits,
    pad_id,
    removal_kl,
)
from tl_capability.attribution import NeuronScores
from tl_capability.data import CapabilityDataset, check_datasets, tokenize
from tl_capability.options import Gate, Site, check_option
from tl_capability.rankings import contrastive_init
from tl_capability.sites import model_device, neuron_site, require_eval

__all__ = ["START_MAX_KL", "choose_start", "default_start", "learned_start"]

START_MAX_KL = 2.0
"""The most the controls may lose (KL in nats at their answer positions) to one random draw of
the gates at the start. Measured at the sigmoid gate's own start (0, half removed): the zoo
models read 0.2-1.4 nats and learn well from there; SmolLM2-135M reads 11-12 there, 1.2-1.6
at -2 and 0.3-0.4 at -3 (docs/findings.md)."""
START_CANDIDATES = 6  # the gate's own start and five below it, one apart
PROBE_SAMPLES = 16  # per dataset: the KL of one draw varies little across samples


def choose_start(
    model: Any,
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset] | None,
    *,
    gate: Gate = "sigmoid",
    init: Float[Tensor, "layer d_mlp"] | NeuronScores | None = None,
    seed: int = 0,
    site: Site = "post",
) -> tuple[float, dict[float, float]]:
    """The highest start logit whose random removal the model tolerates.

    Tries the gate's own start (``default_start(gate)``: 0 for sigmoid gates, half of the
    neurons removed), then one lower, down to five lower, and stops at the first whose one draw
    of the gates (plus ``init``'s standardised scores, as the training would start) costs the
    controls at most ``START_MAX_KL`` nats at their answer positions (mean over the first
    16 samples of each; the target's own answers when there are no controls). No gradients, one
    forward pass per dataset and candidate.

    Args:
        model: A causal TransformerLens model in eval mode.
        target: The capability the mask will erase.
        controls: The capabilities it will keep (``None``: the target is the reference).
        gate: ``"sigmoid"`` or ``"hard_concrete"``.
        init: The scores the gates will start from, if any.
        seed: Seeds the gates' draw.
        site: ``"post"`` or ``"pre"``.

    Returns:
        ``(start, readings)``: the chosen start and the KL read at every candidate tried.
        When no candidate is within the bound, the lowest.

    Raises:
        ValueError: For a model in training mode, an unknown gate, controls that
            [`check_datasets`][tl_capability.data.check_datasets] refuses, or ``init`` of the
            wrong shape.
    """
    check_option(gate, Gate, "gate")
    require_eval(model)
    controls = check_datasets(target, controls or None)
    resolved = neuron_site(model, site)
    shape = (resolved.n_layers, resolved.d_mlp)
    names = [resolved.hook_name(layer) for layer in range(shape[0])]
    datasets = dict(controls or {}) or {"target": target}
    samples = {n: tokenize(model, d)[:PROBE_SAMPLES] for n, d in datasets.items()}
    clean = CleanLogProbs(model, samples, PROBE_SAMPLES, pad_id(model))
    readings: dict[float, float] = {}
    for i in range(START_CANDIDATES):
        start = default_start(gate) - i
        theta = init_logits(init, shape, gate, start).to(model_device(model))
        readings[start] = removal_kl(model, samples, clean, names, theta, gate, seed)
        if readings[start] <= START_MAX_KL:
            break
    return start, readings


def learned_start(
    model: Any,
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset] | None,
    learn: Any,  # a learned.LearnConfig; learned imports this module
    *,
    seed: int = 0,
    batch_size: int | None = None,
) -> tuple[Any, Tensor | None]:
    """The start and initial scores of ``locate``'s learned mask, as ``learn.start`` and
    ``learn.init`` ask ([`LearnInit`][tl_capability.options.LearnInit]).

    Returns:
        ``(learn with its start filled in, scores or None)``: the start is the probe's
        ([`choose_start`][tl_capability.learn_start.choose_start]) unless ``learn`` fixes it;
        with scores (``contrastive_init``), the probe runs again on them, since the scored
        neurons start more removed.
    """

    def probe(init: Tensor | None) -> float:
        return choose_start(model, target, controls, gate=learn.gate, init=init, seed=seed)[0]

    start = learn.start if learn.start is not None else probe(None)
    init = None
    if learn.init == "contrastive" or (learn.init == "auto" and start < default_start(learn.gate)):
        init = contrastive_init(model, target, controls, batch_size)
        start = learn.start if learn.start is not None else probe(init)
    return replace(learn, start=float(start)), init
