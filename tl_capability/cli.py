"""The ``tl-capability`` command line.

``tl-capability demo`` runs the main job on the bundled zoo model (offline). Today it loads the
model and measures every capability; the localization report grows on top of it.
"""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    from tl_capability import accuracy, zoo

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
    print(f"\n{'capability':<12} {'accuracy':>9}  description")
    worst = 1.0
    for name in zoo.capability_names():
        data = zoo.dataset(name, n=args.n, split="test", seed=args.seed)
        acc = accuracy(model, data)
        worst = min(worst, acc)
        print(f"{name:<12} {100 * acc:>8.1f}%  {zoo.TASKS[name].description}")
    print(f"\n{args.n} fresh test samples per capability (seed {args.seed}); exact match of the")
    print(f"whole answer under teacher forcing. Done in {time.perf_counter() - start:.1f}s.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tl-capability`` console script."""
    parser = argparse.ArgumentParser(
        prog="tl-capability",
        description="Find and edit the neurons behind a language model's capabilities.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job on the bundled zoo model (offline)")
    demo.add_argument("--n", type=int, default=200, help="test samples per capability")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
