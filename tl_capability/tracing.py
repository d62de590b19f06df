"""Causal tracing (Meng et al., NeurIPS 2022, ROME): which hidden states carry a fact.

Per fact: ``high``, ``P(answer)`` clean; ``low``, with Gaussian noise on the subject tokens'
embeddings; and the scores, corrupted with one clean state put back at (token, layer): the
block's output (``kind=None``), or the MLP (``"mlp"``) or attention (``"attn"``) output over
``window`` layers centred on the layer (ROME's ``trace_important_window``: ``l - 5 … l + 4`` for
``window=10``, cut at the ends). A score is ``P(answer's first token)`` at the last position,
averaged over the noise samples. As ROME's ``causal_trace.py``: the noise's std is ``noise`` (its
``s3``: 3) times the scalar std of the subject tokens' embeddings
([`embedding_std`][tl_capability.tracing.embedding_std]), on the token embeddings only
(``hook_embed``, not GPT-2's position embeddings); a ``numpy.random.RandomState(seed)``, seeded
again per fact, draws the ``samples`` vectors every restoration of the fact sees; the subject's
tokens are those overlapping its first occurrence in the prompt (``find_token_range``).

One pass gives the clean states and ``low``; the restorations run in batches of ``samples`` rows
each (a row restores its own (token, layer) through one hook per layer), read at the last
position only (``_answer_head.answer_logits``). A token before the subject
has the same state clean and corrupted (causal attention): its scores are ``low``, with no pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.utilities import get_act_name

from tl_capability._answer_head import answer_logits
from tl_capability.data import CapabilityDataset, TokenizedSample, tokenize
from tl_capability.masks import NeuronMask
from tl_capability.options import check_positive_int
from tl_capability.sites import is_masked_lm, model_device, model_name, require_eval
from tl_capability.tables import Row, Table
from tl_capability.tracing_subjects import EMBED_HOOK, embedding_std, subject_ranges

__all__ = [
    "EMBED_HOOK",
    "CausalTrace",
    "TraceKind",
    "TraceRow",
    "causal_trace",
    "embedding_std",
    "subject_ranges",
    "trace_hook_name",
    "window_layers",
]

TraceKind = Literal["mlp", "attn"]
"""The outputs [`causal_trace`][tl_capability.tracing.causal_trace] restores, or ``None``."""


_HOOKS = {None: "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


def trace_hook_name(layer: int, kind: TraceKind | None = None) -> str:
    """``blocks.{layer}.hook_resid_post`` (``kind=None``), ``hook_mlp_out`` or ``hook_attn_out``."""
    return get_act_name(_HOOKS[kind], layer)


def window_layers(layer: int, n_layers: int, window: int) -> range:
    """The ``window`` layers centred on ``layer``, cut at the ends (``trace_important_window``)."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


@dataclass(frozen=True)
class TraceRow(Row):
    """One fact and layer, restored at the last subject token.

    Attributes:
        fact: The fact's index in the dataset.
        subject: Its subject.
        layer: The layer (the window's centre for ``"mlp"`` / ``"attn"``).
        score: ``P(answer)`` with that state restored (mean over the noise samples).
        effect: The indirect effect, ``score - low``.
    """

    fact: int
    subject: str
    layer: int
    score: float
    effect: float


