"""Trains a small model with a trainer that is not the project's own, for held-out checks.

``locate``'s defaults were tuned on the zoo models, which all come from
``tl_capability/zoo/train.py``. Issue 29 asks whether those defaults still hold on a model
trained elsewhere. This script is a stand-in for such a model: it shares only the zoo's tasks,
tokenizer and model family (so ``tl_capability.zoo.dataset(name, n, split)`` prompts work on it),
and trains in the ordinary causal-LM way instead of the zoo's:

- loss on every next token of ``<bos>`` + prompt + answer (only padding is masked), where the
  zoo trainer reads the loss on answer tokens only;
- AdamW, lr 1e-3, weight decay 0.01 on every parameter, default betas, gradient norm clipped
  at 1.0 (as Hugging Face's ``Trainer``), linear warmup over 100 steps then linear decay to 0;
- batch size 64, each example's task drawn at random (the zoo trainer round-robins), seed 11;
- by default a Llama (``LlamaForCausalLM``) of 3 layers, hidden 128, 4 heads, MLP 384, untied
  embeddings, 64 positions, no dropout.

It evaluates exact match on 200 test samples per task every 500 steps and stops when every task
reaches 0.95, at ``--steps`` or after ``--max-seconds``, whichever comes first; then it writes
the model and tokenizer with ``save_pretrained`` and ``training.json`` (settings, seconds, final
test accuracies on up to 500 test samples per task) to ``--out``. Run it from the repository
root (about 20 minutes on one CPU thread)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/outside_model.py --out /work/runs/outside-llama

and load the result with ``tl_capability.models.load_model("/work/runs/outside-llama")``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from tl_capability.zoo.tasks import TASKS, Example
from tl_capability.zoo.train import build_model, build_tokenizer, exact_match

BATCH_SIZE, WARMUP, EVAL_EVERY, TARGET = 64, 100, 500, 0.95


def _batch(tokenizer, examples: list[Example]) -> dict[str, torch.Tensor]:
    """Right-padded ``<bos>`` + prompt + answer, with labels on every token but padding."""
    seqs = [
        [
            tokenizer.bos_token_id,
            *tokenizer(e.prompt + e.answer, add_special_tokens=False)["input_ids"],
        ]
        for e in examples
    ]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    # The model shifts labels itself, so labels are the inputs with padding ignored.
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _test_size(name: str, wanted: int) -> int:
    """``wanted``, or fewer for a finite task whose test split is smaller (facts has 250)."""
    task = TASKS[name]
    if task.enumerate_all is None:
        return wanted
    return min(wanted, sum(task.split_of(e) == "test" for e in task.enumerate_all()))


def evaluate(model, tokenizer, n: int, seed: int) -> dict[str, float]:
    """Exact match (teacher-forced, as the zoo trainer measures it) on ``n`` test samples."""
    model.eval()
    accs = {
        name: exact_match(model, tokenizer, TASKS[name].sample(_test_size(name, n), "test", seed))
        for name in sorted(TASKS)
    }
    model.train()
    return accs


def train(args: argparse.Namespace) -> dict:
    """Trains until every task reaches ``TARGET``, ``args.steps`` or ``args.max_seconds``."""
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer()
    arch = dict(n_layer=args.layers, n_embd=128, n_head=4, n_inner=args.d_mlp, n_positions=64)
    model = build_model(tokenizer, arch, args.family, args.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    def schedule(step: int) -> float:  # linear warmup, then linear decay to 0 at args.steps
        if step < WARMUP:
            return (step + 1) / WARMUP
        return max(0.0, (args.steps - step) / max(1, args.steps - WARMUP))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    names = sorted(TASKS)
    streams = {n: TASKS[n].stream("train", args.seed) for n in names}
    pick = random.Random(args.seed)
    start, step, accs = time.time(), 0, {}
    while step < args.steps and time.time() - start < args.max_seconds:
        batch = [next(streams[pick.choice(names)]) for _ in range(BATCH_SIZE)]
        loss = model(**_batch(tokenizer, batch)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        if step % EVAL_EVERY == 0:
            accs = evaluate(model, tokenizer, 200, seed=2024)
            shown = " ".join(f"{n}={a:.3f}" for n, a in accs.items())
            print(f"step {step} loss {loss.item():.4f} {shown} ({time.time() - start:.0f}s)")
            if min(accs.values()) >= TARGET:
                break
    seconds = round(time.time() - start)
    final = evaluate(model, tokenizer, 500, seed=99)
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    meta = {
        "trainer": "benchmarks/outside_model.py",
        "family": args.family,
        "architecture": arch,
        "dropout": args.dropout,
        "loss": "causal LM on every token of <bos>+prompt+answer, padding masked",
        "optimizer": {"name": "AdamW", "lr": args.lr, "weight_decay": 0.01, "clip": 1.0},
        "schedule": f"linear warmup {WARMUP} steps, linear decay to 0 at {args.steps}",
        "batch_size": BATCH_SIZE,
        "seed": args.seed,
        "steps_planned": args.steps,
        "steps_run": step,
        "stopped_by": "target" if accs and min(accs.values()) >= TARGET else "budget",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_seconds": seconds,
        "test_accuracy": final,
        "test_samples": {n: _test_size(n, 500) for n in names},
    }
    (args.out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/work/runs/outside-llama"))
    parser.add_argument("--family", choices=("llama", "gpt2"), default="llama")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--d-mlp", type=int, default=384)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = train(args)
    print(json.dumps(meta["test_accuracy"], indent=2), f"steps {meta['steps_run']}")


if __name__ == "__main__":
    main()
