"""Datasets of (prompt, answer) pairs and their teacher-forced tokenization.

A [`CapabilityDataset`][tl_capability.data.CapabilityDataset] is a thin, validated wrapper around a
``datasets.Dataset`` with ``prompt`` and ``answer`` columns, plus optional ``choices`` (every
candidate answer) and ``label`` (``answer == choices[label]``) for multiple-choice tasks.
[`tokenize`][tl_capability.data.tokenize] turns it into token ids for one model, and
[`batches`][tl_capability.data.batches] into right-padded batches that know which position predicts
which answer token. An optional ``subject`` column holds each prompt's subject (a substring of it),
for methods that corrupt the subject's tokens.

Teacher forcing (Huang et al., ICLR 2025): the input is ``prompt ⊕ answer[:-1]``; the logits at
position ``len(prompt) - 1 + m`` predict ``answer[m]``, so ``z_m = prompt ⊕ answer[:m]`` ends at
that position. The prompt gets the model's BOS token (when the model prepends one); the answer
is tokenized on its own and gets none, so write answers with the leading space that BPE
tokenizers expect (``" Paris"``).

Right padding is exact for decoder-only models: no real position attends to a later one.

Four modules hold it: `dataset` (the class), `tokenization`, `batching` and `pairs` (the one
check of a target and its controls); every public name
is re-exported here.
"""

from tl_capability.data.batching import Batch, batch_sizes, batches, collate, count_batches
from tl_capability.data.dataset import CapabilityDataset
from tl_capability.data.pairs import check_datasets
from tl_capability.data.tokenization import (
    TokenizedSample,
    answer_token_mismatches,
    check_answer_tokens,
    model_tokenizer,
    prepends_bos,
    tokenize,
)

__all__ = [
    "Batch",
    "CapabilityDataset",
    "TokenizedSample",
    "answer_token_mismatches",
    "batch_sizes",
    "batches",
    "check_answer_tokens",
    "check_datasets",
    "collate",
    "count_batches",
    "model_tokenizer",
    "prepends_bos",
    "tokenize",
]
