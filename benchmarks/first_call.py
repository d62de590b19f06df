"""A model's first attribution call against its later ones: what the one-time checks cost.

For each model size, the same two-prompt call (20 IG steps) runs in pairs: first with every
per-model memo cleared (as on a fresh model: the checks run), then again (the checks known).
Reported: the best of ``--pairs`` of each, and the first call's overhead over the later one.
Models are ``peers.build_model`` random-weight ones (GPT-2 by default), one thread.

    python benchmarks/first_call.py [--sizes 2x128 3x512 6x768] [--vocab 1000]
        [--positions all answer] [--arch gpt2] [--pairs 8]
"""

from __future__ import annotations

import argparse
import os
import random
import string
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def clear_memos() -> None:
    """Forgets every fact the library keeps per model, so the next call checks them again."""
    import tl_capability._answer_head as head
    import tl_capability.attribution._all_position_probes as all_position
    import tl_capability.attribution._layered_rows as layered
    import tl_capability.sites.neurons as neurons
    import tl_capability.sites.support as support
    import tl_capability.sites.weights as weights

    for memo in (
        all_position._GROWS,
        all_position._PACKS,
        layered._EXACT,
        neurons._WIDTHS_CHECKED,
        support._KV_CACHE,
        support._MLP_ADDS_LINEARLY,
        weights._TRANSFORMS,
        head._CHECKED,
    ):
        memo.clear()


def measure(model, positions: str, pairs: int) -> tuple[float, float]:
    """The best first-call and later-call seconds over ``pairs`` pairs."""
    from tl_capability import CapabilityDataset, attribute

    rng = random.Random(2)
    prompts = ["".join(rng.choices(string.ascii_lowercase, k=15)) for _ in range(2)]
    data = CapabilityDataset.from_pairs(prompts, ["x"] * 2, name="p")

    def call() -> None:
        attribute(model, data, "ig", steps=20, positions=positions, progress=False)

    call()  # the process's own first-use costs (imports, allocator), not the model's
    first, later = float("inf"), float("inf")
    for _ in range(pairs):
        clear_memos()
        start = time.perf_counter()
        call()
        first = min(first, time.perf_counter() - start)
        start = time.perf_counter()
        call()
        later = min(later, time.perf_counter() - start)
    return first, later


def main() -> None:
    from peers import build_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["2x128", "3x512", "6x768"])
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--positions", nargs="+", default=["all", "answer"])
    parser.add_argument("--arch", default="gpt2")
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | positions | first call (s) | later call (s) | first over later |")
    print("|---|---|---:|---:|---:|")
    for size in args.sizes:
        layers, width = (int(x) for x in size.split("x"))
        model = build_model(
            Path(tempfile.mkdtemp()), layers, args.arch, width, 4 * width, args.vocab
        )[0]
        for positions in args.positions:
            first, later = measure(model, positions, args.pairs)
            print(
                f"| {args.arch} {layers} layers, d_model {width}, vocabulary {args.vocab} "
                f"| {positions} | {first:.3f} | {later:.3f} | {100 * (first / later - 1):+.0f} % |"
            )


if __name__ == "__main__":
    main()