@dataclass(frozen=True, eq=False)
class CausalTrace(Table):
    """What [`causal_trace`][tl_capability.tracing.causal_trace] measured.

    Attributes:
        rows: One row per fact and layer at the fact's last subject token.
        kind: What was restored: ``None`` (the block's output), ``"mlp"`` or ``"attn"``.
        scores: Per fact, ``[tokens, layers]``: ``P(answer)`` with the state at (token, layer)
            restored, mean over the noise samples.
        high: ``[fact]``: the clean ``P(answer)``.
        low: ``[fact]``: ``P(answer)`` corrupted, nothing restored (mean over the samples).
        subject_ranges: Per fact, ``(first, end)``: its subject's token positions (BOS counted).
        tokens: Per fact, its prompt's tokens as text (for figures).
        answers: Per fact, the answer's first token as text (the token scored).
        samples: Noise samples per fact.
        noise: The noise multiplier (of ``embedding_std``).
        window: Layers restored per MLP / attention restoration.
        seed: The noise seed.
        embedding_std: The scalar std of the subject tokens' embeddings that ``noise`` scales.
        d_mlp: Neurons per layer (for [`mask`][tl_capability.tracing.CausalTrace.mask]).
        model_name: The model's name, when known.
    """

    kind: TraceKind | None
    scores: tuple[Float[Tensor, "token layer"], ...]
    high: Float[Tensor, " fact"]
    low: Float[Tensor, " fact"]
    subject_ranges: tuple[tuple[int, int], ...]
    tokens: tuple[tuple[str, ...], ...]
    answers: tuple[str, ...]
    samples: int
    noise: float
    window: int
    seed: int
    embedding_std: float
    d_mlp: int
    model_name: str | None

    @property
    def noise_std(self) -> float:
        """The std of the noise added: ``noise * embedding_std``."""
        return self.noise * self.embedding_std

    @property
    def indirect_effects(self) -> Float[Tensor, "fact layer"]:
        """Per fact and layer: ``score - low`` at the fact's last subject token."""
        last = [s[end - 1] for s, (_, end) in zip(self.scores, self.subject_ranges, strict=True)]
        return torch.stack(last) - self.low[:, None]

    @property
    def aie(self) -> Float[Tensor, " layer"]:
        """Average indirect effect per layer at the last subject token (mean over facts)."""
        return self.indirect_effects.mean(0)

    @property
    def aie_peak(self) -> int:
        """The layer of the largest [`aie`][tl_capability.tracing.CausalTrace.aie]."""
        return int(self.aie.argmax())

    @property
    def total_effects(self) -> Float[Tensor, " fact"]:
        """Per fact: ``high - low``."""
        return self.high - self.low

    @property
    def total_effect(self) -> float:
        """The average total effect, ``mean(high - low)`` (ROME's TE)."""
        return float(self.total_effects.mean())

    @property
    def located(self) -> tuple[int, ...]:
        """Per fact, the layer of the largest indirect effect at the last subject token (the
        MLP that ROME would edit, with ``kind="mlp"``)."""
        return tuple(int(i) for i in self.indirect_effects.argmax(1))

    def mask(self, fact: int) -> NeuronMask:
        """The located parameter of ``fact`` as a neuron set: every neuron (row of ``W_out``)
        of its [`located`][tl_capability.tracing.CausalTrace.located] layer's MLP, for
        fidelity, reliability and the interventions that take knowledge neurons."""
        layer = self.located[fact]
        tensor = torch.zeros(self.scores[0].shape[1], self.d_mlp, dtype=torch.bool)
        tensor[layer] = True
        selection = {"method": "causal_trace", "kind": self.kind, "fact": fact, "layer": layer}
        return NeuronMask(tensor, model_name=self.model_name, selection=selection)

    @property
    def masks(self) -> tuple[NeuronMask, ...]:
        """[`mask`][tl_capability.tracing.CausalTrace.mask] of every fact, in order."""
        return tuple(self.mask(i) for i in range(len(self.scores)))


def _check(kind: Any, noise: Any, seed: Any, **positive: Any) -> None:
    if kind not in _HOOKS:
        raise ValueError(f"kind must be None, 'mlp' or 'attn'; got {kind!r}")
    for name, value in positive.items():
        check_positive_int(value, name)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32); got {seed!r}")
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not 0 < noise < math.inf:
        raise ValueError(f"noise must be a positive finite number; got {noise!r}")


