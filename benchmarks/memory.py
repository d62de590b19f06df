"""How ``max_rows`` and ``batch_size`` trade memory for speed, on the GPT-2-small-wide model.

Each setting runs in a fresh process (so its peak resident memory is its own): the model of
``benchmarks/peers.py`` (6 layers, d_mlp 3072, vocabulary 50,257, random weights), 32 prompts of
16 tokens with 4-token answers, integrated gradients (20 steps) at the answer position and at
all positions. The table gives seconds and the peak RSS above what loading the model took.

    python benchmarks/memory.py [--prompts 32] [--threads 1] [--positions answer all]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "answer": [(16, 64), (16, 256), (16, 1024), (4, 1024), (32, 4096)],
    "all": [(16, 16), (16, 64), (16, 256), (4, 256), (32, 1024)],
}


def child(positions: str, batch_size: int, max_rows: int, prompts: int, threads: int) -> dict:
    import random
    import string

    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(Path(__file__).parent))
    from _rss import PeakRSS
    from peers import build_model

    from tl_capability import AttributionConfig, CapabilityDataset, attribute

    with tempfile.TemporaryDirectory() as d:
        model, _, _ = build_model(Path(d), 6)
        rng = random.Random(0)
        data = CapabilityDataset.from_pairs(
            ["".join(rng.choices(string.ascii_lowercase, k=15)) for _ in range(prompts)],
            ["".join(rng.choices(string.ascii_lowercase, k=4)) for _ in range(prompts)],
        )
        start = time.perf_counter()
        with PeakRSS() as peak:
            attribute(
                model,
                data,
                positions=positions,
                batch_size=batch_size,
                progress=False,
                config=AttributionConfig(max_rows=max_rows),
            )
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "base_mb": peak.start_mb, "extra_mb": peak.extra_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--positions", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), help="rows"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        positions, batch_size, max_rows = args.child[0], int(args.child[1]), int(args.child[2])
        result = child(positions, batch_size, max_rows, args.prompts, args.threads)
        print(json.dumps(result))
        return
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(
        f"GPT-2-small-wide (6 layers, d_mlp 3072, vocabulary 50,257), {args.prompts} prompts of "
        f"16 tokens, 4-token answers, IG 20 steps, {args.threads} thread(s)\n"
    )
    print("| positions | batch_size | max_rows | seconds | peak RSS during the call (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for positions, (batch_size, max_rows) in itertools.chain.from_iterable(
        ((p, s) for s in SETTINGS[p]) for p in args.positions
    ):
        out = subprocess.run(
            [
                *(sys.executable, __file__, "--child", positions, str(batch_size), str(max_rows)),
                *("--prompts", str(args.prompts), "--threads", str(args.threads)),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        cells = (positions, batch_size, max_rows, f"{r['seconds']:.1f}", f"{r['extra_mb']:.0f}")
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
