"""The library against its peers: one run, one table.

Every row attributes the same prompts' answers to the MLP neurons of one GPT-2-small-wide model
(6 layers, d_model 768, d_mlp 3072, vocabulary 50,257, random weights; 16-token prompts, a
one-token answer, 20 midpoint IG steps) in this process, one after the other, on the same
threads:

- ``reference``: the per-layer re-run of Dai et al.'s code and EasyEdit: for each layer, the
  whole model on ``steps`` scaled copies of the prompt, back-propagated to that layer
  (answer position).
- ``knowledge-neurons 0.0.2``: EleutherAI's package with its defaults (``batch_size=10``). Its
  GPT-2 neuron is the *pre*-activation ``c_fc`` output and its steps are ``linspace(0, 1)``, so
  its scores are not comparable: time only.
- ``captum 0.9.0``: ``IntegratedGradients`` on one layer's activation at every position (the
  midpoint rule, ``riemann_middle``), one layer at a time: what a Captum user writes for
  all-position IG.
- ``tl_capability ig``: :func:`tl_capability.attribute` at the answer position, and with
  ``positions="all"`` (compared with Captum).
- ``grad_x_act`` and ``neurgrad``: one gradient per row (compared with the reference's
  gradient at α = 1).

Columns: prompts, seconds (the best of ``--repeat`` runs, for every row alike), ratio (reference
seconds / row seconds, so > 1 is faster than the reference), and agreement: the largest
|difference| over the largest |score| against the row named in ``against``. The FLOP floor
line counts the multiply-adds the answer-position IG rows must do (forward of the blocks from
the scaled layer up and of the unembedding, for one token per row, and the backward pass down
to the scaled layer, input gradients only), at the machine's measured matmul rate.

    pip install -e ".[bench]"
    python benchmarks/peers.py [--prompts 1 8] [--threads 1] [--repeat 3] [--skip-peers]
        [--out FILE] [--layers 6] [--arch gpt2|llama|neox|bloom] [--d-model 768] [--d-mlp 3072]
        [--vocab 50257] [--device cpu|cuda] [--dtype float32|bfloat16] [--model smollm2-135m]

``--arch llama`` / ``--arch neox`` / ``--arch bloom`` and the sizes build other models (a check
on shapes and architectures the defaults were not tuned on; Bloom's ALiBi takes the general
path); knowledge-neurons knows GPT-2 only, so its row is left out there (and where it is not
installed). ``--model smollm2-135m`` runs the rows on the pretrained SmolLM2-135M of the zoo
(``tl_capability.zoo.load_model``; 30 layers, so the reference and Captum take minutes per
prompt) with fact prompts whose answer is one token. The model's first call at each position
kind (which also pays the one-time checks of its fast paths) is timed apart, at the first
prompt count, and reported in a row of its own. ``--device``
(default: the GPU where there is one) and ``--dtype`` run every row there, in that precision
(the FLOP floor's rate is measured there too); a GPU's times are taken after synchronising it.
"""

from __future__ import annotations

import argparse
import os
import random
import string
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

D_MODEL, D_MLP, VOCAB, PROMPT_TOKENS = 768, 3072, 50257, 16
#: Prompts with a one-token answer (for SmolLM2's tokenizer) for ``--model``.
FACTS = [
    ("The capital of France is", " Paris"),
    ("The opposite of hot is", " cold"),
    ("Monday, Tuesday,", " Wednesday"),
    ("One, two, three,", " four"),
]
ARCH_NAMES = {
    "gpt2": "GPT-2",
    "llama": "Llama-style",
    "neox": "GPT-NeoX (Pythia)",
    "bloom": "Bloom (ALiBi)",
}


