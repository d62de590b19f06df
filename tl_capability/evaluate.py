"""Exact-match accuracy under teacher forcing.

A sample is correct when every answer token is the model's top prediction given the prompt and
the previous answer tokens. That is the same as greedy decoding of ``len(answer)`` tokens, in
one forward pass per batch. Hooks the caller has attached (an ablation, a user's analysis) are
active, so ``with ablate(model, mask): accuracy(model, data)`` measures the edited model.

Every function takes a dataset or what [`tokenize`][tl_capability.data.tokenize] returned for it:
code that measures the same data many times (erase curves, sweeps) tokenizes it once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from tl_capability._answer_head import answer_logits
from tl_capability.data import (
    Batch,
    CapabilityDataset,
    TokenizedSample,
    batches,
    count_batches,
    tokenize,
)
from tl_capability.sites import require_eval

#: A dataset, or its samples as [`tokenize`][tl_capability.data.tokenize] returned them.
Samples = CapabilityDataset | Sequence[TokenizedSample]


def _answer_logits(
    model: Any,
    dataset: Samples,
    batch_size: int,
    progress: bool | None,
    hooks: Callable[[Batch], list] | None,
) -> Iterator[tuple[Batch, Float[Tensor, "target vocab"]]]:
    """Each batch and the logits at its answer-predicting positions (no gradients)."""
    require_eval(model)
    samples = tokenize(model, dataset) if isinstance(dataset, CapabilityDataset) else dataset
    n_batches = count_batches(samples, batch_size)
    show = n_batches > 20 if progress is None else progress
    with torch.no_grad():
        for batch in tqdm(
            batches(model, samples, batch_size),
            total=n_batches,
            disable=not show,
            desc=f"evaluate {getattr(dataset, 'name', None) or ''}".strip(),
        ):
            fwd = hooks(batch) if hooks is not None else []
            yield batch, answer_logits(model, batch.tokens, batch.target_row, batch.target_pos, fwd)


def answer_correct(
    model: Any,
    dataset: Samples,
    *,
    batch_size: int = 64,
    progress: bool | None = None,
    hooks: Callable[[Batch], list] | None = None,
) -> Bool[Tensor, " n"]:
    """Per-sample exact match, in dataset order.

    Args:
        model: A TransformerLens model in eval mode.
        dataset: The samples, or what [`tokenize`][tl_capability.data.tokenize] returned for them
            with this model (skips tokenizing again when the same data is measured often).
        batch_size: Samples per forward pass.
        progress: Show a progress bar; ``None`` shows one when there are more than 20 batches.
        hooks: Per-batch forward hooks, for interventions that depend on the batch, e.g.
            erasing only at the positions that predict answers:
            ``hooks=lambda b: mask.hooks(positions=answer_positions(b))``.

    Raises:
        ValueError: For a model in training mode, an empty dataset, or a sample that does not
            fit the context.
    """
    correct = torch.zeros(len(dataset), dtype=torch.bool)
    for batch, logits in _answer_logits(model, dataset, batch_size, progress, hooks):
        wrong = (logits.argmax(-1) != batch.target_token).long()
        n_wrong = torch.zeros(batch.tokens.shape[0], dtype=torch.long, device=wrong.device)
        n_wrong.index_add_(0, batch.target_row, wrong)
        correct[batch.sample_index.cpu()] = (n_wrong == 0).cpu()
    return correct


def answer_probability(
    model: Any,
    dataset: Samples,
    *,
    batch_size: int = 64,
    progress: bool | None = None,
    hooks: Callable[[Batch], list] | None = None,
) -> Float[Tensor, " n"]:
    """Per-sample probability of the answer under teacher forcing, in dataset order: the mean
    over answer tokens of ``P(y_m | x ⊕ y_<m)`` (the quantity the CNL score attributes).

    See [`answer_correct`][tl_capability.evaluate.answer_correct] for the arguments.
    """
    probs = torch.zeros(len(dataset))
    for batch, logits in _answer_logits(model, dataset, batch_size, progress, hooks):
        p = logits.float().softmax(-1).gather(-1, batch.target_token[:, None])[:, 0]
        total = torch.zeros(batch.tokens.shape[0], device=p.device).index_add_(
            0, batch.target_row, p
        )
        probs[batch.sample_index.cpu()] = (total / batch.n_targets.to(p.device)).cpu()
    return probs


def accuracy(
    model: Any,
    dataset: Samples,
    *,
    batch_size: int = 64,
    progress: bool | None = None,
    hooks: Callable[[Batch], list] | None = None,
) -> float:
    """Fraction of samples whose whole answer the model predicts exactly (0.0 to 1.0).

    See [`answer_correct`][tl_capability.evaluate.answer_correct] for the arguments.
    """
    correct = answer_correct(model, dataset, batch_size=batch_size, progress=progress, hooks=hooks)
    # An exact fraction: a float32 mean read 12/30 as 0.4000000060, so a 60-point drop measured
    # 59.9999994 and missed a 60-point goal.
    return int(correct.sum()) / len(correct) if len(correct) else float("nan")


def correct_subset(
    model: Any,
    dataset: CapabilityDataset,
    *,
    batch_size: int = 64,
    progress: bool | None = None,
) -> tuple[CapabilityDataset, int]:
    """The samples the model answers correctly (exact match), and how many there are.

    Erasure experiments measure how much of a capability a set of neurons removes, which is
    only defined on what the model could do to begin with; they should report the count kept.

    Args:
        model: A TransformerLens model in eval mode.
        dataset: The samples.
        batch_size: Samples per forward pass.
        progress: Show a progress bar; ``None`` shows one when there are more than 20 batches.

    Returns:
        The correctly answered samples (same name, order and columns), and their number.

    Raises:
        ValueError: When the model answers none of them (an empty dataset cannot be built).
    """
    correct = answer_correct(model, dataset, batch_size=batch_size, progress=progress)
    kept = correct.nonzero()[:, 0].tolist()
    if not kept:
        raise ValueError(
            f"the model answers none of the {len(dataset)} samples of "
            f"{dataset.name or 'the dataset'} correctly"
        )
    return dataset.select(kept), len(kept)
