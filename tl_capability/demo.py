"""The main job: the papers' experiments on the zoo model, written to a report folder.

``tl-capability demo`` calls [`run`][tl_capability.demo.run]. Stages: accuracies; capability
localization (split overlap, erase matrix with random controls, per σ); knowledge-neuron fidelity;
neuron empirical gradients (NeurGrad against interventions, the skill-neuron probe). Every number is
computed here, on this machine, from the shipped model, by
[`tl_capability.experiments`][tl_capability.experiments] (each experiment once; figures and headline
numbers reuse its result) and rendered by [`tl_capability.report`][tl_capability.report].
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import tl_capability.zoo as zoo
from tl_capability.data import CapabilityDataset
from tl_capability.evaluate import answer_correct, correct_subset
from tl_capability.experiments import (
    decoupling,
    enhancement,
    fact_edits,
    fidelity,
    linearity,
    localization_suite,
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
from tl_capability.zoo import real


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
    tasks: int = 3
    steps: int = 20
    noise: float = 1.0


REAL_SIZES = DemoSizes(
    locate=40,
    evaluate=60,
    facts=8,
    probe=60,
    neg_samples=10,
    pairs=0,
    enhance_train=40,
    epochs=(1, 3),
    sigmas=(2.0, 6.0),
    noise=0.3,
)
"""The demo's sizes on the real model (30 layers): the papers' stages, fewer samples."""


@dataclass(frozen=True)
class _Suite:
    """What the demo measures a model on."""

    label: str
    train: dict[str, CapabilityDataset]
    test: dict[str, CapabilityDataset]
    facts: dict[str, CapabilityDataset]
    neg: CapabilityDataset
    linear: CapabilityDataset
    probe: tuple[CapabilityDataset, CapabilityDataset]
    pairs: tuple[CapabilityDataset, CapabilityDataset] | None
    enhance: tuple[str, CapabilityDataset]
    notes: tuple[str, ...] = ()


def _zoo_suite(name: str, sizes: DemoSizes) -> _Suite:
    names = zoo.capability_names()
    return _Suite(
        label=f"the zoo model {name!r}",
        train={n: zoo.dataset(n, n=sizes.locate, split="train", seed=1) for n in names},
        test={n: zoo.dataset(n, n=sizes.evaluate, split="test", seed=2) for n in names},
        facts={e: zoo.fact_dataset(e) for e, _ in zoo.ENTITIES[: sizes.facts]},
        neg=zoo.dataset("sentiment", n=sizes.neg_samples, seed=3),
        linear=zoo.dataset("addition", n=sizes.neg_samples, seed=3),
        probe=(
            zoo.dataset("choice", n=sizes.probe, split="train", seed=4),
            zoo.dataset("choice", n=sizes.probe, split="test", seed=4),
        ),
        pairs=zoo.addition_pairs(sizes.pairs) if sizes.pairs else None,
        enhance=("addition", zoo.dataset("addition", n=sizes.enhance_train, split="train", seed=5)),
    )


def _kept(model: Any, data: CapabilityDataset, n: int, what: str, notes: list[str]) -> Any:
    """The first ``n`` samples the model answers correctly, noted in the report."""
    kept, count = correct_subset(model, data)
    notes.append(f"{what}: {count} of {len(data)} answered correctly, {min(n, count)} kept")
    return kept.select(range(min(n, count)))


def _choice(data: CapabilityDataset, seed: int) -> CapabilityDataset:
    """Two-way multiple choice from a task: the answer against another sample's answer."""
    rng = random.Random(seed)
    answers = data.answers
    choices, labels = [], []
    for i, answer in enumerate(answers):
        other = next(a for a in answers[i + 1 :] + answers[:i] if a != answer)
        label = rng.randrange(2)
        choices.append([other, answer] if label else [answer, other])
        labels.append(label)
    return CapabilityDataset.from_pairs(
        data.prompts, answers, data.name, choices=choices, labels=labels
    )


def _available(task: str, split: str, n: int) -> int:
    """``n``, or all of the split's inputs when it holds fewer."""
    return min(n, len(real.task_pairs(task, split)))


