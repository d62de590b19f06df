"""The ``tl-capability`` command line.

``tl-capability demo`` runs the main job on the bundled zoo model (offline): the papers'
experiments, written to ``capability-report/`` (see :mod:`tl_capability.demo`), and a summary of
the headline numbers.
"""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    from tl_capability import zoo
    from tl_capability.demo import DemoSizes, run

    start = time.perf_counter()
    zoo.import_backend()  # TransformerLens imports its model machinery on first use
    imported = time.perf_counter()
    model = zoo.load_model()
    loaded = time.perf_counter()
    cfg = model.cfg
    print(
        f"zoo model: {cfg.n_layers} layers, d_model {cfg.d_model}, d_mlp {cfg.d_mlp} "
        f"({cfg.n_layers * cfg.d_mlp} MLP neurons); TransformerLens import "
        f"{imported - start:.1f}s, model load {loaded - imported:.1f}s"
    )
    sizes = (
        DemoSizes()
        if not args.quick
        else DemoSizes(
            locate=12, evaluate=20, n_random=2, facts=3, probe=24, neg_samples=4, sigmas=(3.0, 6.0)
        )
    )
    index, head = run(args.out, sizes, progress=not args.quiet, model=model)
    sigma = sizes.sigmas[0]
    print(
        f"\n{'capability':<11} {'accuracy':>9} {'neurons':>8} {'erased':>8} {'random':>8} "
        f"{'others':>8} {'halves':>7}   (σ = {sigma:g}; drops in points)"
    )
    for name in zoo.capability_names():
        h = head[name]
        print(
            f"{name:<11} {h['accuracy']:>8.1f}% {h['neurons']:>8d} {-h['own_drop']:>+8.1f} "
            f"{-h['random_drop']:>+8.1f} {-h['worst_other_drop']:>+8.1f} "
            f"{h['split_overlap']:>7.2f}"
        )
    print(
        f"\nknowledge-neuron fidelity across paraphrases: overlap {head['kn_fidelity']:.2f}; "
        f"NeurGrad vs interventions sign agreement {head['neurgrad_sign_agreement']:.2f}; "
        f"skill-neuron probe {head['skill_probe']:.1f}%"
    )
    print(
        "\nerased: accuracy change with the located neurons zeroed; random: the same for "
        "random sets of the same size per layer; others: the worst change of another "
        "capability; halves: overlap of the sets located on two halves of the data."
    )
    print(f"Report: {index.resolve()} ({head['seconds']} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tl-capability`` console script."""
    parser = argparse.ArgumentParser(
        prog="tl-capability",
        description="Find and edit the neurons behind a language model's capabilities.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job on the bundled zoo model (offline)")
    demo.add_argument("--out", default="capability-report", help="report folder")
    demo.add_argument("--quick", action="store_true", help="tiny sample sizes (a smoke test)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
