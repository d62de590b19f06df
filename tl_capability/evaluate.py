"""Exact-match accuracy under teacher forcing.

A sample is correct when every answer token is the model's top prediction given the prompt and
the previous answer tokens. That is the same as greedy decoding of ``len(answer)`` tokens, in
one forward pass per batch. Hooks the caller has attached (an ablation, a user's analysis) are
active, so ``with ablate(model, mask): accuracy(model, data)`` measures the edited model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor
from tqdm.auto import tqdm

from tl_capability.data import Batch, CapabilityDataset, batches, tokenize
from tl_capability.sites import require_eval


def answer_correct(
    model: Any,
    dataset: CapabilityDataset,
    *,
    batch_size: int = 64,
    progress: bool | None = None,
    hooks: Callable[[Batch], list] | None = None,
) -> Bool[Tensor, " n"]:
    """Per-sample exact match, in dataset order.

    Args:
        model: A TransformerLens model in eval mode.
        dataset: The samples.
        batch_size: Samples per forward pass.
        progress: Show a progress bar; ``None`` shows one when there are more than 20 batches.
        hooks: Per-batch forward hooks, for interventions that depend on the batch, e.g.
            erasing only at the positions that predict answers:
            ``hooks=lambda b: mask.hooks(positions=answer_positions(b))``.

    Raises:
        ValueError: For a model in training mode, an empty dataset, or a sample that does not
            fit the context.
    """
    require_eval(model)
    samples = tokenize(model, dataset)
    n_batches = -(-len(samples) // batch_size)
    show = n_batches > 20 if progress is None else progress
    correct = torch.zeros(len(samples), dtype=torch.bool)
    with torch.no_grad():
        for batch in tqdm(
            batches(model, samples, batch_size),
            total=n_batches,
            disable=not show,
            desc=f"accuracy {dataset.name or ''}".strip(),
        ):
            with model.hooks(fwd_hooks=hooks(batch) if hooks is not None else []):
                logits = model(batch.tokens)
            predicted = logits[batch.target_row, batch.target_pos].argmax(-1)
            wrong = (predicted != batch.target_token).long()
            n_wrong = torch.zeros(batch.tokens.shape[0], dtype=torch.long, device=wrong.device)
            n_wrong.index_add_(0, batch.target_row, wrong)
            correct[batch.sample_index.cpu()] = (n_wrong == 0).cpu()
    return correct


def accuracy(
    model: Any,
    dataset: CapabilityDataset,
    *,
    batch_size: int = 64,
    progress: bool | None = None,
    hooks: Callable[[Batch], list] | None = None,
) -> float:
    """Fraction of samples whose whole answer the model predicts exactly (0.0 to 1.0).

    See :func:`answer_correct` for the arguments.
    """
    correct = answer_correct(model, dataset, batch_size=batch_size, progress=progress, hooks=hooks)
    return correct.float().mean().item()
