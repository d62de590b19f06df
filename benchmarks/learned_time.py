"""Learned masks against all-position integrated gradients: time per capability, same data.

For every zoo model and capability, on the same 200 training samples (the other capabilities'
200 as controls for the learned mask): ``learn_mask`` with its defaults (which includes
binarising the gates and measuring the budget curve) and ``attribute(..., positions="all")``
with ``locate``'s default 8 steps. Prints seconds and their ratio per capability.

    python benchmarks/learned_time.py [--models gpt2 gpt2-dropout llama] [--n 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["gpt2", "gpt2-dropout", "llama"])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=8, help="IG steps (locate's default: 8)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from tl_capability import attribute, learn_mask, zoo

    print("| model | capability | learn_mask (s) | all-position IG (s) | ratio |")
    print("|---|---|---:|---:|---:|")
    ratios = []
    for name in args.models:
        model = zoo.load_model(name)
        data = {c: zoo.dataset(c, n=args.n, split="train", seed=1) for c in zoo.capability_names()}
        for target, samples in data.items():
            controls = {c: d for c, d in data.items() if c != target}
            start = time.perf_counter()
            learn_mask(model, samples, controls, progress=False)
            t_learned = time.perf_counter() - start
            start = time.perf_counter()
            attribute(model, samples, steps=args.steps, positions="all", progress=False)
            t_ig = time.perf_counter() - start
            ratios.append(t_learned / t_ig)
            print(f"| {name} | {target} | {t_learned:.1f} | {t_ig:.1f} | {ratios[-1]:.1f} |")
    print(f"\nmedian ratio {sorted(ratios)[len(ratios) // 2]:.1f}, max {max(ratios):.1f}")


if __name__ == "__main__":
    main()
