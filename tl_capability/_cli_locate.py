"""The ``tl-capability locate`` command: its parser and what it runs (see
[`tl_capability.cli`][tl_capability.cli])."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tl_capability._cli_args import common_options, drop, positive_int, share, staged, tolerance
from tl_capability.localization import DEFAULT_LOCATE_METHOD
from tl_capability.options import AttributionMethod, LocateMethod, Metric, Side, options


def _selection(args: argparse.Namespace) -> dict[str, Any]:
    if args.top_k is not None:
        return {"top_k": args.top_k, "side": args.side}
    if args.quantile is not None:
        return {"quantile": args.quantile, "side": args.side}
    return {"sigma": args.sigma, "side": args.side}


def _locate(args: argparse.Namespace) -> int:
    from tl_capability.attribution import attribute
    from tl_capability.loaders import resolve
    from tl_capability.localization import LocateConfig, locate
    from tl_capability.masks import select
    from tl_capability.models import load_model

    papers = args.method in options(AttributionMethod)  # scores, then a selection rule
    if papers and args.budget is not None:
        raise ValueError(
            f"--budget is a budget of locate's methods; --method {args.method} selects by "
            "--sigma, --top-k or --quantile"
        )
    out = Path(args.out)
    # Staged first: an --out that cannot be written fails before the model is loaded.
    with staged(out) as folder:
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        data = resolve(args.data, split=args.split, n=args.n, seed=args.seed)
        controls = {}
        for spec in args.controls or []:
            control = resolve(spec, split=args.split, n=args.n, seed=args.seed)
            name = control.name or spec
            if name in controls or name == data.name:
                raise ValueError(f"two datasets are named {name!r}: give each a distinct spec")
            controls[name] = control
        if papers:
            scores = attribute(
                model,
                data,
                args.method,
                steps=20 if args.steps is None else args.steps,
                metric=args.metric,
                batch_size=args.batch_size,
                progress=not args.quiet,
            )
            mask = select(scores, **_selection(args))
            scores.save(folder)
            if controls:  # the σ rule knows no controls: show what its set costs them
                mask.selection.update(_papers_drops(model, mask, data, controls))
        else:
            mask = locate(
                model,
                data,
                controls or None,
                method=args.method,
                max_fraction=0.05 if args.budget is None else args.budget,
                target_drop=args.target_drop,
                tolerance=args.tolerance,
                progress=not args.quiet,
                config=LocateConfig(
                    ig_steps=args.steps, sigma=args.sigma, batch_size=args.batch_size
                ),
            )
        mask.save(folder)
        if "scan" in mask.selection:  # locate's budget rule: its walk, drawn beside the mask
            from tl_capability.budget import budget_figure
            from tl_capability.report import Report

            report = Report(f"locate {data.name}: {len(mask)} neurons")
            report.figure("budget", budget_figure(mask), _scan_caption(mask))
            report.save(folder)
    _print_result(mask, data, out)
    return 0


def _print_result(mask: Any, data: Any, out: Path) -> None:
    """What ``locate`` found, on the data given, with the controls and random sets beside."""
    print(
        f"{len(mask)} of {mask.tensor.numel()} neurons ({100 * mask.fraction:.2f} %), per layer "
        f"{mask.per_layer()}; {len(data)} samples of {data.name!r}"
    )
    if "reached" in mask.selection:
        sel = mask.selection
        goal = "reached" if sel["reached"] else "NOT reached"
        print(
            f"on the data given: own drop {sel['own_drop']:.1f} points, worst control drop "
            f"{sel['worst_other_drop']:.1f} (goal {sel['target_drop']:g} / "
            f"{sel['tolerance']:g}: {goal})"
        )
    if "not_localization" in mask.selection:
        sel = mask.selection
        print(
            f"on the data given: own drop {sel['own_drop']:.1f} points, controls "
            f"{sel['control_drops']}, random sets {sel['random_drop']:.1f}"
        )
        if sel["not_localization"]:
            print(
                "NOT localization: this set drops the controls about as much as its own "
                "capability (and more than random sets do): the neurons are critical to the "
                "model, not to the capability"
            )
    drawn = " (budget.png: the budget rule's walk)" if "scan" in mask.selection else ""
    print(f"mask written to {out.resolve()}{drawn}")


def _scan_caption(mask: Any) -> str:
    """The budget walk's figure caption: every size tried, controls and random sets beside."""
    rows = "; ".join(
        f"{k}: {own:.0f} / {worst:.0f} / {rand:.0f}"
        for k, own, worst, rand in mask.selection["scan"]
    )
    return (
        "Neurons zeroed: own drop / worst control drop / random sets of the same layers "
        f"(points, on the check samples): {rows}. An own drop means localization only beside "
        "the other two."
    )


