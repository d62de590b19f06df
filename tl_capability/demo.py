"""The main job: the papers' experiments on the zoo model, written to a report folder.

``tl-capability demo`` calls [`run`][tl_capability.demo.run]. Stages: accuracies; capability
localization (split overlap, erase matrix with random controls, per σ); knowledge-neuron fidelity;
neuron empirical gradients (NeurGrad against interventions, the skill-neuron probe). Every number is
computed here, on this machine, from the shipped model, by
[`tl_capability.experiments`][tl_capability.experiments] (each experiment once; figures and headline
numbers reuse its result) and rendered by [`tl_capability.report`][tl_capability.report].
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import tl_capability.zoo as zoo
from tl_capability._demo_suites import REAL_SIZES, DemoSizes, _real_suite, _Suite, _zoo_suite
from tl_capability.circuit_figures import circuit_figure
from tl_capability.circuits import knowledge_circuit
from tl_capability.experiments import (
    corrupt_subjects,
    decoupling,
    enhancement,
    fact_edits,
    fidelity,
    linearity,
    localization_suite,
    neurgrad_agreement,
    reliability,
    skill_probe,
    trace_window,
)
from tl_capability.report import (
    Report,
    add_localization,
    enhancement_curves,
    linearity_histogram,
    neg_scatter,
)
from tl_capability.tracing import causal_trace
from tl_capability.tracing_figures import aie_curves, trace_heatmap

__all__ = ["REAL_SIZES", "DemoSizes", "run"]


def run(
    out: str | Path = "capability-report",
    sizes: DemoSizes | None = None,
    progress: bool = True,
    model: Any = None,
    name: str = "gpt2",
) -> tuple[Path, dict[str, Any]]:
    """Runs every stage and writes the report; returns its index path and headline numbers.

    ``name`` is a zoo model (``zoo.model_names()``: the six zoo capabilities) or the pretrained
    ``"smollm2-135m"`` (real tasks and facts from
    [`tl_capability.zoo.real`][tl_capability.zoo.real], only the samples it answers correctly,
    with [`REAL_SIZES`][tl_capability.demo.REAL_SIZES] by default). ``model`` defaults to that
    model.
    """
    is_real = name in zoo.real_model_names()
    sizes = sizes or (REAL_SIZES if is_real else DemoSizes())
    start = time.perf_counter()
    stages = tqdm(total=9, desc="demo", disable=not progress)
    model = zoo.load_model(name) if model is None else model
    suite = _real_suite(model, name, sizes) if is_real else _zoo_suite(name, sizes)
    report = _introduction(model, suite, sizes)

    def stage(name: str) -> None:
        if name != "accuracy":
            stages.update()
        stages.set_postfix_str(name)

    def done() -> None:
        # a long run on a real model leaves a readable partial report behind each stage
        report.save(out)
        stages.update()

    found, everything = _localization_stage(model, suite, sizes, report, stage)
    done()
    stages.set_postfix_str("knowledge neurons")
    knowledge = _knowledge_stage(model, suite, sizes, report)
    done()
    stages.set_postfix_str("causal tracing and circuits")
    granularities = _granularities_stage(model, suite, sizes, report)
    done()
    stages.set_postfix_str("neuron empirical gradients")
    gradients = _gradient_stage(model, suite, report)
    done()
    stages.set_postfix_str("enhancement")
    target, enhanced = _enhancement_stage(model, suite, sizes, report, found)
    done()
    stages.close()
    headline: dict[str, Any] = {
        "seconds": round(time.perf_counter() - start, 1),
        "capabilities": list(suite.train),
        "enhanced": target,
    }
    headline.update(
        _headline(list(suite.train), found, everything, knowledge, gradients, enhanced, sizes)
    )
    headline.update(granularities)
    report.text(f"Generated in {headline['seconds']} s.")
    return report.save(out), headline


def _introduction(model: Any, suite: _Suite, sizes: DemoSizes) -> Report:
    """The report with its title, the model and settings, and which samples were kept."""
    cfg = model.cfg
    report = Report(f"tl_capability demo: the capabilities of {suite.label} and their neurons")
    report.text(
        f"Model: {suite.label} ({cfg.n_layers} layers, d_mlp {cfg.d_mlp}, "
        f"{cfg.n_layers * cfg.d_mlp} MLP neurons). Attribution: integrated gradients of P(answer) "
        f"({sizes.steps} midpoint steps) on {sizes.locate} training samples per capability; "
        "selection: s − mean > σ·std over all neurons (positive side); erasure: zero at every "
        "position; evaluation: "
        f"exact match on {sizes.evaluate} test samples; random controls: {sizes.n_random} sets "
        "with the same number of neurons in every layer."
    )
    if suite.notes:
        report.text(
            "Samples kept (erasure is measured on what the model can do):\n\n- "
            + "\n- ".join(suite.notes)
        )
    return report


def _localization_stage(
    model: Any, suite: _Suite, sizes: DemoSizes, report: Report, stage: Any
) -> tuple[Any, list[str]]:
    """Capability localization, rendered; the result and the capabilities whose sets drop
    every capability alike."""
    found = localization_suite(
        model,
        suite.train,
        suite.test,
        sigmas=sizes.sigmas,
        n_random=sizes.n_random,
        stage=stage,
        steps=sizes.steps,
    )
    add_localization(report, found)
    everything = found.erased.not_localized(found.sigma)
    return found, everything


def _knowledge_stage(
    model: Any, suite: _Suite, sizes: DemoSizes, report: Report
) -> tuple[Any, Any]:
    """Knowledge neurons: fidelity, reliability, fact edits and decoupling, rendered; the
    fidelity and reliability results."""
    facts = suite.facts
    fid = fidelity(model, facts, steps=sizes.steps)
    report.text("## Knowledge neurons")
    report.table(replace(fid, rows=fid.summary))
    # fidelity already located each fact's refined knowledge neurons: reuse them.
    ipp = reliability(model, fid.masks, facts, n_random=sizes.n_random_kn, seed=100)
    report.text(
        "Reliability: suppressing each fact's refined knowledge neurons against the best of "
        f"{sizes.n_random_kn} random sets of the same size (effect = drop of P(answer) on the "
        "fact's own paraphrases); IPP is the share of facts where the located set wins."
    )
    report.table(ipp)
    edits = fact_edits(model, fid.masks, facts, n_random=sizes.n_random, seed=200)
    report.table(edits)
    if suite.pairs is not None:
        report.text(
            f"Decoupling: {sizes.pairs} pairs of addition problems that share their first operand "
            "(main part) and differ in the second (replaceable part); coarse knowledge neurons per "
            "sample; rates as in the CNL poster (normalised by all neurons) and relative to the "
            "mean set size."
        )
        report.table(decoupling(model, *suite.pairs, steps=sizes.steps))
    return fid, ipp


def _granularities_stage(
    model: Any, suite: _Suite, sizes: DemoSizes, report: Report
) -> dict[str, Any]:
    """The first facts' causal trace (ROME's layer) and knowledge circuit (EAP), rendered;
    the located layers and the circuit's size."""
    first, data = next(iter(suite.facts.items()))
    window = trace_window(model)
    trace = causal_trace(model, data, "mlp", samples=sizes.trace_samples, window=window)
    report.text(
        "## Three granularities: a layer and a circuit beside the neurons\n"
        f"Causal tracing (ROME) of {first!r}: the subject's token embeddings noised "
        f"({sizes.trace_samples} samples), each MLP output restored over {window} layers; the "
        f"located layer (largest average indirect effect) per paraphrase: {list(trace.located)}."
    )
    report.figure("trace", trace_heatmap(trace, 0), f"P(answer) with one state restored: {first}.")
    report.figure("trace-aie", aie_curves(trace), "Average indirect effect per layer.")
    found = {"rome_layers": [int(x) for x in trace.located]}
    corrupted = _corruption(model, first, suite.facts)
    if corrupted is None:  # a real model's subjects rarely share a token length
        report.text(f"No other fact's subject has the token length of {first!r}: no circuit.")
        return found
    circuit = knowledge_circuit(model, data, corrupted, "eap").select(n=50)
    report.figure(
        "circuit",
        circuit_figure(circuit),
        f"The knowledge circuit of {first!r} (EAP against {corrupted.name!r}): its top 50 edges, "
        "pruned to paths from the input to the logits.",
    )
    return {
        **found,
        "circuit_edges": circuit.n_edges,
        "circuit_heads": int(circuit.mask.heads.sum()),
    }


