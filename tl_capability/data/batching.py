"""Right-padded batches of tokenized samples with flat answer targets (``target_row``,
``target_pos``, ``target_token``): each answer token listed once, with the row and position that
predict it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tl_capability.data.dataset import CapabilityDataset
from tl_capability.data.tokenization import TokenizedSample, tokenize
from tl_capability.options import check_positive_int
from tl_capability.sites import model_device


@dataclass(frozen=True)
class Batch:
    """A right-padded teacher-forcing batch and the answer tokens it predicts.

    Answer tokens are flattened over the batch ("target" axis): target ``t`` is the
    ``target_index[t]``-th answer token of row ``target_row[t]``, predicted by the logits at
    ``target_pos[t]``.
    """

    tokens: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]
    sample_index: Int[Tensor, " batch"]
    target_row: Int[Tensor, " target"]
    target_pos: Int[Tensor, " target"]
    target_token: Int[Tensor, " target"]
    target_index: Int[Tensor, " target"]
    causal: bool = True

    @property
    def n_targets(self) -> Int[Tensor, " batch"]:
        """Number of answer tokens of each row."""
        return torch.bincount(self.target_row, minlength=self.tokens.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device``."""
        tensors = (getattr(self, f).to(device) for f in self.__dataclass_fields__ if f != "causal")
        return Batch(*tensors, causal=self.causal)


def collate(
    samples: Sequence[TokenizedSample], indices: Sequence[int], pad_token: int = 0
) -> Batch:
    """Builds a [`Batch`][tl_capability.data.Batch] from tokenized samples (``indices`` are their
    dataset indices)."""
    width = max(s.input_length for s in samples)
    tokens = torch.full((len(samples), width), pad_token, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.bool)
    rows, pos, tok, idx = [], [], [], []
    for r, s in enumerate(samples):
        seq = s.prompt if s.slots is not None else s.prompt + s.answer[:-1]
        tokens[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = True
        for m, t in enumerate(s.answer):
            rows.append(r)
            pos.append(s.slots[m] if s.slots is not None else len(s.prompt) - 1 + m)
            tok.append(t)
            idx.append(m)

    def long(x: list[int]) -> Tensor:
        return torch.tensor(x, dtype=torch.long)

    causal = all(s.slots is None for s in samples)
    fields = (long(list(indices)), long(rows), long(pos), long(tok), long(idx))
    return Batch(tokens, mask, *fields, causal=causal)


def _runs(samples: Sequence[TokenizedSample], sort_by_length: bool) -> list[list[int]]:
    """Sample indices in batching order, split into runs that may share a batch: all samples
    for causal models, equal lengths only for bidirectional ones (padding would be attended)."""
    order = list(range(len(samples)))
    bidirectional = any(s.slots is not None for s in samples)
    if sort_by_length or bidirectional:
        order.sort(key=lambda i: samples[i].input_length)
    if not bidirectional:
        return [order]
    return [list(run) for _, run in groupby(order, key=lambda i: samples[i].input_length)]


def count_batches(samples: Sequence[TokenizedSample], batch_size: int) -> int:
    """How many batches [`batches`][tl_capability.data.batches] makes of ``samples`` (for progress
    bars and checkpoints).

    Raises:
        ValueError: For a ``batch_size`` that is not a positive integer.
    """
    return len(batch_sizes(samples, batch_size))


def batch_sizes(samples: Sequence[TokenizedSample], batch_size: int) -> list[int]:
    """The number of samples in each batch that [`batches`][tl_capability.data.batches] makes of
    ``samples``, in order (what a checkpoint's sample count must be after its first batches).

    Raises:
        ValueError: For a ``batch_size`` that is not a positive integer.
    """
    check_positive_int(batch_size, "batch_size")
    return [
        min(batch_size, len(run) - start)
        for run in _runs(samples, True)
        for start in range(0, len(run), batch_size)
    ]


def batches(
    model: Any,
    dataset: CapabilityDataset | Sequence[TokenizedSample],
    batch_size: int = 32,
    *,
    sort_by_length: bool = True,
) -> Iterator[Batch]:
    """Teacher-forcing batches of ``dataset`` on the model's device.

    Args:
        model: The model (for its tokenizer, context length and device).
        dataset: A dataset, or samples already returned by
            [`tokenize`][tl_capability.data.tokenize].
        batch_size: Samples per batch.
        sort_by_length: Group samples of similar length to waste less padding. Results are
            per sample (``Batch.sample_index``), so the order does not matter to callers.
    """
    check_positive_int(batch_size, "batch_size")
    samples = tokenize(model, dataset) if isinstance(dataset, CapabilityDataset) else dataset
    if not samples:
        raise ValueError("the dataset is empty")
    pad = getattr(getattr(model, "tokenizer", None), "pad_token_id", None) or 0
    device = model_device(model)
    runs = _runs(samples, sort_by_length)
    for run in runs:
        for start in range(0, len(run), batch_size):
            chunk = run[start : start + batch_size]
            yield collate([samples[i] for i in chunk], chunk, pad).to(device)
