"""Which ranking should ``locate`` default to on a real model? Rankings side by side, timed.

For each task (each the target, the others its controls), ranks neurons on samples of some
prompt formats the model answers, then measures erase curves on a *held-out* prompt format
(SmolLM2) or fresh test samples (zoo models): own drop, worst other drop and random sets of
the same per-layer shape, at ``--fractions`` of the neurons (default 0.5-5 %), zeroed at every
position. Optionally the budget rule (``budget_mask`` on the held-out third of the ranking
samples, as ``locate`` does) picks a size, measured on the evaluation samples too.

    python benchmarks/locate_real.py --model smollm2-135m \
        --tasks singular-plural,capitalize,present-past \
        --methods "gxa-c3;learned-gxa-c3:steps=20,start=-4,lr=0.2" \
        --fractions 0.0005,0.001,0.002,0.005,0.01 --out results.jsonl
    python benchmarks/locate_real.py --model llama --tasks "" --n-train 100 --n-eval 150 \
        --methods "learned:steps=150,batch_size=32"

``--figure PATH`` only draws the curves of ``--out``'s lines (one panel per task).
``--methods`` is ``;``-separated; ``--tasks ""`` takes every zoo capability (zoo models). The
measurements of ``docs/findings.md`` ("locate on SmolLM2-135M") came from these commands.

Methods (one-shot scores are all-position, of ``log P(answer)``; ``-c``: contrastive against
the controls, ``reduce="max"``):

- ``gxa``, ``gxa-c``: grad x act (attribution patching), one forward and backward pass;
  ``gxa-c3``: the controls' need weighted 3 (``contrastive_scores(weight=3)``);
- ``ig<S>``, ``ig<S>-c``: integrated gradients with ``S`` steps;
- ``learned[-<init>][:key=value,...]``: ``learn_gates`` with a ``LearnConfig``
  (``steps``, ``lr``, ``sparsity``, ``start``, ``gate``, ``batch_size``), initialised from the
  scores of ``<init>`` (e.g. ``learned-gxa-c:steps=20,start=-3``).

Writes one JSON line per (task, method) to ``--out`` as soon as it is measured (times in
seconds of this machine, ranking and evaluation apart).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

FRACTIONS = (0.005, 0.01, 0.02, 0.03, 0.05)


def _data(args, model, tasks):
    """Ranking samples (fit + check) and evaluation samples per task, only those answered."""
    from tl_capability.data import CapabilityDataset
    from tl_capability.evaluate import correct_subset

    if args.model in _zoo_models():
        from tl_capability import zoo

        train = {t: zoo.dataset(t, n=args.n_train, split="train", seed=1) for t in tasks}
        test = {t: zoo.dataset(t, n=args.n_eval, split="test", seed=2) for t in tasks}
    else:
        from tl_capability.zoo import real

        fits = [int(f) for f in args.fit_formats.split(",")]
        per = -(-args.n_train // len(fits))
        train, test = {}, {}
        for t in tasks:
            parts = [real.task_dataset(t, n=per, split="train", fmt=f, seed=1) for f in fits]
            prompts = [p for d in parts for p in d.prompts]
            answers = [a for d in parts for a in d.answers]
            train[t] = CapabilityDataset.from_pairs(prompts, answers, t)
            test[t] = real.task_dataset(t, n=args.n_eval, split="test", fmt=args.eval_format)
    kept = {}
    for t in tasks:
        train[t], a = correct_subset(model, train[t], progress=False)
        test[t], b = correct_subset(model, test[t], progress=False)
        kept[t] = (a, b)
    return train, test, kept


def _zoo_models() -> tuple[str, ...]:
    from tl_capability import zoo

    return tuple(zoo.model_names())


def _scores(model, data, kind: str, batch_size: int):
    from tl_capability.attribution import attribute

    method, steps = ("grad_x_act", 1) if kind == "gxa" else ("ig", int(kind[2:]))
    return attribute(
        model, data, method, steps=steps, metric="logprob", positions="all",
        batch_size=batch_size, progress=False,
    ).values  # fmt: skip


def _rank(model, method, target, fit, cache, args):
    """The ranking (a [layer, d_mlp] score tensor) of ``method`` for ``target``."""
    from tl_capability.learned import LearnConfig, learn_gates
    from tl_capability.rankings import contrastive_scores

    def scores(kind):
        plain, contrast, weight = kind.partition("-c")
        for name in fit:
            if (plain, name) not in cache:
                cache[plain, name] = _scores(model, fit[name], plain, args.attr_batch)
        if not contrast:
            return cache[plain, target]
        others = {n: cache[plain, n] for n in fit if n != target}
        return contrastive_scores(cache[plain, target], others, weight=float(weight or 1))

    if not method.startswith("learned"):
        return scores(method), {}
    head, _, opts = method.partition(":")
    init = scores(head.removeprefix("learned-")) if head != "learned" else None
    values = {"batch_size": 8}
    for item in filter(None, opts.split(",")):
        key, value = item.split("=")
        values[key] = value if key == "gate" else float(value)
    for key in ("steps", "batch_size"):
        values[key] = int(values[key]) if key in values else values.get(key)
    config = LearnConfig(**{k: v for k, v in values.items() if v is not None})
    controls = {n: d for n, d in fit.items() if n != target}
    logits, history = learn_gates(
        model, fit[target], controls, config=config, init=init, max_fraction=args.budget,
        seed=args.seed, progress=False,
    )  # fmt: skip
    last = history[-1]
    return logits, {"last_suppress": last["suppress"], "last_kl": last["maintain"],
                    "first_kl": history[0]["maintain"], "sparsity": last["sparsity"],
            "suppress_every5": [round(h["suppress"], 3) for h in history[::5]],
            "kl_every5": [round(h["maintain"], 3) for h in history[::5]]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="singular-plural,capitalize,present-past")
    parser.add_argument("--methods", default="gxa-c", help="';'-separated")
    parser.add_argument("--n-train", type=int, default=120, help="ranking samples asked")
    parser.add_argument("--n-eval", type=int, default=100, help="evaluation samples asked")
    parser.add_argument("--fit-formats", default="0,1,2", help="real tasks: ranking formats")
    parser.add_argument("--eval-format", type=int, default=3, help="real tasks: held out")
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    parser.add_argument("--n-random", type=int, default=1)
    parser.add_argument("--budget-rule", action="store_true", help="also run budget_mask")
    parser.add_argument("--attr-batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("locate-real.jsonl"))
    parser.add_argument("--figure", type=Path, default=None, help="only draw --out's curves")
    args = parser.parse_args()
    if args.figure:
        return _figure(args.out, args.figure)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tl_capability import zoo
    from tl_capability.budget import budget_mask, holdout
    from tl_capability.curves import erase_curve

    t0 = time.perf_counter()
    model = zoo.load_model(args.model)
    tasks = args.tasks.split(",") if args.tasks else zoo.capability_names()
    train, test, kept = _data(args, model, tasks)
    split = {t: holdout(train[t], None, 1 / 3, args.seed) for t in tasks}
    fit = {t: s[0] for t, s in split.items()}
    check = {t: s[2] for t, s in split.items()}
    n_neurons = model.cfg.n_layers * model.cfg.d_mlp
    sizes = [max(1, round(float(f) * n_neurons)) for f in args.fractions.split(",")]
    print(f"setup {time.perf_counter() - t0:.0f}s; kept (train, eval): {kept}", flush=True)
    cache: dict = {}
    for method in args.methods.split(";"):
        for target in tasks:
            start = time.perf_counter()
            before = set(cache)
            ranking, info = _rank(model, method, target, fit, cache, args)
            seconds = time.perf_counter() - start
            others = {n: test[n] for n in tasks if n != target}
            start = time.perf_counter()
            curve = erase_curve(
                model, ranking, test[target], others, sizes=sizes, n_random=args.n_random,
                seed=args.seed, progress=False, name=method,
            )  # fmt: skip
            row = {
                "model": args.model, "method": method, "task": target,
                "kept": kept[target], "rank_s": round(seconds, 1),
                "new_scores": len(set(cache) - before),
                "percent": [round(100 * k / n_neurons, 2) for k in sizes],
                "own": curve.own_drop, "worst_other": curve.worst_other,
                "others": curve.other_drops, "random": curve.random_drop,
                "eval_s": round(time.perf_counter() - start, 1), **info,
            }  # fmt: skip
            if args.budget_rule:
                start = time.perf_counter()
                order = curve.order[: max(1, int(args.budget * n_neurons))]
                mask = budget_mask(
                    model, order, check[target], {n: check[n] for n in others},
                    target_drop=60.0, tolerance=10.0, progress=False,
                )  # fmt: skip
                row["budget"] = _measure(model, mask, target, test, args)
                row["budget"]["seconds"] = round(time.perf_counter() - start, 1)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def _measure(model, mask, target, test, args):
    """The budget rule's set measured on the evaluation samples."""
    from tl_capability import ablate, accuracy, random_controls

    base = {n: accuracy(model, d, progress=False) for n, d in test.items()}
    drops = {}
    with ablate(model, mask):
        for n, d in test.items():
            drops[n] = 100 * (base[n] - accuracy(model, d, progress=False))
    rand = []
    for control in random_controls(mask, args.n_random, seed=args.seed):
        with ablate(model, control):
            rand.append(100 * (base[target] - accuracy(model, test[target], progress=False)))
    return {
        "neurons": len(mask), "reached": mask.selection["reached"], "own": drops[target],
        "worst_other": max(v for n, v in drops.items() if n != target),
        "random": sum(rand) / max(1, len(rand)),
    }  # fmt: skip


def _figure(results: Path, path: Path) -> None:
    """One panel per task of ``results``: own (solid), worst other (dashed) and random
    (dotted) drop against the share of neurons, one colour per method."""
    from matplotlib.figure import Figure

    rows = [json.loads(line) for line in results.read_text().splitlines()]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
    fig = Figure(figsize=(4.4 * len(tasks), 3.4), layout="constrained")
    for ax, task in zip(fig.subplots(1, len(tasks), squeeze=False)[0], tasks, strict=True):
        for r in (r for r in rows if r["task"] == task):
            c = colours[r["method"]]
            ax.plot(r["percent"], r["own"], "o-", color=c, label=f"{r['method']}: own")
            ax.plot(r["percent"], r["worst_other"], "s--", color=c, label="worst other")
            ax.plot(r["percent"], r["random"], ":", color=c, label="random")
        ax.axhline(10, color="grey", lw=0.6)
        ax.set(title=task, xscale="log", xlabel="% of neurons zeroed", ylim=(-5, 105))
    fig.axes[0].set_ylabel("accuracy drop (points)")
    fig.axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
