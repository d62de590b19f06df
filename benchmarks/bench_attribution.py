"""Integrated gradients: the library against the way knowledge-neuron tools compute it.

The reference (Dai et al.'s code, EleutherAI's knowledge-neurons, EasyEdit) re-runs the whole
model once per layer on a batch of ``steps`` scaled copies of the prompt and back-propagates to
that layer. The library runs each (layer, step) row as one token attending to the clean run's
cached keys and values, all rows of all layers on one batch axis.

Both run here, in one process, on a GPT-2-small-shaped model with random weights (12 layers,
d_model 768, d_mlp 3072, vocabulary 50,257), 16-token prompts and 20 midpoint steps on the CPU.
The script prints both times, their ratio and the largest difference between the scores.

    python benchmarks/bench_attribution.py [--prompts 16] [--threads 2]
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


def build_model(directory: Path, n_layers: int) -> object:
    from transformer_lens import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel

    from tl_capability.zoo.train import build_tokenizer

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=n_layers)).eval().save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return TransformerBridge.boot_transformers(str(directory)).eval()


def reference_ig(model, prompt_ids: list[int], answer_id: int, steps: int) -> torch.Tensor:
    """Per layer: the whole model on ``steps`` scaled copies, gradient at the last position."""
    from tl_capability.attribution import ig_alphas

    tokens = torch.tensor([prompt_ids])
    q = len(prompt_ids) - 1
    clean = {}
    with (
        torch.no_grad(),
        model.hooks(
            fwd_hooks=[
                (
                    f"blocks.{layer}.mlp.hook_post",
                    lambda a, hook, layer=layer: clean.__setitem__(layer, a[0, q].clone()),
                )
                for layer in range(model.cfg.n_layers)
            ]
        ),
    ):
        model(tokens)
    alphas = ig_alphas(steps)
    out = []
    for layer in range(model.cfg.n_layers):
        box = {}

        def scale(act, hook, layer=layer, box=box):
            new = act.clone()
            new[:, q] = alphas[:, None] * clean[layer]
            box["x"] = new
            return new

        with torch.enable_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", scale)]):
            logits = model(tokens.expand(steps, -1))
            prob = logits[:, q].float().softmax(-1)[:, answer_id].sum()
            (grad,) = torch.autograd.grad(prob, box["x"])
        out.append(clean[layer] * grad[:, q].mean(0))
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from tl_capability import CapabilityDataset, tokenize
    from tl_capability.attribution import attribute

    with tempfile.TemporaryDirectory() as d:
        model = build_model(Path(d), args.layers)
        rng = random.Random(0)
        prompts = ["".join(rng.choices(string.ascii_lowercase, k=15)) for _ in range(args.prompts)]
        data = CapabilityDataset.from_pairs(prompts, ["x"] * len(prompts))
        samples = tokenize(model, data)
        assert all(len(s.prompt) == 16 for s in samples)

        attribute(model, data.select([0]), steps=2, progress=False)  # warm-up
        start = time.perf_counter()
        ours = attribute(model, data, steps=args.steps, per_sample=True, progress=False)
        t_ours = time.perf_counter() - start

        start = time.perf_counter()
        ref = torch.stack(
            [reference_ig(model, list(s.prompt), s.answer[0], args.steps) for s in samples]
        )
        t_ref = time.perf_counter() - start

    scale = ref.abs().max().item()
    diff = (ours.per_sample - ref).abs().max().item()
    print(
        f"model: GPT-2-small shape, {args.layers} layers, random weights; "
        f"{args.prompts} prompts of 16 tokens, {args.steps} IG steps, "
        f"{torch.get_num_threads()} CPU threads, KV-cache path: {ours.params['kv_cache']}"
    )
    print(
        f"reference (whole model per layer) : {t_ref:8.2f} s  ({t_ref / args.prompts:.2f} s/prompt)"
    )
    print(
        f"tl_capability.attribute           : {t_ours:8.2f} s  "
        f"({t_ours / args.prompts:.2f} s/prompt)"
    )
    print(f"speed-up                          : {t_ref / t_ours:8.1f}x")
    print(f"max |difference| / max |score|    : {diff / scale:.2e}  (max |score| {scale:.2e})")


if __name__ == "__main__":
    main()
