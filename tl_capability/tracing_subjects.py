"""Where a fact's subject is and how much noise covers it, for causal tracing: the subject's token
range in each prompt ([`subject_ranges`][tl_capability.tracing.subject_ranges]) and the standard
deviation of the subjects' token embeddings
([`embedding_std`][tl_capability.tracing.embedding_std]), which scales the noise.
[`tl_capability.tracing`][tl_capability.tracing] re-exports both.
"""

from __future__ import annotations

from typing import Any

import torch
from transformer_lens.utilities import get_act_name

from tl_capability.data import CapabilityDataset, prepends_bos, tokenize
from tl_capability.sites import model_device, run_until

EMBED_HOOK = get_act_name("embed")
"""``hook_embed``: the token embeddings (before position embeddings), where noise is added."""


def _token_spans(tokenizer: Any, prompt: str, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """Each token's character span, in the prompt (offset mapping, when the tokenizer gives one
    for these ids) or else in the text of the tokens decoded one prefix at a time."""
    try:
        enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == ids:
            return prompt, [tuple(span) for span in enc["offset_mapping"]]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        pass
    ends = [len(tokenizer.decode(ids[: k + 1])) for k in range(len(ids))]
    return tokenizer.decode(ids), list(zip([0, *ends[:-1]], ends, strict=True))


def subject_ranges(model: Any, facts: CapabilityDataset) -> list[tuple[int, int]]:
    """Each fact's subject tokens, ``(first, end)`` (end exclusive) in its prompt as
    [`tokenize`][tl_capability.data.tokenize] makes it (BOS included): the tokens whose
    characters overlap the subject's first occurrence (offset mapping, else token by token).

    Raises:
        ValueError: For a dataset without subjects, or naming the first fact whose subject is
            not in its prompt or matches no token.
    """
    subjects = facts.subjects
    if subjects is None:
        raise ValueError(
            f"{facts.name or 'the dataset'} has no subject column: causal tracing corrupts each "
            "prompt's subject; give them with CapabilityDataset.from_pairs(..., subjects=[...])"
        )
    tokenizer, samples, out = model.tokenizer, tokenize(model, facts), []
    for i, (prompt, subject) in enumerate(zip(facts.prompts, subjects, strict=True)):
        where = f"fact {i} ({prompt!r}, subject {subject!r})"
        if not isinstance(subject, str) or not subject:
            raise ValueError(f"{where}: no subject given")
        ids, n_bos = list(samples[i].prompt), int(prepends_bos(model))
        text, spans = _token_spans(tokenizer, prompt, ids[n_bos:])
        start = text.find(subject)
        if start < 0:
            raise ValueError(f"{where}: the subject is not in the prompt as its tokens spell it")
        stop = start + len(subject)
        hits = [k for k, (a, b) in enumerate(spans) if a < stop and b > start and b > a]
        if not hits:
            raise ValueError(f"{where}: no token of the prompt matches the subject's characters")
        out.append((n_bos + hits[0], n_bos + hits[-1] + 1))
    return out


@torch.no_grad()
def embedding_std(model: Any, facts: CapabilityDataset) -> float:
    """The scalar std of the subject tokens' embeddings in ``facts``' prompts (ROME's
    ``collect_embedding_std``): the unit of the noise of ``causal_trace``.

    Raises:
        ValueError: As [`subject_ranges`][tl_capability.tracing.subject_ranges].
    """
    device, ranges = model_device(model), subject_ranges(model, facts)
    found = [
        run_until(model, EMBED_HOOK, torch.tensor([sample.prompt], device=device), [])[0, a:b]
        for sample, (a, b) in zip(tokenize(model, facts), ranges, strict=True)
    ]
    return float(torch.cat(found).double().std())
