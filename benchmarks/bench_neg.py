"""NeurGrad against brute-force empirical NEG over every neuron of the zoo model.

Brute force shifts each of the model's 2,048 MLP neurons by ±v·sign(a) for the NEG paper's
five magnitudes (10 interventions per neuron and answer token, batched, one token per row over
the clean run's key/value cache) and fits the slope; NeurGrad takes one forward and one
backward pass. The script times both in one run and prints their ratio and how well NeurGrad
predicts the measured slopes (sign agreement and correlation, over all neurons and on the top
1 % by |NEG|).

    python benchmarks/bench_neg.py [--samples 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--capability", default="sentiment")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from tl_capability import attribute, empirical_neg, zoo

    model = zoo.load_model()
    data = zoo.dataset(args.capability, n=args.samples, seed=3)
    everything = torch.ones(model.cfg.n_layers, model.cfg.d_mlp, dtype=torch.bool)

    start = time.perf_counter()
    neurgrad = attribute(model, data, "neurgrad", per_sample=True, progress=False)
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    measured = empirical_neg(model, data, everything, progress=False)
    t_brute = time.perf_counter() - start

    predicted = neurgrad.per_sample.flatten(1)
    slopes = measured.slope
    sign = (predicted.sign() == slopes.sign()).float().mean().item()
    corr = torch.corrcoef(torch.stack([predicted.flatten(), slopes.flatten()]))[0, 1].item()
    k = max(1, predicted.shape[1] // 100)
    top = slopes.abs().topk(k, dim=1).indices
    p_top, s_top = predicted.gather(1, top), slopes.gather(1, top)
    sign_top = (p_top.sign() == s_top.sign()).float().mean().item()
    corr_top = torch.corrcoef(torch.stack([p_top.flatten(), s_top.flatten()]))[0, 1].item()
    linear = (measured.r.abs() > 0.9).float().mean().item()

    n_neurons = everything.sum().item()
    print(
        f"zoo model, {args.capability}: {args.samples} samples, {n_neurons} neurons, "
        f"shifts ±{[round(v, 3) for v in measured.shifts[measured.shifts > 0].tolist()]}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    print(f"brute-force empirical NEG : {t_brute:8.2f} s")
    print(f"NeurGrad                  : {t_fast:8.2f} s")
    print(f"speed-up                  : {t_brute / t_fast:8.0f}x")
    print(f"agreement, all neurons    : sign {sign:.3f}, correlation {corr:.3f}")
    print(f"agreement, top 1 % by NEG : sign {sign_top:.3f}, correlation {corr_top:.3f}")
    print(f"neurons with |Pearson r| > 0.9 (linear): {linear:.3f}")


if __name__ == "__main__":
    main()
