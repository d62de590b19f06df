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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tl_capability import zoo
from tl_capability.experiments import (
    decoupling,
    enhancement,
    fidelity,
    linearity,
    localization,
    neurgrad_agreement,
    reliability,
    skill_probe,
)
from tl_capability.report import (
    Report,
    add_localization,
    enhancement_curves,
    linearity_histogram,
    neg_scatter,
)


@dataclass(frozen=True)
class DemoSizes:
    """How many samples each stage uses (the defaults finish in a few minutes on 2 cores)."""

    locate: int = 100
    evaluate: int = 150
    n_random: int = 3
    facts: int = 20
    probe: int = 200
    neg_samples: int = 20
    n_random_kn: int = 10
    pairs: int = 50
    enhance_train: int = 200
    epochs: tuple[int, ...] = (1, 3, 5)
    sigmas: tuple[float, ...] = (2.0, 3.0, 6.0, 12.0)


def run(
    out: str | Path = "capability-report",
    sizes: DemoSizes | None = None,
    progress: bool = True,
    model: Any = None,
    name: str = "gpt2",
) -> tuple[Path, dict[str, Any]]:
    """Runs every stage and writes the report; returns its index path and headline numbers.

    ``model`` defaults to the zoo model ``name`` (see ``zoo.model_names()``).
    """
    sizes = sizes or DemoSizes()
    start = time.perf_counter()
    stages = tqdm(total=8, desc="demo", disable=not progress)
    model = zoo.load_model(name) if model is None else model
    names = zoo.capability_names()
    cfg = model.cfg
    label = f"the zoo model {name!r}"
    report = Report(f"tl_capability demo: the capabilities of {label} and their neurons")
    report.text(
        f"Model: {label} ({cfg.n_layers} layers, d_mlp {cfg.d_mlp}, "
        f"{cfg.n_layers * cfg.d_mlp} MLP neurons). Attribution: integrated gradients of P(answer) "
        f"(20 midpoint steps) on {sizes.locate} training samples per capability; selection: "
        f"s − mean > σ·std over all neurons (positive side); erasure: zero at every position; "
        "evaluation: "
        f"exact match on {sizes.evaluate} test samples; random controls: {sizes.n_random} sets "
        "with the same number of neurons in every layer."
    )

    train = {n: zoo.dataset(n, n=sizes.locate, split="train", seed=1) for n in names}
    test = {n: zoo.dataset(n, n=sizes.evaluate, split="test", seed=2) for n in names}

    def stage(name: str) -> None:
        if name != "accuracy":
            stages.update()
        stages.set_postfix_str(name)

    found = localization(
        model, train, test, sigmas=sizes.sigmas, n_random=sizes.n_random, stage=stage
    )
    add_localization(report, found)
    halves, erased = found.halves, found.erased
    stages.update()

    stages.set_postfix_str("knowledge neurons")
    facts = {e: zoo.fact_dataset(e) for e, _ in zoo.ENTITIES[: sizes.facts]}
    fid = fidelity(model, facts)
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
    report.text(
        f"Decoupling: {sizes.pairs} pairs of addition problems that share their first operand "
        "(main part) and differ in the second (replaceable part); coarse knowledge neurons per "
        "sample; rates as in the CNL poster (normalised by all neurons) and relative to the "
        "mean set size."
    )
    report.table(decoupling(model, *zoo.addition_pairs(sizes.pairs)))
    stages.update()

    stages.set_postfix_str("neuron empirical gradients")
    neg_data = zoo.dataset("sentiment", n=sizes.neg_samples, seed=3)
    agreement = neurgrad_agreement(model, neg_data, top=20)
    report.text("## Neuron empirical gradients")
    report.figure(
        "neg", neg_scatter(agreement), "NeurGrad against interventions, top 20 neurons, sentiment."
    )
    probe = skill_probe(
        model,
        zoo.dataset("choice", n=sizes.probe, split="train", seed=4),
        zoo.dataset("choice", n=sizes.probe, split="test", seed=4),
    )
    report.table(probe)
    linear = linearity(model, zoo.dataset("addition", n=sizes.neg_samples, seed=3))
    report.figure(
        "linearity",
        linearity_histogram(linear),
        "How linear P(answer) is in each neuron's activation (addition): |Pearson r| over "
        "shifts ±0.1…2.0, for the top 20 neurons by NeurGrad and 20 random ones.",
    )
    stages.update()

    stages.set_postfix_str("enhancement")
    enhanced = enhancement(
        model,
        zoo.dataset("addition", n=sizes.enhance_train, split="train", seed=5),
        test["addition"],
        found.masks["addition"],
        epochs=sizes.epochs,
        noise=1.0,
        lr=3e-3,
    )
    report.text(
        "## Enhancement\nEvery MLP weight matrix gets Gaussian noise (1.0 × its std), which drops "
        "addition's accuracy; then only one set of neurons is fine-tuned on addition: the "
        "located set, a random set of the same size per layer, or all other neurons."
    )
    report.figure("enhancement", enhancement_curves(enhanced), "Repairing addition.")
    report.table(enhanced)
    stages.update()
    stages.close()

    s0 = found.sigma
    headline: dict[str, Any] = {"seconds": round(time.perf_counter() - start, 1)}
    for n in names:
        own = erased.cell(n, n, s0)
        worst = max(r.drop for r in erased.at(s0) if r.located == n and r.evaluated != n)
        overlap = next(r for r in halves.rows if r.sigma == s0 and r.capability == n)
        headline[n] = {
            "accuracy": own.base,
            "neurons": own.neurons,
            "own_drop": own.drop,
            "random_drop": own.random_drop,
            "worst_other_drop": worst,
            "split_overlap": overlap.overlap,
        }
    headline["kn_fidelity"] = fid.mean_overlap
    headline["neurgrad_sign_agreement"] = agreement.rows[0].sign_agreement
    headline["skill_probe"] = probe.rows[0].accuracy
    headline["kn_ipp"] = ipp.ipp
    headline["neg_median_abs_r"] = sorted(r.abs_r for r in linear.rows)[len(linear.rows) // 2]
    final = {r.neurons: r.accuracy for r in enhanced.rows if r.epochs == max(sizes.epochs)}
    headline["enhancement"] = final
    report.text(f"Generated in {headline['seconds']} s.")
    return report.save(out), headline
