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
"""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import datasets
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tl_capability.sites import is_masked_lm, model_device


class CapabilityDataset:
    """A validated dataset of (prompt, answer) pairs.

    Build one with [`from_pairs`][tl_capability.data.CapabilityDataset.from_pairs],
    [`from_hf`][tl_capability.data.CapabilityDataset.from_hf] or
    [`from_file`][tl_capability.data.CapabilityDataset.from_file]; named hub loaders live in
    [`tl_capability.loaders`][tl_capability.loaders], the zoo model's tasks in
    [`tl_capability.zoo`][tl_capability.zoo].

    Attributes:
        data: The underlying ``datasets.Dataset``.
        name: A label for reports (the capability's name).
    """

    def __init__(self, data: datasets.Dataset, name: str | None = None) -> None:
        for column in ("prompt", "answer"):
            if column not in data.column_names:
                raise ValueError(
                    f"a CapabilityDataset needs a {column!r} column; got {data.column_names}"
                )
        if len(data) == 0:
            raise ValueError(f"the dataset {name!r} is empty" if name else "the dataset is empty")
        for i, (p, a) in enumerate(zip(data["prompt"], data["answer"], strict=True)):
            if not isinstance(p, str) or not isinstance(a, str):
                raise ValueError(f"sample {i}: prompt and answer must be strings")
            if not a:
                raise ValueError(f"sample {i} ({p[:40]!r}): the answer is empty")
        if "label" in data.column_names and "choices" in data.column_names:
            rows = zip(data["choices"], data["label"], data["answer"], strict=True)
            for i, (c, lab, a) in enumerate(rows):
                if c is None or lab is None:
                    continue
                if not 0 <= lab < len(c):
                    raise ValueError(f"sample {i}: label {lab} is not an index into {c}")
                if c[lab] != a:
                    raise ValueError(f"sample {i}: answer {a!r} is not choices[label] = {c[lab]!r}")
        if "subject" in data.column_names:
            for i, (p, s) in enumerate(zip(data["prompt"], data["subject"], strict=True)):
                if not isinstance(s, str) or not s or s not in p:
                    raise ValueError(
                        f"sample {i} ({p!r}): the subject {s!r} is not a non-empty substring of "
                        "its prompt (a 'subject' column names the part of each prompt that "
                        "methods such as causal tracing corrupt; rename or drop a column that "
                        "means something else)"
                    )
        self.data = data
        self.name = name

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_pairs(
        cls,
        prompts: Sequence[str],
        answers: Sequence[str],
        name: str | None = None,
        *,
        choices: Sequence[Sequence[str]] | None = None,
        labels: Sequence[int] | None = None,
        subjects: Sequence[str] | None = None,
    ) -> CapabilityDataset:
        """Builds a dataset from parallel lists of prompts and answers.

        Args:
            prompts: The prompts.
            answers: The answers, one per prompt (with the leading space a BPE tokenizer
                expects after the prompt).
            name: A label for reports.
            choices: Every candidate answer of each sample (multiple choice).
            labels: The index of each sample's answer in its ``choices``.
            subjects: The subject of each sample (``"France"`` in ``"The capital of France
                is"``), a substring of its prompt, kept in a ``subject`` column for methods
                that corrupt or patch the subject's tokens (causal tracing).

        Raises:
            ValueError: If the lists differ in length or are empty, or naming the first sample
                whose subject is not a substring of its prompt.
        """
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        columns: dict[str, list[Any]] = {"prompt": list(prompts), "answer": list(answers)}
        if choices is not None:
            columns["choices"] = [list(c) for c in choices]
        if labels is not None:
            columns["label"] = list(labels)
        if subjects is not None:
            columns["subject"] = list(subjects)
        for key, values in columns.items():
            if len(values) != len(prompts):
                raise ValueError(f"{len(values)} {key} for {len(prompts)} prompts")
        return cls(datasets.Dataset.from_dict(columns), name)

    @classmethod
    def from_hf(
        cls,
        data: datasets.Dataset,
        *,
        prompt_column: str = "prompt",
        answer_column: str = "answer",
        name: str | None = None,
    ) -> CapabilityDataset:
        """Wraps a ``datasets.Dataset``, renaming its prompt/answer columns if needed."""
        renames = {
            old: new
            for old, new in ((prompt_column, "prompt"), (answer_column, "answer"))
            if old != new
        }
        for old in renames:
            if old not in data.column_names:
                raise ValueError(f"column {old!r} not in {data.column_names}")
        if renames:
            data = data.rename_columns(renames)
        return cls(data, name)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        prompt_column: str = "prompt",
        answer_column: str = "answer",
        name: str | None = None,
    ) -> CapabilityDataset:
        """Reads a local ``.jsonl``/``.json`` or ``.csv`` file with prompt and answer columns."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(path)
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            builder = "json"
        elif suffix == ".csv":
            builder = "csv"
        else:
            raise ValueError(f"unsupported file type {suffix!r}: use .jsonl, .json or .csv")
        data = datasets.load_dataset(builder, data_files=str(path), split="train")
        return cls.from_hf(
            data,
            prompt_column=prompt_column,
            answer_column=answer_column,
            name=name or path.stem,
        )

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.data[index]

    def __repr__(self) -> str:
        return f"CapabilityDataset(name={self.name!r}, n={len(self)})"

    @property
    def prompts(self) -> list[str]:
        """All prompts, in order."""
        return self._column("prompt")

    @property
    def answers(self) -> list[str]:
        """All answers, in order."""
        return self._column("answer")

    def _column(self, name: str) -> list[str]:
        # Read through Arrow (indices of select / shuffle applied): iterating the datasets
        # column formats one row at a time, 50x slower at 10,000 samples.
        return self.data.with_format("arrow")[name].to_pylist()

    @property
    def subjects(self) -> list[str] | None:
        """Each sample's subject (a substring of its prompt), or ``None`` when the dataset has
        no ``subject`` column."""
        if "subject" not in self.data.column_names:
            return None
        return self._column("subject")

    @property
    def is_multiple_choice(self) -> bool:
        """Whether the dataset has ``choices`` and ``label`` columns."""
        return {"choices", "label"} <= set(self.data.column_names)

    def select(self, indices: Sequence[int]) -> CapabilityDataset:
        """The samples at ``indices``, as a new dataset with the same name."""
        return CapabilityDataset(self.data.select(list(indices)), self.name)

    def shuffle(self, seed: int = 0) -> CapabilityDataset:
        """A deterministically shuffled copy."""
        return CapabilityDataset(self.data.shuffle(seed=seed), self.name)

    def split(self, fraction: float = 0.5, seed: int = 0) -> tuple[CapabilityDataset, ...]:
        """Two disjoint random parts, the first holding ``fraction`` of the samples."""
        if not 0 < fraction < 1 or len(self) < 2:
            raise ValueError("split needs 0 < fraction < 1 and at least 2 samples")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        cut = min(max(1, round(fraction * len(self))), len(self) - 1)
        return self.select(order[:cut].tolist()), self.select(order[cut:].tolist())

    def to_jsonl(self, path: str | Path) -> None:
        """Writes the dataset as JSON lines (readable by
        [`from_file`][tl_capability.data.CapabilityDataset.from_file])."""
        with open(path, "w") as f:
            for row in self.data:
                f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------- tokenization


@dataclass(frozen=True)
class TokenizedSample:
    """One sample's token ids: ``prompt`` includes the BOS token when the model uses one.

    For a masked LM, ``prompt`` is the whole input (the answer's tokens replaced by mask
    tokens) and ``slots`` are the positions of those masks, one per answer token.
    """

    prompt: tuple[int, ...]
    answer: tuple[int, ...]
    slots: tuple[int, ...] | None = None

    @property
    def input_length(self) -> int:
        """Length of the input: ``prompt ⊕ answer[:-1]`` (teacher forcing), or the masked
        LM's whole input."""
        if self.slots is not None:
            return len(self.prompt)
        return len(self.prompt) + len(self.answer) - 1


def model_tokenizer(model: Any) -> Any:
    """The model's tokenizer, or a clear error when it has none."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "the model has no tokenizer, so text cannot be tokenized; build it with one "
            "(e.g. TransformerBridge.boot_native(cfg, tokenizer=...))"
        )
    return tokenizer


def prepends_bos(model: Any) -> bool:
    """Whether prompts get the model's BOS token (TransformerLens's ``default_prepend_bos``)."""
    return bool(getattr(model.cfg, "default_prepend_bos", True)) and (
        getattr(model_tokenizer(model), "bos_token_id", None) is not None
    )


def _as_tokenizer(model_or_tokenizer: Any) -> Any:
    """The tokenizer of a model (anything with a ``cfg``), or the argument itself."""
    if hasattr(model_or_tokenizer, "cfg"):
        return model_tokenizer(model_or_tokenizer)
    return model_or_tokenizer


def answer_token_mismatches(model_or_tokenizer: Any, dataset: CapabilityDataset) -> list[int]:
    """The indices of the samples whose text the tokenizer splits differently as one string
    than as prompt and answer apart.

    Teacher forcing reads ``tokens(prompt) ⊕ tokens(answer)``; when
    ``tokens(prompt + answer)`` differs (a BPE merge across the boundary, an answer written
    without the space the tokenizer puts before a word), the model is scored on tokens it
    would never see in running text.

    Args:
        model_or_tokenizer: A model with a tokenizer, or a Hugging Face tokenizer.
        dataset: The samples.
    """
    tokenizer = _as_tokenizer(model_or_tokenizer)
    prompts, answers = dataset.prompts, dataset.answers
    joint = _encode(tokenizer, [p + a for p, a in zip(prompts, answers, strict=True)])
    apart = zip(_encode(tokenizer, prompts), _encode(tokenizer, answers), strict=True)
    return [i for i, ((p, a), j) in enumerate(zip(apart, joint, strict=True)) if p + a != j]


def check_answer_tokens(model_or_tokenizer: Any, dataset: CapabilityDataset) -> None:
    """Checks that every sample's prompt and answer tokenize apart as they do together (see
    [`answer_token_mismatches`][tl_capability.data.answer_token_mismatches]).

    Args:
        model_or_tokenizer: A model with a tokenizer, or a Hugging Face tokenizer.
        dataset: The samples.

    Raises:
        ValueError: Naming the first sample (index, prompt and answer) whose tokens differ,
            with both tokenizations.
    """
    bad = answer_token_mismatches(model_or_tokenizer, dataset)
    if not bad:
        return
    tokenizer = _as_tokenizer(model_or_tokenizer)
    i = bad[0]
    prompt, answer = dataset[i]["prompt"], dataset[i]["answer"]

    def pieces(text: str) -> list[str]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return tokenizer.convert_ids_to_tokens(ids)

    raise ValueError(
        f"sample {i} (prompt {prompt!r}, answer {answer!r}) of {dataset.name or 'the dataset'}: "
        f"prompt + answer tokenizes to {pieces(prompt + answer)}, but prompt and answer apart "
        f"to {pieces(prompt)} + {pieces(answer)}, so teacher forcing would read tokens the model "
        f"never sees in running text ({len(bad)} of {len(dataset)} samples differ); write the "
        "answer as the text continues (a leading space before a word) or end the prompt "
        "elsewhere"
    )


def tokenize(model: Any, dataset: CapabilityDataset) -> list[TokenizedSample]:
    """Tokenizes every sample for ``model``.

    Raises:
        ValueError: Naming the first sample whose answer tokenizes to nothing, whose
            teacher-forced input is longer than the model's context (``cfg.n_ctx``), or whose
            text has characters that the tokenizer maps to its unknown token.

    Masked (BERT-style) LMs read the answer at mask tokens instead (see
    ``_tokenize_masked``).
    """
    tokenizer, masked = model_tokenizer(model), is_masked_lm(model)
    key = (
        id(dataset.data),
        getattr(dataset.data, "_fingerprint", None),
        prepends_bos(model),
        getattr(model.cfg, "n_ctx", None),
        masked,
        _tokenizer_state(tokenizer),
    )
    known = _TOKENIZED.get(dataset)
    if known is not None and known[0] == key and known[1]() is tokenizer:
        return list(known[2])
    if masked:
        samples = _tokenize_masked(model, dataset)
    else:
        with _no_gc():
            samples = _tokenize_causal(model, dataset)
    with suppress(TypeError):  # a tokenizer that cannot be referenced weakly: not kept
        _TOKENIZED[dataset] = (key, weakref.ref(tokenizer), samples)
    return list(samples)


def _tokenizer_state(tokenizer: Any) -> tuple:
    """What of a tokenizer edited in place changes token ids: its size (added tokens split text
    differently) and its special tokens. Edits to a backend's normaliser or pre-tokenizer are not
    seen: tokenize a new dataset object after such an edit."""
    try:
        size = len(tokenizer)
    except TypeError:
        size = None
    names = ("bos", "eos", "unk", "pad", "mask", "cls", "sep")
    return (size, *(getattr(tokenizer, f"{name}_token_id", None) for name in names))


# The last tokenization of each dataset (for the tokenizer, BOS rule, context and kind of model
# it was made for): experiments and user loops measure the same data hundreds of times
# (`with ablate(...): accuracy(model, data)`), and tokenizing is most of such a call on small
# models. Keyed weakly by the dataset, whose rows never change (`select`, `shuffle` make new
# ones); its `data` replaced, another tokenizer, or one whose size or special tokens were
# changed in place means tokenizing again.
_TOKENIZED: weakref.WeakKeyDictionary[CapabilityDataset, tuple[tuple, Any, list]] = (
    weakref.WeakKeyDictionary()
)


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pauses the cyclic garbage collector: building tens of thousands of small tuples (which
    hold no cycles) otherwise triggers collection after collection, and half of tokenizing
    10,000 samples went to it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _tokenize_causal(model: Any, dataset: CapabilityDataset) -> list[TokenizedSample]:
    tokenizer = model_tokenizer(model)
    texts = dataset.prompts, dataset.answers  # each column read once: see _checked
    prompts, answers = (_encode(tokenizer, column) for column in texts)
    bos = (tokenizer.bos_token_id,) if prepends_bos(model) else ()
    n_ctx = getattr(model.cfg, "n_ctx", None)
    out = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        if unk is not None and (unk in p or unk in a):
            _refuse_unknown(tokenizer, i, texts, p, a)
        sample = _checked(TokenizedSample(bos + tuple(p), tuple(a)), i, texts, n_ctx)
        if not sample.prompt:
            raise ValueError(f"sample {i}: the prompt is empty and the model has no BOS token")
        out.append(sample)
    return out


def _encode(tokenizer: Any, texts: Sequence[str], chunk: int = 1024) -> list[list[int]]:
    """Token ids of every text, encoded ``chunk`` texts at a time (one call on 10,000 texts
    took 3x longer per text than calls of 1,000 with the zoo's tokenizer)."""
    ids: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        ids += tokenizer(list(texts[start : start + chunk]), add_special_tokens=False)["input_ids"]
    return ids


def _refuse_unknown(
    tokenizer: Any,
    i: int,
    texts: tuple[Sequence[str], Sequence[str]],
    prompt_ids: Sequence[int],
    answer_ids: Sequence[int],
) -> None:
    """Raises when the ``i``-th sample's tokens hold the tokenizer's unknown token and its
    text does not spell that token out: characters the tokenizer does not know would
    otherwise be scored as whatever the unknown token is (the zoo's is ``<pad>``). Tokenizers
    without an unknown token (byte-level BPE) pass.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return
    literal = str(getattr(tokenizer, "unk_token", None) or "")
    for part, text, ids in (
        ("prompt", texts[0][i], prompt_ids),
        ("answer", texts[1][i], answer_ids),
    ):
        if unk not in ids or (literal and literal in text):
            continue
        chars = sorted(
            c for c in set(text) if unk in tokenizer(c, add_special_tokens=False)["input_ids"]
        )
        listed = ", ".join(repr(c) for c in chars) if chars else "some of its characters"
        raise ValueError(
            f"sample {i} ({texts[0][i][:40]!r}): the {part} has characters the tokenizer does "
            f"not know ({listed}); it would read them as its unknown token {literal!r}. "
            "Remove or replace them."
        )


def _checked(
    sample: TokenizedSample,
    i: int,
    texts: tuple[Sequence[str], Sequence[str]],
    n_ctx: int | None,
) -> TokenizedSample:
    """``sample`` (the ``i``-th), unless its answer is empty or it does not fit the context.

    ``texts`` are the dataset's prompts and answers, read once by the caller (reading
    ``dataset.prompts`` here would materialise the whole column for every sample).
    """
    where = f"sample {i} ({texts[0][i][:40]!r})"
    if not sample.answer:
        raise ValueError(f"{where}: answer {texts[1][i]!r} tokenizes to no tokens")
    if n_ctx is not None and sample.input_length > n_ctx:
        raise ValueError(
            f"{where} needs {sample.input_length} positions but the model's context is "
            f"{n_ctx} tokens"
        )
    return sample


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


def _tokenize_masked(model: Any, dataset: CapabilityDataset) -> list[TokenizedSample]:
    """Masked-LM samples, as in knowledge-neuron work on BERT: ``[CLS] prompt [SEP]`` with the
    answer's tokens replaced by mask tokens, at the tokenizer's mask token in the prompt when it
    has one (``"Paris is the capital of [MASK]."``), else at the end of the prompt. Every mask
    is predicted at once (no teacher forcing between them)."""
    tokenizer = model_tokenizer(model)
    mask_id, mask_text = tokenizer.mask_token_id, tokenizer.mask_token
    if mask_id is None:
        raise ValueError("this masked LM's tokenizer has no mask token")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    texts = dataset.prompts, dataset.answers
    answers = tokenizer(texts[1], add_special_tokens=False)["input_ids"]
    cls = (tokenizer.cls_token_id,) if tokenizer.cls_token_id is not None else ()
    sep = (tokenizer.sep_token_id,) if tokenizer.sep_token_id is not None else ()
    out = []
    for i, (prompt, answer) in enumerate(zip(texts[0], answers, strict=True)):
        before, found, after = prompt.partition(mask_text)
        if found and mask_text in after:
            raise ValueError(f"sample {i}: the prompt has more than one {mask_text!r}")
        left = tuple(tokenizer(before, add_special_tokens=False)["input_ids"])
        right = tuple(tokenizer(after, add_special_tokens=False)["input_ids"]) if found else ()
        _refuse_unknown(tokenizer, i, texts, left + right, answer)
        ids = (*cls, *left, *(mask_id,) * len(answer), *right, *sep)
        start = len(cls) + len(left)
        slots = tuple(range(start, start + len(answer)))
        out.append(_checked(TokenizedSample(ids, tuple(answer), slots), i, texts, n_ctx))
    return out


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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
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
