"""Causal tracing: the batched restorations of ``tlc.causal_trace`` against one run per
(layer, token), and ROME's figures on SmolLM2-135M.

``speed``: for each fact, the same noise and the same clean states are restored three ways, in
this process, interleaved (best of ``--repeat``):

- ``plain``: one forward pass of ``samples`` rows per (token, layer), every token, full logits:
  what ROME's ``trace_important_states`` and TransformerLens's
  ``patching.generic_activation_patch`` run;
- ``tl-patch`` (``kind=None`` only): ``transformer_lens.patching.generic_activation_patch`` on
  ``resid_post``, with the noise added by a hook around it;
- ``batched``: ``causal_trace`` (restorations batched ``--batch-size`` rows a pass, the logits
  read at the last position only, tokens before the subject not run).

It asserts that all give the same scores (within 1e-5) and prints seconds and ratios.

``smollm2``: ``causal_trace`` with ``kind=None`` and ``"mlp"`` on the P36 facts (capitals) of
the shipped PARAREL data, printing the total effect, the AIE per layer and the located layers,
and writing the figures to ``--out``.

    python benchmarks/tracing.py speed [--model smollm2-135m|tiny] [--facts 2] [--samples 10]
    python benchmarks/tracing.py smollm2 [--facts 10] [--samples 10] [--kinds none mlp]
        [--out tracing-smollm2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tl_capability as tlc
from tl_capability.tracing import EMBED_HOOK, trace_hook_name, window_layers


def facts_and_model(name: str, n_facts: int) -> tuple[Any, Any]:
    """The model and one prompt per fact (template 0) of P36, or a tiny random model."""
    if name == "tiny":
        from tests.models import tiny_model

        model = tiny_model(n_layers=6, d_model=128, d_mlp=512)
        prompts = ["the cat of bob is", "a dog of ann was", "the son of tom is"][:n_facts]
        subjects = ["bob", "dog", "tom"][:n_facts]
        data = tlc.CapabilityDataset.from_pairs(prompts, [" x"] * len(prompts), subjects=subjects)
        return model, data
    from tl_capability import zoo
    from tl_capability.zoo import real

    model = zoo.load_model(name)
    return model, real.fact_dataset("P36", n_facts=n_facts, templates=[0], model=model)


@torch.no_grad()
def plain(model: Any, result: Any, i: int, sample: Any, tl_patch: bool = False) -> torch.Tensor:
    """One fact's scores by one run per (token, layer), with the noise ``result`` used."""
    n_layers, (first, end) = model.cfg.n_layers, result.subject_ranges[i]
    rng = np.random.RandomState(result.seed)
    noise = torch.from_numpy(rng.randn(result.samples, end - first, model.cfg.d_model))
    noise = noise * result.noise_std
    tokens = torch.tensor([sample.prompt]).expand(result.samples, -1)
    names = [trace_hook_name(layer, result.kind) for layer in range(n_layers)]
    clean: dict[str, torch.Tensor] = {}
    with model.hooks(fwd_hooks=[(n, lambda x, hook, n=n: clean.__setitem__(n, x)) for n in names]):
        model(tokens)

    def add_noise(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x = x.clone()
        x[:, first:end] += noise.to(x)
        return x

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1].float().softmax(-1)[:, sample.answer[0]].mean()

    if tl_patch:  # TransformerLens's own loop over (layer, position)
        from transformer_lens import patching

        patching.tqdm = lambda items, **kwargs: items  # its progress bar, not timed
        cache = {name: clean[name] for name in names}
        with model.hooks(fwd_hooks=[(EMBED_HOOK, add_noise)]):
            out = patching.generic_activation_patch(
                model,
                tokens,
                cache,
                metric,
                patching.layer_pos_patch_setter,
                "resid_post",
                index_axis_names=("layer", "pos"),
            )
        return out.T.float()

    def restore(name: str, t: int) -> Any:
        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            x = x.clone()
            x[:, t] = clean[name][:, t]
            return x

        return hook

    scores = torch.zeros(len(sample.prompt), n_layers)
    for t in range(len(sample.prompt)):
        for layer in range(n_layers):
            around = window_layers(layer, n_layers, result.window)
            layers = [layer] if result.kind is None else around
            hooks = [(EMBED_HOOK, add_noise)] + [(names[j], restore(names[j], t)) for j in layers]
            scores[t, layer] = metric(model.run_with_hooks(tokens, fwd_hooks=hooks))
    return scores


