"""The poster's fidelity and reliability tables for the three localizers on SmolLM2-135M.

KN (knowledge neurons), ROME (the causal-traced MLP layer) and KC (knowledge circuits) locate
each PARAREL fact from each of its paraphrases; fidelity is the overlap of a fact's paraphrases'
sets against different facts', reliability (IPP) how often each method's own intervention on
what it located beats random choices of the same kind. Facts are the first ones of each relation
that the model answers from at least two paraphrases (those paraphrases kept), shared out
over the relations.
Each method's rows are appended to ``OUT/localizers.jsonl`` as soon as it finishes::

    python benchmarks/localizers.py [--facts 8] [--relations P36 P1376] [--steps 10]
        [--methods kn rome kc] [--random 10] [--out localizers-smollm2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tl_capability import answer_correct, answer_probability, zoo
from tl_capability.experiments import corrupt_subjects, fidelity, reliability
from tl_capability.zoo import real

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def answered_facts(model: Any, relations: list[str], n: int) -> dict[str, Any]:
    """``n`` facts shared out over ``relations``, the first of each answered from two
    paraphrases or more (those kept)."""
    chosen: dict[str, Any] = {}
    per = -(-n // len(relations))
    for relation in relations:
        kept = 0
        for fact in real.facts(relation, 4 * per, model=model):
            if kept == per or len(chosen) == n:
                break
            correct = answer_correct(model, fact).nonzero()[:, 0].tolist()
            if len(correct) >= 2:
                chosen[f"{relation}: {fact.name}"] = fact.select(correct)
                kept += 1
    return chosen


def cross_fact_drops(model: Any, masks: dict[str, Any], facts: dict[str, Any]) -> list[list[float]]:
    """``drops[i][j]``: the drop of fact j's mean P(answer) with fact i's located neurons zeroed
    (the specificity that IPP, own drop against random sets, does not show)."""
    clean = {n: answer_probability(model, d).mean().item() for n, d in facts.items()}
    return [
        [
            clean[j] - answer_probability(model, d, hooks=lambda b, m=m: m.hooks()).mean().item()
            for j, d in facts.items()
        ]
        for m in masks.values()
    ]


def corruptible(model: Any, facts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The facts some other fact's subject can corrupt at equal token lengths (KC needs them),
    with their corruptions; the others are dropped, each named."""
    facts = dict(facts)
    while len(facts) > 1:
        try:
            return facts, corrupt_subjects(model, facts)
        except ValueError as exc:
            name = str(exc).split("'")[1]
            print(f"kc: dropped {name!r} ({exc})")
            facts.pop(name)
    raise ValueError("fewer than two facts can be corrupted at equal token lengths")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=8)
    parser.add_argument("--relations", nargs="+", default=["P36", "P1376"])
    parser.add_argument("--steps", type=int, default=10, help="IG steps (KN)")
    parser.add_argument("--samples", type=int, default=10, help="noise samples (ROME)")
    parser.add_argument("--edges", type=int, default=50, help="circuit edges (KC)")
    parser.add_argument("--random", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=["kn", "rome", "kc"])
    parser.add_argument("--out", default="localizers-smollm2")
    args = parser.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = zoo.load_model("smollm2-135m")
    facts = answered_facts(model, args.relations, args.facts)
    print(f"{len(facts)} facts: " + "; ".join(f"{k} ({len(v)})" for k, v in facts.items()))
    for method in args.methods:
        start = time.perf_counter()
        options: dict[str, Any] = {
            "kn": {"steps": args.steps},
            "rome": {"samples": args.samples},
            "kc": {"n_edges": args.edges},
        }[method]
        if method == "kc":
            kc_facts, corrupted = corruptible(model, facts)
            options["corrupted"] = corrupted
        else:
            kc_facts = facts
        fid = fidelity(model, kc_facts, method=method, **options)
        located = time.perf_counter() - start
        masks = fid.masks if method != "kc" else None
        extra = {"n_edges": args.edges, "corrupted": corrupted} if method == "kc" else {}
        ipp = reliability(
            model, masks, kc_facts, method=method, n_random=args.random, seed=100, **extra
        )
        cross = cross_fact_drops(model, fid.masks, facts) if method == "kn" else None
        row = {
            "method": method,
            "facts": len(kc_facts),
            "overlap_same_fact": fid.mean_overlap,
            "overlap_different_facts": fid.rows[-1].overlap,
            "ipp": ipp.ipp,
            "fidelity_rows": [asdict(r) for r in fid.rows],
            "reliability_rows": [asdict(r) for r in ipp.rows],
            "cross_fact_drops": cross,
            "seconds_locate": round(located, 1),
            "seconds": round(time.perf_counter() - start, 1),
        }
        with (out / "localizers.jsonl").open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        print(
            f"{method}: overlap same fact {row['overlap_same_fact']:.3f}, different facts "
            f"{row['overlap_different_facts']:.3f}, IPP {row['ipp']:.3f} ({row['seconds']} s)",
            flush=True,
        )
        if cross:
            own = sum(cross[i][i] for i in range(len(cross))) / len(cross)
            others = [c for i, r in enumerate(cross) for j, c in enumerate(r) if i != j]
            print(
                f"  kn specificity: own drop {own:.3f}, other facts {sum(others) / len(others):.3f}"
            )


if __name__ == "__main__":
    main()
