"""Evaluation and learned masks with the head on the answer positions only, against the full pass.

[`tl_capability._answer_head.answer_logits`] unembeds only the positions whose logits are read; the
plain reference is the model's own forward pass, which unembeds every position and indexes
the answer positions afterwards (what ``accuracy``, ``learn_mask`` and ``finetune_neurons``
did before). Both run in this process, interleaved, on the same model and data: a zoo
capability's prompts on a random-weight model of the peers benchmark's shape (GPT-2-small-wide:
6 layers, d_model 768, d_mlp 3072, vocabulary 50,257) and on the zoo's own model (vocabulary
46, where the unembedding costs nothing and the gain should be nil).

Rows: ``accuracy`` over ``--n`` samples (seconds, peak extra resident memory), and
``learn_gates`` for ``--steps`` steps (the control term on another capability). Columns: seconds
of the full pass, of the answer-only head, their ratio, and the largest difference of the
outputs (accuracy; gate logits).

    python benchmarks/answer_head.py [--n 128] [--steps 4] [--threads 1] [--repeat 2]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _rss import PeakRSS
from peers import build_model


@contextlib.contextmanager
def full_pass() -> Iterator[None]:
    """Within: every answer_logits call runs the whole forward pass (the reference)."""
    import tl_capability._answer_head as head

    original = head.head_is_separable
    head.head_is_separable = lambda model: False
    try:
        yield
    finally:
        head.head_is_separable = original


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Best seconds, the largest peak extra RSS (MiB), and the last result."""
    seconds, peak, out = float("inf"), 0.0, None
    for _ in range(repeat):
        with PeakRSS() as rss:
            start = time.perf_counter()
            out = fn()
            seconds = min(seconds, time.perf_counter() - start)
        peak = max(peak, rss.extra_mb)
    return seconds, peak, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="learn_gates steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from tl_capability import accuracy, tokenize, zoo
    from tl_capability._answer_head import head_is_separable
    from tl_capability.learned import LearnConfig, learn_gates

    target = zoo.dataset("sentiment", n=args.n, split="test", seed=0)
    control = {"facts": zoo.dataset("facts", n=args.n, split="test", seed=0)}
    print(f"{args.n} samples ({target.name}, control {list(control)}), {args.steps} learn_gates")
    print(f"steps, {torch.get_num_threads()} thread(s), best of {args.repeat}\n")
    print("| model | call | full pass (s) | answer head (s) | ratio | peak MiB full / head |")
    print("|---|---|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as d:
        wide = build_model(Path(d), 6)[0]
        for label, model in (("GPT-2-small-wide", wide), ("zoo gpt2", zoo.load_model("gpt2"))):
            assert head_is_separable(model)
            samples = tokenize(model, target)
            calls = {
                "accuracy": lambda m=model, s=samples: accuracy(m, s, progress=False),
                "learn_gates": lambda m=model: learn_gates(
                    m, target, control, config=LearnConfig(steps=args.steps), progress=False
                )[0],
            }
            for name, call in calls.items():
                call()  # warm: first-call checks, allocator
                with full_pass():
                    t_ref, m_ref, ref = best(call, args.repeat)
                t_new, m_new, new = best(call, args.repeat)
                if name == "accuracy":
                    same = f"accuracy {new:.3f} vs {ref:.3f}"
                else:
                    same = f"gate logits differ by {float((new - ref).abs().max()):.1e}"
                print(
                    f"| {label} | {name} | {t_ref:.2f} | {t_new:.2f} | {t_ref / t_new:.2f}x "
                    f"| {m_ref:.0f} / {m_new:.0f} ({same}) |"
                )


if __name__ == "__main__":
    main()