def build_model(
    directory: Path,
    n_layers: int,
    arch: str = "gpt2",
    d_model: int = D_MODEL,
    d_mlp: int = D_MLP,
    vocab: int = VOCAB,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any, Any]:
    """A random-weight GPT-2, Llama-style decoder (RMSNorm, rotary positions, grouped-query
    attention with half the heads for keys and values, a gated SiLU MLP) or GPT-NeoX (Pythia's
    architecture: parallel attention and MLP, rotary positions on a quarter of each head) saved
    to ``directory``: (bridge, Hugging Face model, tokenizer), both on ``device`` in ``dtype``."""
    from transformer_lens import TransformerBridge
    from transformers import (
        BloomConfig,
        BloomForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from tl_capability.zoo.train import build_tokenizer

    torch.manual_seed(0)
    heads = max(h for h in range(1, max(1, d_model // 64) + 1) if d_model % h == 0)
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=d_model,
            intermediate_size=d_mlp,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=heads // 2 if heads % 2 == 0 else heads,
            vocab_size=vocab,
            max_position_embeddings=128,
        )
        hf = LlamaForCausalLM(config).eval()
    elif arch == "neox":
        config = GPTNeoXConfig(
            hidden_size=d_model,
            intermediate_size=d_mlp,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            vocab_size=vocab,
            rotary_pct=0.25,
            use_parallel_residual=True,
            max_position_embeddings=128,
        )
        hf = GPTNeoXForCausalLM(config).eval()
    elif arch == "bloom":  # ALiBi: no key/value-cache rows, no grown batches (general path)
        if d_mlp != 4 * d_model:
            raise SystemExit(f"--arch bloom has d_mlp = 4 x d_model = {4 * d_model}")
        config = BloomConfig(hidden_size=d_model, n_layer=n_layers, n_head=heads, vocab_size=vocab)
        hf = BloomForCausalLM(config).eval()
    else:
        config = GPT2Config(
            n_layer=n_layers, n_embd=d_model, n_inner=d_mlp, n_head=heads, vocab_size=vocab
        )
        hf = GPT2LMHeadModel(config).eval()
    hf.save_pretrained(directory)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(directory)
    bridge = TransformerBridge.boot_transformers(str(directory), device=device, dtype=dtype)
    return bridge.eval(), hf.to(device=device, dtype=dtype), tokenizer


def _clean_post(model: Any, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's ``hook_post`` activations ``[pos, d_mlp]`` on a clean run."""
    acts: list[torch.Tensor] = [torch.empty(0)] * model.cfg.n_layers

    def keep(layer: int) -> Callable:
        return lambda a, hook: acts.__setitem__(layer, a[0].detach().clone())

    fwd = [(f"blocks.{layer}.mlp.hook_post", keep(layer)) for layer in range(model.cfg.n_layers)]
    with torch.no_grad(), model.hooks(fwd_hooks=fwd):
        model(tokens)
    return acts


def reference_grads(model: Any, tokens: torch.Tensor, answer: int, alphas: torch.Tensor) -> Any:
    """Per layer: the whole model on ``len(alphas)`` scaled copies, back-propagated to that layer.

    Returns ``(a, g)``, each ``[layer, d_mlp]``: the clean activations at the answer position and
    the mean over ``α`` of ``∂P/∂a`` at ``α a`` (IG is ``a · g``).
    """
    q = tokens.shape[1] - 1
    clean = [a[q] for a in _clean_post(model, tokens)]
    grads = []
    for layer in range(model.cfg.n_layers):
        box: dict[str, torch.Tensor] = {}

        def scale(act: torch.Tensor, hook: Any, layer: int = layer, box: dict = box) -> Any:
            new = act.clone()
            new[:, q] = alphas[:, None] * clean[layer]
            box["x"] = new
            return new

        with torch.enable_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", scale)]):
            logits = model(tokens.expand(len(alphas), -1))
            prob = logits[:, q].float().softmax(-1)[:, answer].sum()
            (grad,) = torch.autograd.grad(prob, box["x"])
        grads.append(grad[:, q].mean(0))
    return torch.stack(clean), torch.stack(grads)


def reference_ig(model: Any, tokens: torch.Tensor, answer: int, alphas: torch.Tensor) -> Any:
    """The reference's IG scores ``[layer, d_mlp]`` at the answer position."""
    a, g = reference_grads(model, tokens, answer, alphas)
    return a * g


def captum_all(model: Any, tokens: torch.Tensor, answer: int, steps: int) -> torch.Tensor:
    """Captum ``IntegratedGradients`` on each layer's activation at every position (midpoint
    rule), summed over positions: ``[layer, d_mlp]``."""
    from captum.attr import IntegratedGradients

    q = tokens.shape[1] - 1
    clean = _clean_post(model, tokens)
    out = []
    for layer, a in enumerate(clean):

        def forward(x: torch.Tensor, toks: torch.Tensor, layer: int = layer) -> torch.Tensor:
            hook = (f"blocks.{layer}.mlp.hook_post", lambda act, hook: x)
            with model.hooks(fwd_hooks=[hook]):
                return model(toks.expand(len(x), -1))[:, q].float().softmax(-1)[:, answer]

        attr = IntegratedGradients(forward).attribute(
            a[None],
            baselines=torch.zeros_like(a[None]),
            additional_forward_args=(tokens,),
            n_steps=steps,
            method="riemann_middle",
        )
        out.append(attr[0].sum(0))
    return torch.stack(out)


def knowledge_neurons_scores(
    hf: Any, tokenizer: Any, prompts: list[str], steps: int, device: str = "cpu"
) -> None:
    """EleutherAI knowledge-neurons 0.0.2 with its defaults (time only)."""
    from knowledge_neurons import KnowledgeNeurons

    kn = KnowledgeNeurons(hf, tokenizer, model_type="gpt2", device=device)
    for prompt in prompts:
        kn.get_scores(prompt, "x", batch_size=10, steps=steps, pbar=False)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def matmul_rate(device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """The best multiply-add rate of this machine: a [512, 768] x [768, 3072] matmul on
    ``device`` in ``dtype``."""
    a = torch.randn(512, D_MODEL, device=device, dtype=dtype)
    b = torch.randn(D_MODEL, D_MLP, device=device, dtype=dtype)
    for _ in range(5):
        a @ b
    n = 40 if device == "cpu" else 400
    synchronize()
    start = time.perf_counter()
    for _ in range(n):
        a @ b
    synchronize()
    return n * 512 * D_MODEL * D_MLP / (time.perf_counter() - start)


def where(device: str) -> str:
    """The device the rows ran on, in words."""
    if device.startswith("cuda"):
        return f"GPU {torch.cuda.get_device_name(torch.device(device))}"
    return f"{torch.get_num_threads()} CPU thread(s)"


def synchronize() -> None:
    """Waits for the GPU's queued work, so that wall-clock times include it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def sizes(hf: Any) -> tuple[int, int, int]:
    """Multiply-adds of one token: through a block (every matrix of the first block: a weight
    entry is one multiply-add), through its MLP's output projection, and through the
    unembedding."""
    base = hf.base_model
    block = base.h[0] if hasattr(base, "h") else base.layers[0]
    macs = sum(p.numel() for p in block.parameters() if p.dim() == 2)
    mlp = block.mlp
    out = next(getattr(mlp, n) for n in ("c_proj", "down_proj", "dense_4h_to_h") if hasattr(mlp, n))
    return macs, out.weight.numel(), hf.config.hidden_size * hf.config.vocab_size


def floor_macs(size: tuple[int, int, int], n_layers: int, prompts: int, steps: int) -> float:
    """Multiply-adds the answer-position IG rows must do: per (prompt, layer l, step), one token
    from layer l's MLP output up, forward and backward (the weights are frozen, so the backward
    pass of a matmul is one matmul: the input's gradient), and the unembedding's forward and
    gradient. (Attention over the cached prefix is negligible here.)"""
    block, mlp_out, head = size
    per_step = sum(
        2 * ((n_layers - 1 - layer) * block + mlp_out) + 2 * head for layer in range(n_layers)
    )
    return prompts * steps * per_step


def reference_macs(
    size: tuple[int, int, int], n_layers: int, prompts: int, steps: int, t: int = PROMPT_TOKENS
) -> float:
    """Multiply-adds of the per-layer reference: per (prompt, layer l), ``steps`` copies of the
    whole ``t``-token prompt forward through every block and the unembedding at every position,
    and backward from the logits (every position's unembedding input) down to layer l."""
    block, mlp_out, head = size
    per_layer = [
        steps * t * (n_layers * block + 2 * head + (n_layers - 1 - layer) * block + mlp_out)
        for layer in range(n_layers)
    ]
    return prompts * sum(per_layer)


def agreement(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.detach().float().cpu(), ref.detach().float().cpu()
    return float((ours - ref).abs().max() / ref.abs().max())


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """The best of ``repeat`` wall-clock times of ``fn()`` (the least disturbed by other load on
    the machine), and its result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        synchronize()
        start = time.perf_counter()
        out = fn()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def run(args: argparse.Namespace, prompts_n: int, model: Any, hf: Any, tokenizer: Any) -> list:
    from tl_capability import CapabilityDataset, attribute, ig_alphas, tokenize

    if args.model:  # real prompts, each with a one-token answer
        if prompts_n > len(FACTS):
            raise SystemExit(f"--model takes at most {len(FACTS)} prompts")
        prompts, answers = (list(x) for x in zip(*FACTS[:prompts_n], strict=True))
        data = CapabilityDataset.from_pairs(prompts, answers, name="facts")
        samples = tokenize(model, data)
        assert all(len(s.answer) == 1 for s in samples), "answers must be one token"
    else:
        rng = random.Random(prompts_n)
        # One character is one token; GPT-NeoX's bridge prepends no BOS by default.
        chars = PROMPT_TOKENS - int(bool(getattr(model.cfg, "default_prepend_bos", True)))
        prompts = ["".join(rng.choices(string.ascii_lowercase, k=chars)) for _ in range(prompts_n)]
        data = CapabilityDataset.from_pairs(prompts, ["x"] * prompts_n, name="peers")
        samples = tokenize(model, data)
        assert all(len(s.prompt) == PROMPT_TOKENS for s in samples)
    tokens = sum(len(s.prompt) for s in samples) / len(samples)
    seqs = [(torch.tensor([list(s.prompt)], device=args.device), s.answer[0]) for s in samples]
    alphas, steps = ig_alphas(args.steps).to(args.device), args.steps
    rows = []

    def row(name: str, seconds: float, agree: float | None, against: str) -> None:
        rows.append(
            {
                "method": name,
                "prompts": prompts_n,
                "seconds": seconds,
                "agree": agree,
                "against": against,
            }
        )

    t_ref, ref = timed(
        lambda: torch.stack([reference_ig(model, t, y, alphas) for t, y in seqs]), args.repeat
    )
    row("reference (per-layer re-run)", t_ref, None, "")
    at_one = [reference_grads(model, t, y, torch.ones(1, device=args.device)) for t, y in seqs]
    clean, grad = (torch.stack(x) for x in zip(*at_one, strict=True))
    # knowledge-neurons knows GPT-2, not Llama; its row is left out where it is not installed
    if not args.skip_peers and args.arch == "gpt2" and _installed("knowledge_neurons"):
        t_kn, _ = timed(
            lambda: knowledge_neurons_scores(hf, tokenizer, prompts, steps, args.device),
            args.repeat,
        )
        row("knowledge-neurons 0.0.2 (c_fc)", t_kn, None, "time only")
    if not args.skip_peers:
        t_cap, cap = timed(
            lambda: torch.stack([captum_all(model, t, y, steps) for t, y in seqs]), args.repeat
        )
        row("captum 0.9.0, all positions", t_cap, None, "")
    kw = {"progress": False, "per_sample": True}

    def ours(positions: str) -> tuple[float, Any]:
        """The best of ``--repeat`` calls; the model's first call at these positions (which
        also pays its one-time checks) is timed apart, in ``args.first``."""

        def call() -> Any:
            return attribute(model, data, "ig", steps=steps, positions=positions, **kw)

        if positions not in args.first:
            args.first[positions] = (prompts_n, timed(call)[0])
        return timed(call, args.repeat)

    t_ig, ig = ours("answer")
    row("tl_capability ig, answer", t_ig, agreement(ig.per_sample, ref), "reference")
    t_all, all_pos = ours("all")
    row(
        "tl_capability ig, all positions",
        t_all,
        None if args.skip_peers else agreement(all_pos.per_sample, cap),
        "" if args.skip_peers else "captum",
    )
    for positions, t_later in (("answer", t_ig), ("all", t_all)):
        n, t_first = args.first[positions]
        if n == prompts_n:
            rows.append(
                {
                    "method": f"  first call on the model ({positions})",
                    "prompts": prompts_n,
                    "seconds": t_first,
                    "ratio": t_ref / t_first,
                    "agree": None,
                    "against": f"{100 * (t_first / t_later - 1):+.0f} % over the best later call "
                    "(the one-time checks of the fast paths)",
                }
            )
    for method in ("grad_x_act", "neurgrad"):
        t, scores = timed(lambda method=method: attribute(model, data, method, **kw), args.repeat)
        expect = grad * (clean if method == "grad_x_act" else torch.where(clean < 0, -1.0, 1.0))
        row(f"tl_capability {method}", t, agreement(scores.per_sample, expect), "α = 1 gradient")
    for r in rows:
        r["ratio"] = t_ref / r["seconds"]
    if not args.skip_peers:
        rows.append(
            {
                "method": "  all positions vs captum",
                "prompts": prompts_n,
                "seconds": None,
                "ratio": t_cap / t_all,
                "agree": None,
                "against": "captum seconds / ours",
            }
        )
    size = sizes(hf)
    need = floor_macs(size, model.cfg.n_layers, prompts_n, steps)
    ref_macs = reference_macs(size, model.cfg.n_layers, prompts_n, steps, tokens)
    rows.append(
        {
            "method": "  FLOP floor of answer IG rows",
            "prompts": prompts_n,
            "seconds": need / args.rate,
            "ratio": t_ref / (need / args.rate),
            "agree": None,
            "against": f"ours is {t_ig * args.rate / need:.1f}x the floor; the reference does "
            f"{ref_macs / need:.1f}x the multiply-adds",
        }
    )
    return rows


def markdown(rows: list[dict]) -> str:
    def fmt(v: Any, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    lines = [
        "| method | prompts | seconds | ratio to reference | agreement | against |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['prompts']} | {fmt(r['seconds'], '.3f')} | "
            f"{fmt(r['ratio'], '.1f')}x | {fmt(r['agree'], '.1e')} | {r['against']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--arch", choices=list(ARCH_NAMES), default="gpt2")
    parser.add_argument(
        "--model",
        choices=["smollm2-135m"],
        help="a pretrained zoo model (tl_capability.zoo.load_model) instead of a random one; "
        "real prompts with one-token answers (at most 4), --arch and the sizes are ignored",
    )
    parser.add_argument("--d-model", type=int, default=D_MODEL)
    parser.add_argument("--d-mlp", type=int, default=D_MLP)
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument(
        "--repeat", type=int, default=3, help="best of this many runs, for every row alike"
    )
    parser.add_argument("--skip-peers", action="store_true", help="no Captum / knowledge-neurons")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    with tempfile.TemporaryDirectory() as d:
        if args.model:
            from tl_capability.zoo import load_model

            model = load_model(args.model, device=args.device, dtype=args.dtype)
            hf, tokenizer = model.original_model, model.tokenizer
            args.arch = "llama"
            args.layers, args.d_model = model.cfg.n_layers, model.cfg.d_model
            args.d_mlp, args.vocab = model.cfg.d_mlp, model.cfg.d_vocab
        else:
            model, hf, tokenizer = build_model(
                Path(d),
                args.layers,
                args.arch,
                args.d_model,
                args.d_mlp,
                args.vocab,
                args.device,
                dtype,
            )
        # The model's first call also checks, once, what its fast paths rely on (the KV cache,
        # the head, the blocks' arguments, the MLP output): timed apart at the first prompt
        # count, its own row.
        args.first = {}
        args.rate = matmul_rate(args.device, dtype)
        rows = [r for n in args.prompts for r in run(args, n, model, hf, tokenizer)]
    what = (
        f"{args.model} (pretrained), {args.layers} layers, d_model {args.d_model}, d_mlp "
        f"{args.d_mlp}, vocabulary {args.vocab}; fact prompts"
        if args.model
        else f"{ARCH_NAMES[args.arch]}, {args.layers} layers, d_model {args.d_model}, d_mlp "
        f"{args.d_mlp}, vocabulary {args.vocab}, random weights; {PROMPT_TOKENS}-token prompts"
    )
    head = (
        f"{what}, one-token answers, {args.steps} IG steps; "
        f"{where(args.device)}; {args.dtype}; torch {torch.__version__}; matmul rate "
        f"{args.rate / 1e9:.1f} GMAC/s; rows: the best of {args.repeat} calls after the "
        "model's first (timed apart)"
    )
    table = f"{head}\n\n{markdown(rows)}\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
