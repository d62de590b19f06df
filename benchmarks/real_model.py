"""Seconds per prompt of the four estimators on the real model, SmolLM2-135M, against their
FLOP floors, measured in one run.

Answer-position IG, all-position IG, NeurGrad and empirical NEG run on real prompts (a Function
Vectors task, format 0, the samples the model answers). Each row reports the first call on the
model apart (it pays the one-time checks of the fast paths), then the best of ``--repeat``
later calls, seconds per prompt, and that time over the row's FLOP floor: the multiply-adds the
estimator cannot avoid, at the rate this machine multiplies float32 matrices (measured here
too, as in ``peers.py``).

    OMP_NUM_THREADS=1 python benchmarks/real_model.py [--prompts 4] [--steps 20] [--threads 1]

Floors (weights frozen, so a matmul's backward is one matmul; attention over the prompt's
cached keys is left out; ``B`` a block's multiply-adds per token, ``O`` its MLP output
projection's, ``H`` the unembedding's, ``L`` layers, ``S`` steps, ``T`` the prompt's tokens,
``A`` its answer tokens, ``k·v`` the NEG interventions):

- answer IG: per answer token and step, a row for each layer ``l`` from its MLP output up,
  forward and backward, and the head: ``A·S·Σ_l 2·((L−1−l)·B + O + H)``, so it grows with
  ``L²·S`` per answer token;
- all positions: per layer and step, the whole sequence from layer ``l`` up, forward and
  backward, the head at the answer positions: ``S·Σ_l 2·(T·((L−1−l)·B + O) + A·H)``;
- NeurGrad: one forward and one backward of the sequence, the head at the answer positions:
  ``2·(T·L·B + A·H)``;
- empirical NEG: per neuron, shift and answer token, a row from its layer up, forward only:
  ``A·k·v·((L−1−l)·B + O + H)``;
- a learned-mask step (``locate``'s default on this model: ``GROW_RECIPE``, 8 target and 8
  control samples): per sample, NeurGrad's floor (the gates' gradient is the activations'),
  so ``s / prompt`` there is per sample of the step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from peers import matmul_rate, sizes


def _timed(fn, repeat: int) -> tuple[float, float]:
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return first, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--task", default="capitalize")
    parser.add_argument("--neurons", type=int, default=10, help="neurons for empirical NEG")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--only", default="", help="comma-separated rows (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from tl_capability import (
        CapabilityDataset,
        LearnConfig,
        attribute,
        empirical_neg,
        learn_gates,
        tokenize,
        zoo,
    )
    from tl_capability.evaluate import correct_subset
    from tl_capability.zoo import real

    model = zoo.load_model("smollm2-135m", dtype=args.dtype)
    hf = model.original_model
    block, mlp_out, head = sizes(hf)
    n_layers = model.cfg.n_layers
    data, _ = correct_subset(model, real.task_dataset(args.task, 4 * args.prompts, seed=7))
    data = data.select(range(min(args.prompts, len(data))))
    samples = tokenize(model, data)
    n = len(samples)
    tokens = sum(s.input_length for s in samples) / n
    answers = sum(len(s.answer) for s in samples) / n
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    rate = matmul_rate("cpu", dtype)
    neurons = [(layer, 7) for layer in torch.linspace(0, n_layers - 1, args.neurons).long()]
    shifts = 10  # empirical_neg's default: five magnitudes, both signs

    def depth(layer: int) -> float:
        return (n_layers - 1 - layer) * block + mlp_out

    floors = {
        "answer IG": answers * args.steps * sum(2 * (depth(x) + head) for x in range(n_layers)),
        "all positions IG": args.steps
        * sum(2 * (tokens * depth(x) + answers * head) for x in range(n_layers)),
        "NeurGrad": 2 * (tokens * n_layers * block + answers * head),
        "empirical NEG": answers * shifts * sum(depth(int(x)) + head for x, _ in neurons),
        "learned-mask step": 2 * (tokens * n_layers * block + answers * head),
    }
    calls = {
        "answer IG": lambda: attribute(model, data, steps=args.steps, progress=False),
        "all positions IG": lambda: attribute(
            model, data, steps=args.steps, positions="all", progress=False
        ),
        "NeurGrad": lambda: attribute(model, data, "neurgrad", progress=False),
        "empirical NEG": lambda: empirical_neg(model, data, neurons, progress=False),
        # one step on n target and n control samples (the same prompts: the floor's tokens)
        "learned-mask step": lambda: learn_gates(
            model,
            data,
            {"c": control},
            progress=False,
            config=LearnConfig(steps=1, start=-2.0, batch_size=n, lr=0.2, init="none"),
        ),
    }
    # the control: the same prompts, answers rotated (same tokens; check_datasets refuses a
    # control with the target's very pairs)
    control = CapabilityDataset.from_pairs(
        data.prompts, [*data.answers[1:], *data.answers[:1]], "control"
    )
    if args.only:
        calls = {k: v for k, v in calls.items() if k in args.only.split(",")}
    print(
        f"SmolLM2-135M ({args.dtype}), {n} prompts of {args.task} ({tokens:.1f} tokens, "
        f"{answers:.1f} answer tokens on average), {args.steps} steps, {args.neurons} NEG "
        f"neurons x {shifts} shifts, {args.threads} thread(s), "
        f"matmul rate {rate / 1e9:.1f} GMAC/s\n"
    )
    print("| estimator | first call (s) | later calls (s) | s / prompt | × FLOP floor |")
    print("|---|---:|---:|---:|---:|")
    for name, fn in calls.items():
        first, best = _timed(fn, args.repeat)
        per = 2 * n if name == "learned-mask step" else n  # target and control rows
        floor_s = per * floors[name] / rate
        print(f"| {name} | {first:.2f} | {best:.2f} | {best / per:.3f} | {best / floor_s:.1f}x |")


if __name__ == "__main__":
    main()