def add_locate(sub: Any) -> None:
    """The ``locate`` command's parser."""
    locate = sub.add_parser("locate", help="locate a dataset's neurons and save the mask")
    common_options(locate)
    locate.add_argument("--data", required=True, help="dataset spec (see the module docstring)")
    locate.add_argument(
        "--controls", nargs="+", default=None, help="dataset specs of capabilities to spare"
    )
    locate.add_argument(
        "--method",
        default=DEFAULT_LOCATE_METHOD,
        choices=[*options(LocateMethod), *options(AttributionMethod)],
        help="a localization method of tl_capability.locate (default "
        f"{DEFAULT_LOCATE_METHOD}), or an attribution method for the papers' pipeline "
        "(scores, then --sigma/--top-k/--quantile)",
    )
    locate.add_argument(
        "--budget", type=share, default=None, help="largest share of neurons (default 0.05)"
    )
    locate.add_argument("--target-drop", type=drop, default=60.0, help="goal, in points")
    locate.add_argument("--tolerance", type=tolerance, default=10.0, help="worst control drop")
    locate.add_argument("--metric", default="prob", choices=options(Metric))
    locate.add_argument(
        "--steps", type=positive_int, default=None, help="integrated-gradient steps"
    )
    locate.add_argument("--batch-size", type=positive_int, default=None)
    rule = locate.add_mutually_exclusive_group()
    rule.add_argument("--sigma", type=float, default=2.0, help="σ rule (default 2)")
    rule.add_argument("--top-k", type=int, default=None, help="keep the k largest |scores|")
    rule.add_argument("--quantile", type=float, default=None, help="keep |scores| ≥ quantile")
    locate.add_argument("--side", default="positive", choices=options(Side))
    locate.add_argument("--seed", type=int, default=1, help="sampling seed of zoo datasets")
    locate.add_argument("--out", required=True, help="folder for mask.* and scores.*")
    locate.set_defaults(func=_locate, split="train")


def _papers_drops(model: Any, mask: Any, data: Any, controls: dict[str, Any]) -> dict[str, Any]:
    """What the σ rule's set costs its own data, every control and 3 random sets of its shape,
    and whether it is localization by the rule of
    [`EraseResult.not_localized`][tl_capability.experiments.erase.EraseResult.not_localized]."""
    from tl_capability.evaluate import accuracy
    from tl_capability.experiments.erase import breaks_everything
    from tl_capability.interventions import ablate
    from tl_capability.masks import random_controls

    def drop(m: Any, d: Any) -> float:
        clean = accuracy(model, d, progress=False)
        with ablate(model, m):
            return 100 * (clean - accuracy(model, d, progress=False))

    own = drop(mask, data)
    others = {name: drop(mask, d) for name, d in controls.items()}
    randoms = [drop(r, data) for r in random_controls(mask, 3, seed=0)]
    rand = sum(randoms) / len(randoms)
    broken = breaks_everything(own, [(d, rand) for d in others.values()])
    return {
        "own_drop": own,
        "control_drops": {n: round(d, 1) for n, d in others.items()},
        "random_drop": rand,
        "not_localization": broken,
    }
