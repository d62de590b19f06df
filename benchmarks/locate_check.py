"""``locate``'s default as a user runs it, on any model: the issue-29 check.

For each task (the target; every other task a control), ``locate(model, target, controls)``
with its defaults on ``--n-train`` samples per task that the model answers, then the mask
measured on fresh samples: the target's accuracy drop, the worst control's, and 3 random sets
of the mask's per-layer shape. Zoo models draw train and test samples from the zoo's splits;
SmolLM2 ranks on prompt formats ``--fit-formats`` and is measured on the held-out format
``--eval-format`` (``benchmarks/locate_real.py``'s data).

    python benchmarks/locate_check.py --model llama --out results.jsonl
    python benchmarks/locate_check.py --model /path/to/model-dir   # a model trained elsewhere
    python benchmarks/locate_check.py --model smollm2-135m \\
        --tasks singular-plural,capitalize,present-past --n-eval 100
    python benchmarks/locate_check.py --model llama --learn '{"start": -2}'  # LearnConfig fields
    python benchmarks/locate_check.py --model smollm2-135m --only capitalize \
        --tasks singular-plural,capitalize,present-past --learn '{"steps": 20};{"steps": 80}'


One JSON line per task: neurons, share (%), own / worst other / random drop on the test
samples, whether the budget rule reached its goal on its check samples, the start and steps the
learned mask ran, the budget walk (``scan``) and seconds (this machine, one thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a zoo name, a directory or a GGUF file")
    parser.add_argument("--tasks", default="", help="comma-separated (default: the zoo's six)")
    parser.add_argument("--n-train", type=int, default=100, help="samples per task for locate")
    parser.add_argument("--n-eval", type=int, default=150, help="test samples asked per task")
    parser.add_argument("--fit-formats", default="0,1,2", help="real tasks: ranking formats")
    parser.add_argument("--eval-format", type=int, default=3, help="real tasks: held out")
    parser.add_argument("--seed", type=int, default=0, help="locate's seed")
    parser.add_argument("--learn", default="", help="LearnConfig fields as JSON; ';' for several")
    parser.add_argument("--only", default="", help="comma-separated targets (default: all)")
    parser.add_argument("--out", type=Path, default=Path("locate-check.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    import locate_real

    from tl_capability import LearnConfig, zoo
    from tl_capability.models import load_model

    known = (*zoo.model_names(), *zoo.real_model_names())
    model = zoo.load_model(args.model) if args.model in known else load_model(args.model)
    if args.model not in known:  # a model trained elsewhere on the zoo's tasks
        locate_real._zoo_models = lambda: (args.model,)
    tasks = args.tasks.split(",") if args.tasks else zoo.capability_names()
    args.attr_batch, keep = 16, args.n_train
    if args.model in zoo.real_model_names():  # ask for more: only answered samples are kept
        args.n_train = int(1.5 * keep)
    train, test, kept = locate_real._data(args, model, tasks)
    train = {t: d.select(range(min(len(d), keep))) for t, d in train.items()}
    print("kept (train, test):", kept, flush=True)
    for spec in args.learn.split(";"):
        learn = LearnConfig(**json.loads(spec)) if spec else None
        for target in args.only.split(",") if args.only else tasks:
            _check(model, target, tasks, train, test, learn, spec, args)


def _check(model, target, tasks, train, test, learn, spec, args) -> None:
    """One ``locate`` call, measured on the test samples; one JSON line."""
    from tl_capability import LocateConfig, ablate, accuracy, random_controls
    from tl_capability.localization import locate

    start = time.perf_counter()
    controls = {n: train[n] for n in tasks if n != target}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = locate(model, train[target], controls, progress=False, learn=learn,
                      config=LocateConfig(seed=args.seed))  # fmt: skip
    seconds = time.perf_counter() - start
    base = {n: accuracy(model, d, progress=False) for n, d in test.items()}
    with ablate(model, mask):
        drops = {n: 100 * (base[n] - accuracy(model, d, progress=False)) for n, d in test.items()}
    placebo = []
    for control in random_controls(mask, 3, seed=0):
        with ablate(model, control):
            placebo.append(100 * (base[target] - accuracy(model, test[target], progress=False)))
    sel = mask.selection
    row = {
        "model": args.model, "task": target, "n_train": len(train[target]),
        "n_test": len(test[target]), "neurons": len(mask),
        "percent": round(100 * len(mask) / mask.tensor.numel(), 3), "own": drops[target],
        "worst_other": max(v for n, v in drops.items() if n != target),
        "random": sum(placebo) / len(placebo), "reached": sel["reached"],
        "start": sel.get("learn", {}).get("start"), "steps": sel.get("learn", {}).get("steps"),
        "scan": sel.get("scan"), "seconds": round(seconds), "learn": spec,
        "seed": args.seed, "warnings": [str(w.message)[:120] for w in caught],
    }  # fmt: skip
    print(json.dumps(row), flush=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
