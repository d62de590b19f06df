"""Cost against dataset size: every public call should be linear in time and flat in memory.

For each size (default 100, 1,000 and 10,000 samples of the zoo model's ``reverse`` capability,
whose answers are several tokens long) a fresh process loads the zoo model and times
``tokenize``, ``accuracy``, ``attribute`` at the answer position and at all positions, and
``ablate`` + ``accuracy`` (a fixed 1 % mask zeroed). The tables give seconds per call, the
growth ratio between consecutive sizes (10 for a linear cost at 10x the data), the peak
resident memory during each call above what the process held before it, and the peak of the
whole process.

``--model bpe`` runs the same calls on a model the project did not train: a random-weight GPT-2
(4 layers, d_model 256) with a byte-level BPE tokenizer of 4,000 tokens trained here on random
words, and prompts of twelve random words with a one-word answer (about 28 tokens a sample;
answers of one to three tokens).

    python benchmarks/scaling.py [--sizes 100 1000 10000] [--steps 20] [--threads 1] [--calls ...]
        [--model zoo|bpe]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time

CALLS = ("tokenize", "accuracy", "attribute answer", "attribute all", "ablate + accuracy")


def bpe_model_and_data(n: int, directory: str) -> tuple:
    """A random-weight GPT-2 with a byte-level BPE tokenizer trained on random words, saved to
    ``directory`` and booted through the bridge, and ``n`` prompts of random words."""
    import random

    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformer_lens import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from tl_capability import CapabilityDataset

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 8))) for _ in range(3000)]

    def sentence(k: int) -> str:
        return " ".join(rng.choices(words, k=k))

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [sentence(20) for _ in range(5000)], vocab_size=4000, special_tokens=["<|endoftext|>"]
    )
    special = "<|endoftext|>"
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=special, eos_token=special, pad_token=special
    )
    tok.save_pretrained(directory)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=len(tok))
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    model = TransformerBridge.boot_transformers(directory).eval()
    prompts = [sentence(12) for _ in range(n)]
    answers = [" " + rng.choice(words) for _ in range(n)]
    return model, CapabilityDataset.from_pairs(prompts, answers, name=f"bpe-{n}")


def child(n: int, steps: int, threads: int, calls: list[str], which: str = "zoo") -> dict:
    """Times every call on ``n`` samples in this process; returns seconds and peak RSS."""
    import tempfile

    import torch

    torch.set_num_threads(threads)
    from tl_capability import NeuronMask, ablate, accuracy, attribute, tokenize, zoo

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _rss import PeakRSS

    if which == "bpe":
        model, data = bpe_model_and_data(n, tempfile.mkdtemp(prefix="tlc-bpe-"))
    else:
        model = zoo.load_model()
        data = zoo.dataset("reverse", n=n, seed=0)
    shape = (model.cfg.n_layers, model.cfg.d_mlp)
    mask = NeuronMask(torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.01)
    seconds = {}

    extra = {}

    def timed(name: str, fn) -> None:
        if name not in calls:
            return
        start = time.perf_counter()
        with PeakRSS() as peak:
            fn()
        seconds[name] = time.perf_counter() - start
        extra[name] = peak.extra_mb

    timed("tokenize", lambda: tokenize(model, data))
    timed("accuracy", lambda: accuracy(model, data, progress=False))
    timed("attribute answer", lambda: attribute(model, data, steps=steps, progress=False))
    timed(
        "attribute all",
        lambda: attribute(model, data, steps=steps, positions="all", progress=False),
    )

    def erased() -> None:
        with ablate(model, mask):
            accuracy(model, data, progress=False)

    timed("ablate + accuracy", erased)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "seconds": seconds, "extra_mb": extra, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", nargs="+", choices=CALLS, default=list(CALLS))
    parser.add_argument("--model", choices=["zoo", "bpe"], default="zoo")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.steps, args.threads, args.calls, args.model)))
        return
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = []
    for n in args.sizes:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(n),
                "--steps",
                str(args.steps),
                "--threads",
                str(args.threads),
                "--model",
                args.model,
                "--calls",
                *args.calls,
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{n} samples done", file=sys.stderr)
    sizes = [r["n"] for r in results]
    head = "| call | " + " | ".join(f"{n:,} samples (s)" for n in sizes)
    growth = [f"×{b // a} growth" for a, b in itertools.pairwise(sizes)]
    what = (
        "zoo model (gpt2), reverse capability"
        if args.model == "zoo"
        else "random GPT-2 (4 layers, d_model 256) with a trained byte-level BPE, random words"
    )
    print(f"{what}, {args.steps} IG steps, {args.threads} thread(s)\n")
    print(head + "".join(f" | {g}" for g in growth) + " |")
    print("|---" * (1 + len(sizes) + len(growth)) + "|")
    for call in args.calls:
        t = [r["seconds"][call] for r in results]
        ratios = [b / a for a, b in itertools.pairwise(t)]
        print(
            f"| {call} | "
            + " | ".join(f"{x:.3f}" for x in t)
            + "".join(f" | {x:.1f}" for x in ratios)
            + " |"
        )
    print("\nPeak RSS during each call, above the RSS before it (MiB):\n")
    print("| call | " + " | ".join(f"{n:,} samples" for n in sizes) + " |")
    print("|---" * (1 + len(sizes)) + "|")
    for call in args.calls:
        print(f"| {call} | " + " | ".join(f"{r['extra_mb'][call]:.0f}" for r in results) + " |")
    print(
        "| whole process (model and data included) | "
        + " | ".join(f"{r['peak_mb']:.0f}" for r in results)
        + " |"
    )


if __name__ == "__main__":
    main()
