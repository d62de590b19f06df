"""The clean / corrupted pairs of a knowledge circuit: tokens, batches and the metric (private:
see [`tl_capability.circuits`][tl_capability.circuits])."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

import tl_capability._circuit_graph as cg
from tl_capability.data import CapabilityDataset, model_tokenizer, tokenize
from tl_capability.sites import model_device, require_eval


@dataclass(frozen=True)
class Pairs:
    clean: list[tuple[int, ...]]
    corrupted: list[tuple[int, ...]]
    answer: list[int]
    other: list[int]


def pairs_of(model: Any, clean: CapabilityDataset, corrupted: CapabilityDataset) -> Pairs:
    if len(clean) != len(corrupted):
        raise ValueError(f"{len(clean)} clean samples but {len(corrupted)} corrupted ones")
    a, b = tokenize(model, clean), tokenize(model, corrupted)
    prompts, others = clean.data["prompt"], corrupted.data["prompt"]
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if len(x.prompt) != len(y.prompt):
            raise ValueError(
                f"pair {i}: the corrupted prompt must tokenize to as many tokens as the clean "
                f"one; {prompts[i]!r} has {len(x.prompt)}, {others[i]!r} has {len(y.prompt)}"
            )
    return Pairs([s.prompt for s in a], [s.prompt for s in b], [s.answer[0] for s in a],
                  [s.answer[0] for s in b])  # fmt: skip


Batch = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def batches(model: Any, pairs: Pairs, batch_size: int) -> Iterator[Batch]:
    """``(clean tokens, corrupted tokens, last position, answer, other)``, right-padded."""
    pad = getattr(model_tokenizer(model), "pad_token_id", None) or 0
    device = model_device(model)
    for start in range(0, len(pairs.answer), batch_size):
        rows = range(start, min(start + batch_size, len(pairs.answer)))
        width = max(len(pairs.clean[i]) for i in rows)
        tokens = torch.full((2, len(rows), width), pad, dtype=torch.long)
        for r, i in enumerate(rows):
            tokens[0, r, : len(pairs.clean[i])] = torch.tensor(pairs.clean[i])
            tokens[1, r, : len(pairs.corrupted[i])] = torch.tensor(pairs.corrupted[i])
        last = torch.tensor([len(pairs.clean[i]) - 1 for i in rows])
        answer = torch.tensor([pairs.answer[i] for i in rows])
        other = torch.tensor([pairs.other[i] for i in rows])
        yield tokens[0].to(device), tokens[1].to(device), last, answer, other


def metric_fn(kind: str, last: Tensor, answer: Tensor, other: Tensor) -> Any:
    """``logits[batch, pos, vocab] → per-sample metric[batch]``."""

    def metric(logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, " batch"]:
        rows = torch.arange(len(last), device=logits.device)
        at = logits[rows, last.to(logits.device)].float()
        if kind == "logprob":
            return at.log_softmax(-1)[rows, answer.to(at.device)]
        return at[rows, answer.to(at.device)] - at[rows, other.to(at.device)]

    return metric


def check(model: Any, batch_size: int) -> cg.Graph:
    require_eval(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return cg.Graph.of(model)


def patched_means(
    model: Any, graph: cg.Graph, pairs: Pairs, metric: str, sets: list[Tensor], batch_size: int
) -> list[float]:
    """The mean metric of the full model, of the corrupted prompts, then with the edges outside
    each of ``sets`` patched (see ``cg.patched_pass``)."""
    sums = torch.zeros(len(sets) + 2, dtype=torch.float64)
    with cg.split_inputs(model):
        for tokens, bad_tokens, last, answer, other in batches(model, pairs, batch_size):
            measure = metric_fn(metric, last, answer, other)
            bad = torch.zeros(
                *tokens.shape, graph.n_parents, model.cfg.d_model, device=tokens.device
            )
            sums[1] += float(measure(cg.record_pass(model, graph, bad_tokens, bad, 1.0)).sum())
            with torch.no_grad():
                sums[0] += float(measure(model(tokens)).sum())
            for j, edges in enumerate(sets):
                outside = (graph.valid & ~edges).float().to(bad.device)
                patched = cg.patched_pass(model, graph, tokens, bad, outside)
                sums[2 + j] += float(measure(patched).sum())
    return (sums / len(pairs.answer)).tolist()
