"""Teacher-forced tokenization of a [`CapabilityDataset`][tl_capability.data.CapabilityDataset] for
one model: the prompt with the model's BOS, the answer on its own; masked LMs get mask tokens at
the answer. Each dataset's last tokenization is kept, weakly, per tokenizer, BOS rule and context.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from tl_capability.data.dataset import CapabilityDataset
from tl_capability.sites import is_masked_lm


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
    return _mismatches(
        tokenizer, prompts, answers, _encode(tokenizer, prompts), _encode(tokenizer, answers)
    )


def _mismatches(
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    prompt_ids: list[list[int]],
    answer_ids: list[list[int]],
) -> list[int]:
    """Where the texts' ids (``_encode``'s lists), apart, differ from the ids of prompt +
    answer."""
    joint = _encode(tokenizer, [p + a for p, a in zip(prompts, answers, strict=True)])
    apart = zip(prompt_ids, answer_ids, joint, strict=True)
    return [i for i, (p, a, j) in enumerate(apart) if p + a != j]


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
    if bad:
        raise ValueError(_mismatch_message(_as_tokenizer(model_or_tokenizer), dataset, bad))


def _mismatch_message(tokenizer: Any, dataset: CapabilityDataset, bad: list[int]) -> str:
    """What is wrong with sample ``bad[0]``'s tokens, and how many samples share it."""
    i = bad[0]
    prompt, answer = dataset[i]["prompt"], dataset[i]["answer"]

    def pieces(text: str) -> list:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        to_tokens = getattr(tokenizer, "convert_ids_to_tokens", None)  # ids where none
        return ids if to_tokens is None else to_tokens(ids)

    return (
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

    Warns (``UserWarning``) naming the first sample whose prompt and answer tokenize apart
    otherwise than together (a fact whose answer the tokenizer splits across the prompt's end:
    [`check_answer_tokens`][tl_capability.data.check_answer_tokens] refuses such data).

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
    bad = _mismatches(tokenizer, *texts, prompts, answers)
    if bad:  # a warning: a dataset may mean it so (check_answer_tokens refuses it)
        warnings.warn(_mismatch_message(tokenizer, dataset, bad), UserWarning, stacklevel=3)
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
