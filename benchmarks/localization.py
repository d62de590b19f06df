"""Every localization method side by side on one model (docs/findings.md's headline table).

For each capability of the zoo, each method ranks neurons on two thirds of the capability's
*train* samples against the other five as controls; ``tl_capability.budget_mask`` picks the set
size on the held-out third of the train samples, exactly as ``locate`` does (the smallest
prefix that drops the capability by ``--target-drop`` points while no control drops by more than
``--tolerance``, within ``--budget`` of all neurons);
then everything is measured on fresh *test* samples: the capability's own accuracy drop with the
set zeroed at every position, the worst drop of another capability, and random sets of the same
per-layer shape (3 seeds). Erase curves over the whole budget (own, worst other, random with its
95 % band) go to one figure per capability.

    python benchmarks/localization.py --model gpt2 [--out DIR] [--methods answer,all,...]
        [--data a.jsonl b.jsonl ...]   # any model: --model DIR or FILE.gguf
        [--locate 64] [--evaluate 150] [--steps 8] [--budget 0.05] [--threads 2]
        [--learn-steps N] [--learn-lr LR] [--seed S] [--no-curves]

Methods: ``answer`` (the papers' pipeline: answer-position IG, σ = 2; its curve ranks by the
same scores), ``all`` (all-position IG of log P), ``contrastive``, ``iterative``, ``learned``
(see :mod:`tl_capability.localization`). Prints a markdown table per model and a summary line per
method; writes ``DIR/<model>/index.md`` with the curves. A measurement, not a speed benchmark:
times are seconds of ranking on this machine, for comparing methods within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

METHODS = ("answer", "all", "contrastive", "iterative", "learned")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="gpt2", help="a zoo model name, a model directory or a GGUF file"
    )
    parser.add_argument(
        "--data", nargs="+", default=None,
        help="datasets: zoo capabilities or files of prompt/answer pairs (default: the zoo's)",
    )  # fmt: skip
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--capabilities", default=None, help="comma-separated (default: all)")
    parser.add_argument("--locate", type=int, default=96, help="train samples per capability")
    parser.add_argument(
        "--check-fraction", type=float, default=1 / 3, help="share held out for the budget"
    )
    parser.add_argument("--evaluate", type=int, default=150, help="test samples per capability")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--budget", type=float, default=0.05, help="largest share of neurons")
    parser.add_argument("--target-drop", type=float, default=60.0)
    parser.add_argument("--tolerance", type=float, default=10.0)
    parser.add_argument("--n-random", type=int, default=3)
    parser.add_argument("--chunk", type=float, default=0.01, help="share per iterative round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--learn-steps", type=int, default=None, help="learned: Adam steps")
    parser.add_argument("--learn-lr", type=float, default=None, help="learned: learning rate")
    parser.add_argument("--seed", type=int, default=0, help="learned: seed of the gates' noise")
    parser.add_argument("--no-curves", action="store_true", help="skip the erase curves")
    parser.add_argument("--out", type=Path, default=Path("localization-results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tl_capability import (
        LearnConfig,
        LocateConfig,
        ablate,
        accuracy,
        attribute,
        random_controls,
    )
    from tl_capability.budget import budget_mask, holdout
    from tl_capability.curves import erase_curve
    from tl_capability.experiments import mean_ci
    from tl_capability.localization import locate, rank_neurons
    from tl_capability.report import Report, erase_curves_figure

    model = _model(args.model)
    train, test = _datasets(model, args)
    names = list(train)
    methods = args.methods.split(",")
    # locate()'s split: rank on `fit`, check the budget on `check` (every dataset split alike).
    parts = {n: holdout(train[n], None, args.check_fraction) for n in names}
    fit = {n: p[0] for n, p in parts.items()}
    check = {n: p[2] for n, p in parts.items()}
    base = {n: accuracy(model, test[n]) for n in names}
    n_neurons = model.cfg.n_layers * model.cfg.d_mlp
    print(f"model {args.model}: accuracy", {n: round(100 * b, 1) for n, b in base.items()})

    # All-position scores of every capability, shared by "all" and "contrastive" (timed apart).
    start = time.perf_counter()
    shared = {}
    if {"all", "contrastive"} & set(methods):
        shared = {
            n: attribute(
                model,
                d,
                "ig",
                steps=args.steps,
                metric="logprob",
                positions="all",
                progress=False,
            ).values
            for n, d in fit.items()
        }
    per_capability_scoring = (time.perf_counter() - start) / len(names)

    learn = LearnConfig(
        **{k: v for k, v in (("steps", args.learn_steps), ("lr", args.learn_lr)) if v is not None}
    )
    rows, curves = [], {n: [] for n in names}
    for target in names:
        controls = {o: train[o] for o in names if o != target}
        fit_controls = {o: fit[o] for o in controls}
        check_controls = {o: check[o] for o in controls}
        for method in methods:
            start = time.perf_counter()
            if method == "answer":
                mask = locate(model, train[target], controls, method="answer", progress=False)
                order = rank_neurons(
                    model,
                    train[target],
                    method="answer",
                    max_fraction=args.budget,
                    progress=False,
                    config=LocateConfig(ig_steps=20),
                )
                seconds = time.perf_counter() - start
            else:
                order = rank_neurons(
                    model,
                    fit[target],
                    fit_controls,
                    method=method,
                    max_fraction=args.budget,
                    progress=False,
                    config=LocateConfig(
                        ig_steps=args.steps, chunk_fraction=args.chunk, seed=args.seed,
                        scores=shared,
                    ),
                    learn=learn,
                )  # fmt: skip
                seconds = time.perf_counter() - start
                if method in ("all", "contrastive"):
                    seconds += per_capability_scoring * (1 if method == "all" else len(names))
                mask = budget_mask(
                    model,
                    order,
                    check[target],
                    check_controls,
                    target_drop=args.target_drop,
                    tolerance=args.tolerance,
                    progress=False,
                )
            drops = {}
            with ablate(model, mask):
                for n in names:
                    drops[n] = 100 * (base[n] - accuracy(model, test[n]))
            random = []
            for control in random_controls(mask, args.n_random, seed=0):
                with ablate(model, control):
                    random.append(100 * (base[target] - accuracy(model, test[target])))
            r_mean, r_half = mean_ci(random)
            worst = max(v for n, v in drops.items() if n != target) if len(names) > 1 else 0.0
            rows.append(
                {
                    "capability": target,
                    "method": method,
                    "neurons": len(mask),
                    "percent": 100 * len(mask) / n_neurons,
                    "own": drops[target],
                    "worst_other": worst,
                    "random": r_mean,
                    "random_ci95": r_half,
                    "seconds": seconds,
                    # whether the size was chosen by the goal on the check split, or by fallback
                    "reached": mask.selection.get("reached"),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            if args.no_curves:
                continue
            curves[target].append(
                erase_curve(
                    model,
                    order,
                    test[target],
                    {o: test[o] for o in names if o != target},
                    n_random=args.n_random,
                    progress=False,
                    name=method,
                    sizes=sorted({max(1, round(len(order) * i / 10)) for i in range(1, 11)}),
                )
            )
    _write(args, rows, curves, names, methods, Report, erase_curves_figure)


def _write(args, rows, curves, names, methods, Report, erase_curves_figure) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows)
    summary = frame.groupby("method", sort=False)[
        ["percent", "own", "worst_other", "random", "seconds"]
    ].mean()
    summary = summary.reindex([m for m in methods if m in summary.index])
    print(f"\n## {args.model}\n")
    print(frame.to_markdown(index=False, floatfmt=".1f"))
    print("\nmean over capabilities:\n")
    print(summary.to_markdown(floatfmt=".1f"))
    out = args.out / Path(args.model).name  # a directory or file: its last name
    report = Report(f"Localization methods on the model {args.model!r}")
    report.text(
        f"Located on {args.locate} train samples per capability (the other capabilities as "
        f"controls), measured on {args.evaluate} test samples; budget ≤ {100 * args.budget:g} % "
        f"of neurons, goal: own drop ≥ {args.target_drop:g}, worst other ≤ {args.tolerance:g}."
    )
    report.text("## Mean over capabilities\n\n" + summary.to_markdown(floatfmt=".1f"))
    report.text("## Every capability\n\n" + frame.to_markdown(index=False, floatfmt=".1f"))
    every = [c for n in names for c in curves[n]]
    if every:
        report.figure(
            "curves",
            erase_curves_figure(every, title=f"model {args.model}"),
            "Erase curves of every method, one panel per capability (test samples).",
        )
    for n in names if every else []:
        report.figure(
            f"curves-{n}",
            erase_curves_figure(curves[n], title=f"{args.model}: {n}"),
            f"Erase curves for {n} (test samples).",
        )
    report.save(out)
    frame.to_csv(out / "results.csv", index=False)
    torch.save(curves, out / "curves.pt")  # EraseCurve objects, to redraw without re-running
    print(f"\nwrote {out / 'index.md'}")


def _model(name: str):
    """A zoo model by name, else any model ``tl_capability.models.load_model`` takes."""
    from tl_capability import zoo
    from tl_capability.models import load_model

    known = (*zoo.model_names(), *zoo.real_model_names())
    return zoo.load_model(name) if name in known else load_model(name)


def _datasets(model, args):
    """Train and test samples per dataset, kept where the model answers them. A zoo
    capability draws from its two splits; a file (or any ``loaders.resolve`` spec) is split at
    random, ``--locate`` samples to train on and the rest (up to ``--evaluate``) to test on."""
    from tl_capability import zoo
    from tl_capability.evaluate import correct_subset
    from tl_capability.loaders import resolve

    specs = args.data or (
        args.capabilities.split(",") if args.capabilities else zoo.capability_names()
    )
    train, test = {}, {}
    for spec in specs:
        if spec in zoo.capability_names():
            fit = zoo.dataset(spec, n=args.locate, split="train", seed=1)
            held = zoo.dataset(spec, n=args.evaluate, split="test", seed=2)
        else:
            data, _ = correct_subset(model, resolve(spec), progress=False)
            if len(data) <= args.locate:
                raise ValueError(f"{spec}: {len(data)} answered samples, --locate {args.locate}")
            fit, held = data.split(args.locate / len(data), seed=1)
            held = held.select(range(min(len(held), args.evaluate)))
        name = fit.name or spec
        train[name], _ = correct_subset(model, fit, progress=False)
        test[name], _ = correct_subset(model, held, progress=False)
    return train, test


if __name__ == "__main__":
    main()