def _real_suite(model: Any, name: str, sizes: DemoSizes) -> _Suite:
    notes: list[str] = []
    tasks = real.task_names()[: sizes.tasks]
    train = {
        t: _kept(
            model,
            real.task_dataset(t, _available(t, "train", 3 * sizes.locate), "train", seed=1),
            sizes.locate,
            f"{t} (train)",
            notes,
        )
        for t in tasks
    }
    test = {
        t: _kept(
            model,
            real.task_dataset(t, _available(t, "test", 2 * sizes.evaluate), "test", seed=2),
            sizes.evaluate,
            f"{t} (test)",
            notes,
        )
        for t in tasks
    }
    facts: dict[str, CapabilityDataset] = {}
    for relation in real.relation_names():
        for fact in real.facts(relation, 3 * sizes.facts, model=model):
            if len(facts) == sizes.facts:
                break
            correct = answer_correct(model, fact).nonzero()[:, 0].tolist()
            if len(correct) >= 2:  # fidelity compares paraphrases: two at least
                facts[f"{relation}: {fact.name}"] = fact.select(correct)
    notes.append(
        f"facts: the first {len(facts)} whose answer the model gives for at least two "
        "paraphrases, those paraphrases kept"
    )
    first, second = tasks[0], tasks[min(1, len(tasks) - 1)]
    probe = real.task_dataset(first, _available(first, "test", 2 * sizes.probe), "test", seed=4)
    half = len(probe) // 2
    return _Suite(
        label=f"the pretrained model {name!r}",
        train=train,
        test=test,
        facts=facts,
        neg=test[first].select(range(min(sizes.neg_samples, len(test[first])))),
        linear=test[second].select(range(min(sizes.neg_samples, len(test[second])))),
        probe=(
            _choice(probe.select(range(half)), 4),
            _choice(probe.select(range(half, 2 * half)), 5),
        ),
        pairs=None,
        enhance=(first, train[first]),
        notes=tuple(notes),
    )


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
    stages = tqdm(total=8, desc="demo", disable=not progress)
    model = zoo.load_model(name) if model is None else model
    suite = _real_suite(model, name, sizes) if is_real else _zoo_suite(name, sizes)
    names = list(suite.train)
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
    train, test = suite.train, suite.test

    def stage(name: str) -> None:
        if name != "accuracy":
            stages.update()
        stages.set_postfix_str(name)

    def done() -> None:
        # a long run on a real model leaves a readable partial report behind each stage
        report.save(out)
        stages.update()

    found = localization_suite(
        model,
        train,
        test,
        sigmas=sizes.sigmas,
        n_random=sizes.n_random,
        stage=stage,
        steps=sizes.steps,
    )
    add_localization(report, found)
    halves, erased = found.halves, found.erased
    everything = _breaks_everything(erased, found.sigma)
    if everything:
        report.text(
            f"**Not localization:** at σ = {found.sigma:g} the located sets of {everything} "
            "drop every capability, their own and the others alike (more than their random "
            "sets do): these neurons are critical to the model, not to one capability. Read "
            "an own drop only beside the other capabilities' drops and the random sets'."
        )
    done()

    stages.set_postfix_str("knowledge neurons")
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
    done()

    stages.set_postfix_str("neuron empirical gradients")
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
    done()

    stages.set_postfix_str("enhancement")
    target, enhance_train = suite.enhance
    enhanced = enhancement(
        model,
        enhance_train,
        test[target],
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
    done()
    stages.close()

    s0 = found.sigma
    headline: dict[str, Any] = {
        "seconds": round(time.perf_counter() - start, 1),
        "capabilities": names,
        "enhanced": target,
    }
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
    report.text(f"Generated in {headline['seconds']} s.")
    return report.save(out), headline


def _breaks_everything(erased: Any, sigma: float, margin: float = 10.0) -> list[str]:
    """The capabilities whose located set drops every other capability by at least its own
    drop less ``margin`` points, and more than its random sets do: model-critical neurons."""
    flagged = []
    for row in erased.at(sigma):
        if row.located != row.evaluated:
            continue
        others = [
            r for r in erased.at(sigma) if r.located == row.located and r.evaluated != row.located
        ]
        if (
            others
            and row.drop > 0
            and all(r.drop >= row.drop - margin and r.drop > r.random_drop + margin for r in others)
        ):
            flagged.append(row.located)
    return flagged