def _corruption(model: Any, first: str, facts: dict[str, Any]) -> Any:
    """``first``'s paraphrases with the subject of the first other fact that keeps their token
    lengths (the knowledge circuit's corrupted run), or ``None``."""
    for other, data in facts.items():
        if other == first:
            continue
        try:
            return corrupt_subjects(model, {first: facts[first], other: data})[first]
        except ValueError:
            continue
    return None


def _gradient_stage(model: Any, suite: _Suite, report: Report) -> tuple[Any, Any, Any]:
    """Neuron empirical gradients: NeurGrad against interventions, the skill probe and
    linearity, rendered; their results."""
    agreement = neurgrad_agreement(model, suite.neg, top=20)
    report.text("## Neuron empirical gradients")
    report.figure(
        "neg",
        neg_scatter(agreement),
        f"NeurGrad against interventions, top 20 neurons, {suite.neg.name}.",
    )
    probe = skill_probe(model, *suite.probe)
    report.table(probe)
    linear = linearity(model, suite.linear)
    report.figure(
        "linearity",
        linearity_histogram(linear),
        f"How linear P(answer) is in each neuron's activation ({suite.linear.name}): |Pearson r| "
        "over shifts ±0.1…2.0, for the top 20 neurons by NeurGrad and 20 random ones.",
    )
    return agreement, probe, linear


