"""The ``tl-capability`` command line.

- ``demo``: the main job on the bundled zoo model (offline): the papers' experiments, written
  to ``capability-report/`` (see [`tl_capability.demo`][tl_capability.demo]), and the headline
  numbers.
- ``locate``: the neurons whose erasure removes one dataset's capability and spares the
  ``--controls`` ([`tl_capability.locate`][tl_capability.localization.locate]), saved to a folder;
  ``--method ig`` (or another attribution method) is the papers' literal pipeline, scores then the σ
  rule.
- ``erase``: a saved mask's effect on a dataset's accuracy, against random sets of its size
  ([`tl_capability.masks.random_controls`][tl_capability.masks.random_controls], seeded by
  ``--random-seed``).
- ``report``: the capability-localization report for any model and datasets (computed by
  [`localization_suite`][tl_capability.experiments.suite.localization_suite], rendered by
  [`tl_capability.report.add_localization`][tl_capability.report.add_localization]).

``--model`` is ``zoo`` (or ``zoo:NAME``: ``zoo:gpt2-dropout``, ``zoo:llama``), a local Hugging
Face directory, a GGUF file or a hub name; ``--data`` a spec of
[`loaders.resolve`][tl_capability.loaders.resolve] (a zoo capability, ``emotion[:PATH]``-style
loaders, a ``.jsonl``/``.csv`` file, or a hub dataset with prompt/answer columns).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tl_capability._cli_args import (
    common_options,
    count,
    positive_int,
    staged,
)
from tl_capability._cli_locate import add_locate

# Each command imports what it uses when it runs (plots, pandas, hub loaders load lazily).


def _demo(args: argparse.Namespace) -> int:
    from tl_capability import zoo
    from tl_capability.demo import REAL_SIZES, DemoSizes, run

    start = time.perf_counter()
    zoo.import_backend()  # TransformerLens imports its model machinery on first use
    imported = time.perf_counter()
    model = zoo.load_model(args.model)
    loaded = time.perf_counter()
    cfg = model.cfg
    real = args.model in zoo.real_model_names()
    print(
        f"{'pretrained' if real else 'zoo'} model {args.model!r}: {cfg.n_layers} layers, "
        f"d_model {cfg.d_model}, "
        f"d_mlp {cfg.d_mlp} "
        f"({cfg.n_layers * cfg.d_mlp} MLP neurons); TransformerLens import "
        f"{imported - start:.1f}s, model load {loaded - imported:.1f}s"
    )
    sizes = (
        (REAL_SIZES if real else DemoSizes())
        if not args.quick
        else DemoSizes(
            locate=12,
            evaluate=20,
            n_random=2,
            facts=3,
            probe=24,
            neg_samples=4,
            n_random_kn=2,
            pairs=4,
            enhance_train=16,
            epochs=(1,),
            sigmas=(2.0, 6.0),
            steps=DemoSizes.steps if not real else 4,
            noise=REAL_SIZES.noise if real else DemoSizes.noise,
        )
    )
    with staged(args.out) as folder:
        index, head = run(folder, sizes, progress=not args.quiet, model=model, name=args.model)
    index = Path(args.out) / index.relative_to(folder)
    sigma = sizes.sigmas[0]
    print(
        f"\n{'capability':<11} {'accuracy':>9} {'neurons':>8} {'erased':>8} {'random':>8} "
        f"{'others':>8} {'halves':>7}   (σ = {sigma:g}; drops in points)"
    )
    for name in head["capabilities"]:
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
        f"knowledge-neuron reliability (IPP vs the best random set): {head['kn_ipp']:.2f}; "
        f"linearity: median |r| {head['neg_median_abs_r']:.2f}; enhancement "
        f"({head['enhanced']} after noise, accuracy after fine-tuning): "
        + ", ".join(f"{k} {v:.1f}%" for k, v in head["enhancement"].items())
    )
    print(
        "\nerased: accuracy change with the located neurons zeroed; random: the same for "
        "random sets of the same size per layer; others: the worst change of another "
        "capability; halves: overlap of the sets located on two halves of the data."
    )
    if head["breaks_everything"]:
        print(
            f"NOT localization: at σ = {sigma:g} the sets of "
            f"{', '.join(head['breaks_everything'])} drop every capability alike "
            "(model-critical neurons); read own drops beside the others' and the random sets'."
        )
    print(f"Report: {index.resolve()} ({head['seconds']} s)")
    return 0


def _erase(args: argparse.Namespace) -> int:
    from tl_capability.evaluate import accuracy
    from tl_capability.experiments import mean_ci
    from tl_capability.interventions import ablate, mean_activations
    from tl_capability.loaders import resolve
    from tl_capability.masks import NeuronMask, random_controls
    from tl_capability.models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    mask = NeuronMask.load(args.mask)
    data = resolve(args.data, split=args.split, n=args.n, seed=args.seed)
    # Mean ablation replaces activations by their mean over the evaluated data.
    kwargs = {"means": mean_activations(model, data, mask.site)} if args.mode == "mean" else {}
    base = accuracy(model, data)
    with ablate(model, mask, args.mode, **kwargs):
        erased = accuracy(model, data)
    drops = []
    for control in random_controls(mask, args.random, seed=args.random_seed):
        with ablate(model, control, args.mode, **kwargs):
            drops.append(100 * (base - accuracy(model, data)))
    mean, half = mean_ci(drops) if drops else (float("nan"), float("nan"))
    print(f"{data.name}: {len(data)} samples; mask: {len(mask)} neurons ({args.mode})")
    print(
        f"accuracy {100 * base:.1f} % -> {100 * erased:.1f} % with the mask "
        f"(drop {100 * (base - erased):.1f} points); {args.random} random sets of the same "
        f"size per layer: drop {mean:.1f} ± {half:.1f}"
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from tl_capability.experiments import localization_suite as localization
    from tl_capability.loaders import resolve
    from tl_capability.models import load_model
    from tl_capability.report import Report, add_localization

    names = [spec.split(":")[0] for spec in args.data]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        specs = [spec for spec, name in zip(args.data, names, strict=True) if name in repeated]
        raise ValueError(
            f"--data names the capability {' and '.join(map(repr, repeated))} more than once "
            f"({', '.join(specs)}): each capability of a report needs its own name"
        )
    # Staged first: an --out that cannot be written fails before the model is loaded.
    with staged(args.out) as folder:
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        locate_on, evaluate_on = {}, {}
        for spec, name in zip(args.data, names, strict=True):
            locate_on[name] = resolve(spec, split=args.locate_split, n=args.n_locate, seed=1)
            evaluate_on[name] = resolve(spec, split=args.split, n=args.n, seed=2)
        report = Report(f"tl_capability report: {args.model}")
        report.text(
            f"Model: {args.model}. Attribution: {args.method} of P(answer) on {args.n_locate} "
            f"{args.locate_split} samples per dataset; selection: s − mean > σ·std (positive "
            f"side); erasure: zero at every position; {args.random} random sets of the same size "
            "per layer."
        )
        bar = tqdm(total=5, desc="report", disable=args.quiet)

        def stage(name: str) -> None:
            if name != "accuracy":
                bar.update()
            bar.set_postfix_str(name)

        found = localization(
            model,
            locate_on,
            evaluate_on,
            sigmas=args.sigmas,
            n_random=args.random,
            seed=args.random_seed,
            stage=stage,
            method=args.method,
            steps=args.steps,
        )
        add_localization(report, found)
        bar.update()
        bar.close()
        index = report.save(folder)
    print(f"Report: {(Path(args.out) / index.relative_to(folder)).resolve()}")
    return 0


def _parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = argparse.ArgumentParser(
        prog="tl-capability",
        description="Find and edit the neurons behind a language model's capabilities.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of errors instead of one line"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job on the bundled zoo model (offline)")
    demo.add_argument("--out", default="capability-report", help="report folder")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="tiny sample sizes (a smoke test: half a minute on the zoo model, about 9 on "
        "smollm2-135m on 2 CPU cores)",
    )
    demo.add_argument(
        "--model",
        default="gpt2",
        help="zoo model: gpt2 (default), gpt2-dropout, llama, or the pretrained smollm2-135m "
        "(real tasks and facts; the real extra)",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

    add_locate(sub)

    erase = sub.add_parser("erase", help="accuracy with a saved mask erased vs random sets")
    common_options(erase)
    erase.add_argument("--data", required=True, help="dataset spec")
    erase.add_argument("--mask", required=True, help="folder written by `locate`")
    erase.add_argument("--mode", default="zero", choices=["zero", "mean", "scale", "add"])
    erase.add_argument("--random", type=count, default=3, help="random control sets")
    erase.add_argument(
        "--random-seed", type=int, default=0, help="seed of the first random set (default 0)"
    )
    erase.add_argument("--seed", type=int, default=2, help="sampling seed of zoo datasets")
    erase.set_defaults(func=_erase)

    report = sub.add_parser("report", help="capability-localization report for any model")
    common_options(report)
    report.add_argument("--data", required=True, nargs="+", help="one spec per capability")
    report.add_argument("--method", default="ig")
    report.add_argument("--steps", type=positive_int, default=20)
    report.add_argument("--n-locate", type=positive_int, default=100, help="samples to locate on")
    report.add_argument("--locate-split", default="train")
    report.add_argument("--sigmas", type=float, nargs="+", default=[2.0, 3.0, 6.0, 12.0])
    report.add_argument("--random", type=count, default=3, help="random control sets")
    report.add_argument(
        "--random-seed", type=int, default=0, help="seed of the first random set (default 0)"
    )
    report.add_argument("--out", default="capability-report", help="report folder")
    report.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tl-capability`` console script.

    Returns:
        0 on success; 2 after a library error (``ValueError``, ``TypeError``, ``OSError``),
        printed as one line ``tl-capability: error: <message>`` on stderr (``--debug`` raises
        it instead, with its traceback); 130 after Ctrl-C. Commands with ``--out`` leave no
        partial folder behind either way. Usage errors exit with 2 through argparse.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