def speed(args: argparse.Namespace) -> None:
    model, data = facts_and_model(args.model, args.facts)
    tokenized = tlc.tokenize(model, data)
    print(
        f"model {args.model}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}; "
        f"{len(data)} facts, {args.samples} samples, torch threads {torch.get_num_threads()}"
    )
    print("| kind | way | seconds | × batched | max |Δ| vs batched |")
    print("|---|---|---|---|---|")
    for kind in args.kinds:
        best: dict[str, float] = {}
        outs: dict[str, list[torch.Tensor]] = {}
        ways = ["batched", "plain"] + (["tl-patch"] if kind is None and args.tl_patch else [])
        for _ in range(args.repeat):
            for way in ways:
                start = time.perf_counter()
                if way == "batched":
                    result = tlc.causal_trace(
                        model, data, kind=kind, samples=args.samples, batch_size=args.batch_size
                    )
                    outs[way] = list(result.scores)
                else:
                    outs[way] = [
                        plain(model, result, i, s, tl_patch=way == "tl-patch")
                        for i, s in enumerate(tokenized)
                    ]
                best[way] = min(best.get(way, float("inf")), time.perf_counter() - start)
        for way in ways:
            diff = max(
                float((a - b).abs().max()) for a, b in zip(outs[way], outs["batched"], strict=True)
            )
            assert diff < 1e-5, f"{way} differs from batched by {diff}"
            print(
                f"| {kind} | {way} | {best[way]:.2f} | {best[way] / best['batched']:.2f} | "
                f"{diff:.1e} |"
            )
        first = sum(r[0] for r in result.subject_ranges)
        total = sum(len(s.prompt) for s in tokenized)
        print(f"(tokens before the subject, not run by batched: {first} of {total})")


def smollm2(args: argparse.Namespace) -> None:
    from tl_capability import report, zoo
    from tl_capability.tracing_figures import aie_curves, trace_heatmap
    from tl_capability.zoo import real

    model = zoo.load_model("smollm2-135m")
    data = real.fact_dataset("P36", n_facts=args.facts, model=model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for kind in args.kinds:
        start = time.perf_counter()
        result = tlc.causal_trace(model, data, kind=kind, samples=args.samples)
        seconds = time.perf_counter() - start
        torch.save(result, out / f"trace-{kind or 'hidden'}.pt")  # kept if a later kind fails
        aie = ", ".join(f"{a:+.4f}" for a in result.aie.tolist())
        print(
            f"kind={kind}: {len(data)} prompts in {seconds:.0f} s; mean high "
            f"{float(result.high.mean()):.4f}, mean low {float(result.low.mean()):.4f}, total "
            f"effect {result.total_effect:.4f}; AIE peak layer {result.aie_peak} "
            f"({float(result.aie.max()):.4f})\n  AIE per layer: {aie}\n  located: "
            f"{list(result.located)}",
            flush=True,
        )
        counts = np.bincount(result.located, minlength=model.cfg.n_layers)
        print(f"  located-layer counts: {dict((i, int(c)) for i, c in enumerate(counts) if c)}")
    results = [
        torch.load(out / f"trace-{k}.pt", weights_only=False)
        for k in ("hidden", "mlp", "attn")
        if (out / f"trace-{k}.pt").exists()
    ]
    doc = report.Report("Causal tracing, SmolLM2-135M, P36")
    doc.figure("aie", aie_curves(*results))
    for result in results:
        doc.figure(f"trace-{result.kind or 'hidden'}", trace_heatmap(result, 0))
    print("wrote", doc.save(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--facts", type=int, default=2)
    s.add_argument("--samples", type=int, default=10)
    s.add_argument("--batch-size", type=int, default=512)
    s.add_argument("--repeat", type=int, default=1)
    s.add_argument("--kinds", nargs="+", default=["none", "mlp"])
    s.add_argument("--no-tl-patch", dest="tl_patch", action="store_false")
    r = sub.add_parser("smollm2")
    r.add_argument("--facts", type=int, default=10)
    r.add_argument("--samples", type=int, default=10)
    r.add_argument("--out", default="tracing-smollm2")
    r.add_argument("--kinds", nargs="+", default=["none", "mlp"])
    args = parser.parse_args()
    args.kinds = [None if k == "none" else k for k in args.kinds]
    if args.mode == "speed":
        speed(args)
    else:
        smollm2(args)


if __name__ == "__main__":
    main()
