"""Trains the zoo model from scratch and writes it as a Hugging Face directory.

Run ``python -m tl_capability.zoo.train`` to regenerate the default zoo model's weights in
``tl_capability/zoo/models/gpt2/`` (about 36 minutes on 2 CPU cores). Training is deterministic
for a given seed, torch version and thread count: examples come from seeded generators
([`tl_capability.zoo.tasks`][tl_capability.zoo.tasks]), the batches round-robin over the tasks, and
the loss is read only on answer tokens.

The default model is a plain GPT-2 (4 layers, d_model 128, 4 heads, d_mlp 512, GELU, no
dropout) over a character-level tokenizer, written with ``save_pretrained`` so that
``TransformerBridge.boot_transformers(directory)`` (or any Hugging Face tool) loads it offline.
Two other training regimes make the rest of the zoo (``docs/zoo-model.md`` gives each command,
with ``--out tl_capability/zoo/models/<name>``): ``--dropout 0.1`` trains the same GPT-2 with
GPT-2's own dropout (``gpt2-dropout``), and ``--family llama`` a Llama-style model (``llama``:
gated SiLU MLP, RMSNorm, rotary positions, no dropout, untied unembedding).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from tl_capability.zoo.tasks import ALPHABET, TASKS, Example

MODEL_DIR = Path(__file__).parent / "models" / "gpt2"  # the default zoo model
BOS, PAD = "<bos>", "<pad>"
ARCHITECTURE = dict(n_layer=4, n_embd=128, n_head=4, n_inner=512, n_positions=64)
"""The zoo models' shape: 4 layers, d_model 128, 4 heads, 512 MLP neurons per layer."""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: ``<bos>`` (0), ``<pad>`` (1), then one id per character."""
    vocab = {BOS: 0, PAD: 1} | {c: i + 2 for i, c in enumerate(ALPHABET)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=PAD, unk_token=PAD
    )


def _encode(tokenizer: PreTrainedTokenizerFast, examples: list[Example]):
    """Teacher-forcing batch: inputs, labels (-100 off the answer) and the answer mask."""
    seqs, starts = [], []
    for e in examples:
        p = tokenizer(e.prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(e.answer, add_special_tokens=False)["input_ids"]
        seqs.append([tokenizer.bos_token_id, *p, *a])
        starts.append(len(p) + 1)
    width = max(len(s) for s in seqs) - 1
    inputs = torch.full((len(seqs), width), tokenizer.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    for i, (s, start) in enumerate(zip(seqs, starts, strict=True)):
        inputs[i, : len(s) - 1] = torch.tensor(s[:-1])
        labels[i, start - 1 : len(s) - 1] = torch.tensor(s[start:])
    return inputs, labels


@torch.no_grad()
def exact_match(model, tokenizer, examples: list[Example], batch_size: int = 256) -> float:
    """Fraction of examples whose every answer token is the argmax under teacher forcing."""
    correct = 0
    for i in range(0, len(examples), batch_size):
        inputs, labels = _encode(tokenizer, examples[i : i + batch_size])
        pred = model(inputs).logits.argmax(-1)
        ok = (pred == labels) | (labels == -100)
        correct += int(ok.all(-1).sum())
    return correct / len(examples)


def build_model(
    tokenizer: PreTrainedTokenizerFast, architecture: dict[str, int], family: str, dropout: float
) -> torch.nn.Module:
    """A freshly initialised model of one zoo family, in training mode."""
    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if family == "gpt2":
        drop = dict(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
        return GPT2LMHeadModel(GPT2Config(**ids, **drop, **architecture)).train()
    if family == "llama":
        config = LlamaConfig(
            **ids,
            hidden_size=architecture["n_embd"],
            intermediate_size=architecture["n_inner"],
            num_hidden_layers=architecture["n_layer"],
            num_attention_heads=architecture["n_head"],
            num_key_value_heads=architecture["n_head"],
            max_position_embeddings=architecture["n_positions"],
            hidden_act="silu",
            rms_norm_eps=1e-5,
            attention_dropout=dropout,
            tie_word_embeddings=False,
        )
        return LlamaForCausalLM(config).train()
    raise ValueError(f"family must be 'gpt2' or 'llama', got {family!r}")


def train(
    out: Path = MODEL_DIR,
    steps: int = 4000,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    eval_every: int = 500,
    architecture: dict[str, int] | None = None,
    family: str = "gpt2",
    dropout: float = 0.0,
) -> dict[str, float]:
    """Trains a zoo model, saves it to ``out`` and returns its test accuracies.

    Args:
        architecture: Overrides entries of [`ARCHITECTURE`][tl_capability.zoo.train.ARCHITECTURE]
            (e.g. ``{"n_layer": 3}``).
        family: ``"gpt2"`` (learned positions, LayerNorm, GELU MLP, tied unembedding) or
            ``"llama"`` (rotary positions, RMSNorm, gated SiLU MLP, untied unembedding).
        dropout: Residual, embedding and attention dropout while training (GPT-2 used 0.1).
    """
    architecture = ARCHITECTURE | (architecture or {})
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, architecture, family, dropout)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )
    warmup = max(1, min(200, steps // 10))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    names = sorted(TASKS)
    streams = [TASKS[n].stream("train", seed) for n in names]
    held_out = {n: TASKS[n].sample(200, "test", seed=12345) for n in names}
    start = time.time()
    for step in range(steps):
        batch = [next(streams[i % len(streams)]) for i in range(batch_size)]
        inputs, labels = _encode(tokenizer, batch)
        logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), ignore_index=-100
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            model.eval()
            accs = {n: exact_match(model, tokenizer, held_out[n]) for n in names}
            model.train()
            shown = " ".join(f"{n}={a:.3f}" for n, a in accs.items())
            print(f"step {step + 1} loss {loss.item():.4f} {shown} ({time.time() - start:.0f}s)")
    model.eval()
    final = {
        n: exact_match(
            model, tokenizer, TASKS[n].sample(1000 if n != "facts" else 250, "test", seed=777)
        )
        for n in names
    }
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {
        "family": family,
        "dropout": dropout,
        "architecture": architecture,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_seconds": round(time.time() - start),
        "test_accuracy": final,
    }
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (fixed for determinism)"
    )
    parser.add_argument("--layers", type=int, default=ARCHITECTURE["n_layer"])
    parser.add_argument("--d-mlp", type=int, default=ARCHITECTURE["n_inner"])
    parser.add_argument("--family", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument("--dropout", type=float, default=0.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    arch = {"n_layer": args.layers, "n_inner": args.d_mlp}
    accs = train(
        args.out,
        args.steps,
        args.batch_size,
        args.lr,
        args.seed,
        architecture=arch,
        family=args.family,
        dropout=args.dropout,
    )
    print(json.dumps(accs, indent=2))


if __name__ == "__main__":
    main()