def _trace_fact(
    model: Any,
    sample: TokenizedSample,
    span: tuple[int, int],
    noise: Float[Tensor, "sample subject d_model"],
    kind: TraceKind | None,
    window: int,
    batch_size: int,
) -> tuple[Float[Tensor, "token layer"], float, float]:
    """One fact's ``[tokens, layers]`` scores, ``high`` and ``low``."""
    device, n_layers, n_pos = model_device(model), model.cfg.n_layers, len(sample.prompt)
    (first, end), samples = span, len(noise)
    tokens, clean = torch.tensor([sample.prompt], device=device), []

    def probability(n_rows: int, hooks: list, n_clean: int = 0) -> Float[Tensor, " row"]:
        """P(answer) of each row of a pass whose rows after the first ``n_clean`` are noised."""

        def corrupt(x: Tensor, hook: Any) -> Tensor:
            x = x.clone()
            x[n_clean:, first:end] += noise.to(x).repeat((n_rows - n_clean) // samples, 1, 1)
            return x

        at = torch.arange(n_rows, device=device)
        batch = tokens.expand(n_rows, -1)
        logits = answer_logits(
            model, batch, at, at * 0 + n_pos - 1, [(EMBED_HOOK, corrupt), *hooks]
        )
        return logits.float().softmax(-1)[:, sample.answer[0]].cpu()

    def keep(x: Tensor, hook: Any) -> None:
        clean.append(x[0].clone())

    names = [trace_hook_name(layer, kind) for layer in range(n_layers)]
    p = probability(samples + 1, [(name, keep) for name in names], n_clean=1)
    if len(clean) != n_layers:
        raise ValueError(f"the hook points {names[0]!r}, ... did not run once per pass each")
    high, low, states = float(p[0]), float(p[1:].mean()), torch.stack(clean)
    scores = torch.full((n_pos, n_layers), low)  # tokens before the subject: no pass
    pairs = [(t, layer) for t in range(first, n_pos) for layer in range(n_layers)]
    step = max(1, batch_size // samples)
    for at in range(0, len(pairs), step):
        chunk, put = pairs[at : at + step], {}
        for k, (t, layer) in enumerate(chunk):
            for j in [layer] if kind is None else window_layers(layer, n_layers, window):
                put.setdefault(j, []).append((k, t))
        hooks = [
            (names[j], _restore(torch.tensor(kt), samples, states[j])) for j, kt in put.items()
        ]
        index = torch.tensor(chunk)
        scores[index[:, 0], index[:, 1]] = (
            probability(len(chunk) * samples, hooks).view(-1, samples).mean(1)
        )
    return scores, high, low


def _restore(where: Tensor, samples: int, clean: Float[Tensor, "pos d_model"]) -> Callable:
    """A hook that puts ``clean[t]`` back at token ``t`` of the ``samples`` rows of every
    restoration ``k``, for each ``(k, t)`` of ``where``."""
    rows = (where[:, :1] * samples + torch.arange(samples)).flatten().to(clean.device)
    positions = where[:, 1].repeat_interleave(samples).to(clean.device)

    def hook(x: Tensor, hook: Any) -> Tensor:
        x = x.clone()
        x[rows, positions] = clean[positions].to(x)
        return x

    return hook


@torch.no_grad()
def causal_trace(
    model: Any,
    facts: CapabilityDataset,
    kind: TraceKind | None = None,
    samples: int = 10,
    noise: float = 3.0,
    window: int = 10,
    seed: int = 0,
    *,
    batch_size: int = 512,
    std: float | None = None,
) -> CausalTrace:
    """Causal tracing of every fact: ``P(answer)`` with the subject's embeddings corrupted and
    one clean state restored, for every token and layer.

    Args:
        model: A causal TransformerLens model (3.x ``HookedTransformer``, 4.x
            ``TransformerBridge``) in eval mode, with a tokenizer.
        facts: Prompts, answers (the first token is scored) and subjects
            (``CapabilityDataset.from_pairs(prompts, answers, subjects=[...])``).
        kind: ``None``: the residual stream after each block (``blocks.{l}.hook_resid_post``);
            ``"mlp"`` / ``"attn"``: the MLP / attention output (``hook_mlp_out`` /
            ``hook_attn_out``) over ``window`` layers centred on each layer.
        samples: Noise samples per fact (ROME: 10).
        noise: The noise's std in units of the subject embeddings' std (ROME's ``s3``: 3.0).
        window: Layers restored at once for ``"mlp"`` and ``"attn"`` (ROME: 10).
        seed: Seed of the ``numpy.random.RandomState`` drawing each fact's noise.
        batch_size: Rows (restorations × samples) per pass; at least one restoration a pass.
        std: The embeddings' std that ``noise`` multiplies; default
            [`embedding_std`][tl_capability.tracing.embedding_std] of ``facts`` (give one
            measured on more subjects to trace subsets on one scale).

    Returns:
        Per fact, the ``[tokens, layers]`` scores, ``high`` and ``low``; the average indirect
        effect per layer, the total effect, the located layers and their neuron sets.

    Raises:
        ValueError: For an unknown ``kind``; ``samples``, ``window`` or ``batch_size`` not a
            positive integer; ``noise`` or ``std`` not positive and finite; a model in training
            mode or a masked LM; a fact without subject, whose subject matches no token, or too
            long for the context (named).
    """
    _check(kind, noise, seed, samples=samples, window=window, batch_size=batch_size)
    if not isinstance(facts, CapabilityDataset):
        raise TypeError(f"facts must be a CapabilityDataset; got {type(facts).__name__}")
    if len(facts) == 0:
        raise ValueError("no facts to trace")
    require_eval(model)
    if is_masked_lm(model):
        raise ValueError("causal tracing reads the next token at the last position: causal LMs")
    ranges = subject_ranges(model, facts)
    if std is None:
        std = embedding_std(model, facts)
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"the embeddings' std must be positive and finite; got {std}")
    tokenizer, tokenized, traced = model.tokenizer, tokenize(model, facts), []
    for sample, (first, end) in zip(tokenized, ranges, strict=True):
        rng = np.random.RandomState(seed)  # seeded again per fact, as ROME per call
        draw = torch.from_numpy(rng.randn(samples, end - first, model.cfg.d_model) * (noise * std))
        traced.append(_trace_fact(model, sample, (first, end), draw, kind, window, batch_size))
    scores, high, low = zip(*traced, strict=True)
    rows = [
        TraceRow(i, subject, layer, float(score), float(score) - low[i])
        for i, subject in enumerate(facts.subjects or [])
        for layer, score in enumerate(scores[i][ranges[i][1] - 1])
    ]
    label = {None: "hidden state", "mlp": "MLP", "attn": "attention"}[kind]
    return CausalTrace(
        title=f"Causal trace ({label}) at the last subject token",
        rows=tuple(rows),
        kind=kind,
        scores=tuple(scores),
        high=torch.tensor(high),
        low=torch.tensor(low),
        subject_ranges=tuple(ranges),
        tokens=tuple(tuple(tokenizer.decode([t]) for t in s.prompt) for s in tokenized),
        answers=tuple(tokenizer.decode([s.answer[0]]) for s in tokenized),
        samples=int(samples),
        noise=float(noise),
        window=int(window),
        seed=int(seed),
        embedding_std=std,
        d_mlp=model.cfg.d_mlp,
        model_name=model_name(model),
    )