def _enhancement_stage(
    model: Any, suite: _Suite, sizes: DemoSizes, report: Report, found: Any
) -> tuple[str, Any]:
    """Fine-tuning only the located neurons after noise, rendered; the capability and result."""
    target, enhance_train = suite.enhance
    enhanced = enhancement(
        model,
        enhance_train,
        suite.test[target],
        found.masks[target],
        epochs=sizes.epochs,
        noise=sizes.noise,
        lr=3e-3,
    )
    report.text(
        f"## Enhancement\nEvery MLP weight matrix gets Gaussian noise ({sizes.noise:g} × its std), "
        f"which drops {target}'s accuracy; then only one set of neurons is fine-tuned on "
        f"{target}: the located set, a random set of the same size per layer, or all other "
        "neurons."
    )
    report.figure("enhancement", enhancement_curves(enhanced), f"Repairing {target}.")
    report.table(enhanced)
    return target, enhanced


def _headline(
    names: list[str],
    found: Any,
    everything: list[str],
    knowledge: tuple[Any, Any],
    gradients: tuple[Any, Any, Any],
    enhanced: Any,
    sizes: DemoSizes,
) -> dict[str, Any]:
    """The headline numbers of every stage, per capability and per experiment."""
    erased, halves, s0 = found.erased, found.halves, found.sigma
    (fid, ipp), (agreement, probe, linear) = knowledge, gradients
    headline: dict[str, Any] = {}
    for n in names:
        own = erased.cell(n, n, s0)
        worst = max(
            (r.drop for r in erased.at(s0) if r.located == n and r.evaluated != n), default=0.0
        )
        overlap = next(r for r in halves.rows if r.sigma == s0 and r.capability == n)
        headline[n] = {
            "accuracy": own.base,
            "neurons": own.neurons,
            "own_drop": own.drop,
            "random_drop": own.random_drop,
            "worst_other_drop": worst,
            "split_overlap": overlap.overlap,
        }
    headline["breaks_everything"] = everything
    headline["kn_fidelity"] = fid.mean_overlap
    headline["neurgrad_sign_agreement"] = agreement.rows[0].sign_agreement
    headline["skill_probe"] = probe.rows[0].accuracy
    headline["kn_ipp"] = ipp.ipp
    headline["neg_median_abs_r"] = sorted(r.abs_r for r in linear.rows)[len(linear.rows) // 2]
    final = {r.neurons: r.accuracy for r in enhanced.rows if r.epochs == max(sizes.epochs)}
    headline["enhancement"] = final
    return headline
