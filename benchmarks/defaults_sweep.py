"""Which attribution metric and selection rule localize capabilities best? (docs/findings.md)

For a model (the zoo model, or a sibling trained with ``python -m tl_capability.zoo.train --out
DIR --layers 3 --seed 1``), every capability's IG scores are computed with each metric, then
each selection rule picks a set; the set is zeroed at every position and the script prints, per
capability, ``own drop / random drop / worst drop of another capability`` in accuracy points,
and a summary line per rule: mean own drop, mean and worst margin (own − worst other), and how
many capabilities are "won" (own > worst other and own > random + 3).

    python benchmarks/defaults_sweep.py [--model zoo|DIR] [--metrics prob,logprob]
        [--locate 100] [--evaluate 100] [--threads 2]

This is a measurement, not a benchmark of speed; it takes ~5 minutes per metric on 2 cores.
"""

from __future__ import annotations

import argparse
import os

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="zoo")
    parser.add_argument("--metrics", default="prob,logprob")
    parser.add_argument("--locate", type=int, default=100)
    parser.add_argument("--evaluate", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tl_capability import ablate, accuracy, attribute, random_controls, select, zoo
    from tl_capability.models import load_model

    model = load_model(args.model)
    names = zoo.capability_names()
    train = {n: zoo.dataset(n, n=args.locate, split="train", seed=1) for n in names}
    test = {n: zoo.dataset(n, n=args.evaluate, split="test", seed=2) for n in names}
    base = {n: accuracy(model, test[n]) for n in names}
    print("accuracy", {n: round(100 * b, 1) for n, b in base.items()})
    n_neurons = model.cfg.n_layers * model.cfg.d_mlp
    rules = {
        f"{side}_{label}": dict(rule, side=side)
        for side in ("both", "positive")
        for label, rule in [
            *((f"sigma{s:g}", {"sigma": s}) for s in (2.0, 3.0, 6.0)),
            *((f"top{f:g}", {"top_k": int(f * n_neurons)}) for f in (0.005, 0.01, 0.02, 0.05)),
        ]
    }
    for metric in args.metrics.split(","):
        scores = {n: attribute(model, train[n], metric=metric, progress=False) for n in names}
        for label, rule in rules.items():
            cells, owns, margins, wins = [], [], [], 0
            for n in names:
                mask = select(scores[n], **rule)
                with ablate(model, mask):
                    drops = {e: 100 * (base[e] - accuracy(model, test[e])) for e in names}
                with ablate(model, random_controls(mask, 1, seed=0)[0]):
                    random_drop = 100 * (base[n] - accuracy(model, test[n]))
                other = max(drops[e] for e in names if e != n)
                owns.append(drops[n])
                margins.append(drops[n] - other)
                wins += drops[n] > other and drops[n] > random_drop + 3
                cells.append(f"{n[:4]} k{len(mask)} {drops[n]:.0f}/{random_drop:.0f}/{other:.0f}")
            own = sum(owns) / len(owns)
            print(
                f"{metric:8s} {label:18s} own {own:5.1f} margin {sum(margins) / len(margins):5.1f}"
                f" worst {min(margins):5.1f} wins {wins}/{len(names)} | " + "  ".join(cells),
                flush=True,
            )


if __name__ == "__main__":
    main()
