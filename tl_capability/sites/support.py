"""What a model supports, found out by short forward passes and kept per model: the key/value
cache path ([`supports_kv_cache`][tl_capability.sites.supports_kv_cache]), whether the MLP output
adds linearly ([`mlp_output_adds_linearly`][tl_capability.sites.mlp_output_adds_linearly]), and
whether the cache path may run under the hooks attached.
Part of [`tl_capability.sites`][tl_capability.sites]."""

from __future__ import annotations

import warnings
from typing import Any
from weakref import WeakKeyDictionary

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_capability.sites.hooks_attached import (
    ProbeMemo,
    hooks_are_position_free,
    kept_until_hooks_change,
    known_until_hooks_change,
    record_until_hooks_change,
)
from tl_capability.sites.names import (
    final_resid_hook_name,
    is_masked_lm,
    model_device,
    neuron_hook_name,
    resid_post_hook_name,
    run_until,
)
from tl_capability.sites.weights import mlp_w_out


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a ``TransformerBridge``: it wraps another model as
    ``original_model`` and runs that model's own forward pass (which builds its attention mask
    from the batch it is given), where ``HookedTransformer`` builds one per position."""
    return hasattr(model, "original_model")


def kv_cache_forward(
    model: Any, tokens: Int[Tensor, "batch pos"]
) -> tuple[Float[Tensor, "batch pos vocab"], Any]:
    """One forward pass that also returns the Hugging Face key/value cache it filled
    (``None`` for a model that filled none)."""
    return model(tokens, use_cache=True, return_type="logits_and_cache")


def new_kv_cache(model: Any) -> Any:
    """An empty ``DynamicCache`` for ``model``'s Hugging Face decoder, of the kind its own
    forward pass would create (sliding-window layers where its config asks for them). Passed as
    ``past_key_values``, it is filled in place, so a pass stopped after the last block leaves it
    complete without computing the logits."""
    from transformers import DynamicCache

    return DynamicCache(config=model.original_model.config)


def attention_window(model: Any) -> int | None:
    """The narrowest local-attention window of ``model``'s Hugging Face decoder: a position
    attends to at most this many positions, itself included (``None``: every layer sees the whole
    prefix, or ``model`` is no bridge).

    Read from the config: ``sliding_window`` (Mistral, Gemma 2/3, Qwen2 with
    ``use_sliding_window``, Cohere2, OLMo 3, ...; ignored where ``layer_types`` names no sliding
    layer) and GPT-Neo's ``window_size`` (where ``attention_layers`` has a ``"local"`` layer).
    GPT-Neo masks its local layers by the index of a query in the sequence it is given, not by
    its position id, so rows appended after a cached prefix see the wrong window once the prefix
    and the rows together outgrow it (see ``attribution._rows.clean_pass``).
    """
    config = getattr(getattr(model, "original_model", None), "config", None)
    if config is None:
        return None
    windows = []
    sliding = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or ["sliding"]
    if (
        isinstance(sliding, int)
        and getattr(config, "use_sliding_window", True) is not False
        and any("sliding" in str(kind) for kind in layer_types)
    ):
        windows.append(sliding)
    local = getattr(config, "window_size", None)
    kinds = getattr(config, "attention_layers", None)
    if isinstance(local, int) and (kinds is None or "local" in kinds):
        windows.append(local)
    return min(windows) if windows else None


def supports_kv_cache(model: Any) -> bool:
    """Whether ``model`` takes the fast, exact cached path of
    attribution's rows (``attribution._rows``): a bridge over a Hugging Face causal decoder whose
    cache is a ``DynamicCache``; other models take the general path.

    The structural part is decided without running the model: a bridge
    ([`is_bridge`][tl_capability.sites.is_bridge]) over a ``transformers.PreTrainedModel`` (not a
    native TransformerLens model), neither an encoder-decoder nor a masked LM (bidirectional: a
    row's change reaches every position). Which cache class a Hugging Face model fills is decided
    inside its forward pass (linear attention, state-space and hybrid models fill their own; no
    public attribute says which), so a two-token pass
    ([`kv_cache_forward`][tl_capability.sites.kv_cache_forward]) looks, and a third token run over
    that cache must give the logits of the full pass (else a warning, and the general path). Only
    a ``TypeError`` (a forward that takes no ``use_cache``) or ``NotImplementedError`` (an adapter
    without cache support) of that pass means "no"; anything else, e.g. a ``RuntimeError`` such as
    running out of memory, is a model that cannot run and propagates instead of silently choosing
    the slow path.
    """
    known = _KV_CACHE.get(model)
    if known is None:
        known = _KV_CACHE[model] = _probe_kv_cache(model)
    return known


def resolve_use_cache(model: Any, use_cache: bool | None) -> bool:
    """``use_cache`` as asked; ``None`` means
    [`supports_kv_cache`][tl_capability.sites.supports_kv_cache] while no hook of the user's is
    attached that is not [`position_free`][tl_capability.sites.position_free] (see
    [`hooks_are_position_free`][tl_capability.sites.hooks_are_position_free]; else a warning,
    and the general path).

    Cached rows are tokens at other indices of other sequences than the positions they stand
    for (their position ids are right, the tensors' indices are not), so a hook that reads or
    edits chosen positions (``act[:, 3:] += v``) would act on the wrong entries there. The
    hooks are looked at first: the cache probe, kept per model, must not run under them.

    Raises:
        ValueError: ``use_cache=True`` on a model without the cached path.
    """
    if use_cache is None:
        if not hooks_are_position_free(model):
            if is_bridge(model):  # elsewhere there is no cached path to leave
                warnings.warn(
                    "a hook attached to the model is not marked position-free: cached rows sit "
                    "at other indices than the positions they stand for, so rows take the "
                    "general path (the same numbers, more slowly). If your hooks act on every "
                    "position alike, mark them with tl_capability.position_free(fn), or pass "
                    "use_cache=True",
                    stacklevel=3,
                )
            return False
        return supports_kv_cache(model)
    if use_cache and not supports_kv_cache(model):
        raise ValueError(
            "use_cache=True needs a TransformerBridge over a Hugging Face decoder whose key/value "
            "cache, under the cached rows' 4-D mask, reproduces its full pass "
            "(tl_capability.sites.supports_kv_cache is False for this model)"
        )
    return bool(use_cache)


def kv_cache_known(model: Any) -> bool | None:
    """What [`supports_kv_cache`][tl_capability.sites.supports_kv_cache] found out about
    ``model`` (``None``: not yet asked, nor
    [`record_kv_cache`][tl_capability.sites.record_kv_cache]ed)."""
    return _KV_CACHE.get(model)


def record_kv_cache(model: Any, supported: bool, *, warn: bool = False) -> None:
    """Keeps a verdict on ``model``'s cached path that a caller's own passes reached (the same
    checks as [`supports_kv_cache`][tl_capability.sites.supports_kv_cache]'s probe, on the
    caller's data); with ``warn``, the probe's warning for a cache that does not reproduce the
    full pass."""
    if warn:
        _warn_inexact_cache(stacklevel=4)
    _KV_CACHE[model] = supported


def may_have_kv_cache(model: Any) -> bool:
    """The structural part of [`supports_kv_cache`][tl_capability.sites.supports_kv_cache],
    decided without running the model: a bridge over a Hugging Face decoder, neither an
    encoder-decoder nor a masked LM."""
    return (
        is_bridge(model)
        and _is_hf_model(model.original_model)
        and not getattr(model.cfg, "is_encoder_decoder", False)
        and not is_masked_lm(model)
    )


def own_cache_verdict(model: Any, cache: Any, width: int) -> bool | None:
    """The first part of [`supports_kv_cache`][tl_capability.sites.supports_kv_cache]'s probe on
    the cache a full pass of ``width`` tokens filled
    ([`kv_cache_forward`][tl_capability.sites.kv_cache_forward]): ``False`` (kept) for a cache of
    another class than ``DynamicCache`` or one left unfilled (with the probe's warning), ``None``
    where a sliding-window layer kept its window only (these tokens cannot decide), ``True``
    where the rows over it remain to be checked."""
    if type(cache).__name__ != "DynamicCache" or not hasattr(cache, "layers"):
        record_kv_cache(model, False)
        return False
    if not all(layer.keys is not None for layer in cache.layers):
        _warn_inexact_cache(stacklevel=5)
        record_kv_cache(model, False)
        return False
    if any(layer.keys.shape[-2] != width for layer in cache.layers):
        return None
    return True


def _probe_kv_cache(model: Any) -> bool:
    if not may_have_kv_cache(model):
        return False
    tokens = torch.tensor([[0, 1, 2]], device=model_device(model)) % model.cfg.d_vocab
    try:
        with torch.no_grad():
            out = kv_cache_forward(model, tokens[:, :2])
    except (TypeError, NotImplementedError):
        return False
    cache = out[1] if isinstance(out, tuple) else None
    if type(cache).__name__ != "DynamicCache" or not hasattr(cache, "layers"):
        return False
    # The cache must also be *used*: a bridge whose attention does not read the cache argument
    # the Hugging Face blocks pass (transformer-lens 4.3 under transformers >= 5.24, which
    # renamed it) leaves it empty, and cached rows would then silently see no prefix. The third
    # token runs as cached rows do (attribution._rows.over_cached_prefix): two copies after the
    # prefix, a 4-D mask letting each see the prefix and itself, both at position 2.
    with torch.no_grad():
        filled = all(layer.keys is not None for layer in cache.layers)
        if filled and cache.get_seq_length() == 2:
            dtype = cache.layers[0].keys.dtype
            allowed = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
            mask = torch.zeros(1, 1, 2, 4, dtype=dtype, device=tokens.device)
            mask.masked_fill_(~allowed.to(tokens.device), torch.finfo(dtype).min)
            kwargs = {
                "past_key_values": cache,
                "attention_mask": mask,
                "position_ids": torch.full((1, 2), 2, device=tokens.device),
            }
            # Final residuals, not logits: the unembedding would read a vocabulary of weights.
            last = final_resid_hook_name(model)
            try:
                rows = run_until(model, last, tokens[:, 2:].expand(1, 2), [], **kwargs)[0].float()
            except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as error:
                if isinstance(error, torch.OutOfMemoryError):
                    raise
                warnings.warn(
                    f"this model's attention does not take a 4-D mask over a key/value cache "
                    f"({type(error).__name__}: {error}); rows take the general path: the same "
                    "numbers, more slowly",
                    stacklevel=3,
                )
                return False
            full = run_until(model, last, tokens, [])[:, -1].float()
            scale = max(float(full.abs().max()), 1.0)
            tol = probe_tolerance(next(model.parameters()).dtype)
            if float((rows - full).abs().max()) <= tol * scale:
                return True
    _warn_inexact_cache(stacklevel=4)
    return False


def _warn_inexact_cache(stacklevel: int) -> None:
    warnings.warn(
        "this model's key/value cache, under the cached rows' 4-D mask and position ids, does "
        "not reproduce its full forward pass (attention biases that follow the keys' indices "
        "rather than the position ids do this, as MPT's ALiBi; so does a transformer-lens / "
        "transformers version mismatch: transformer-lens 4.3 needs transformers < 5.24); rows "
        "take the general path: the same numbers, more slowly",
        stacklevel=stacklevel,
    )


def _is_hf_model(module: Any) -> bool:
    """Whether ``module`` is a Hugging Face ``PreTrainedModel``."""
    from transformers import PreTrainedModel

    return isinstance(module, PreTrainedModel)


# What a forward pass found out about a model, kept per model (weakly, so a model is not kept
# alive): each probe costs a pass that a one-prompt attribution would otherwise pay every call.
_KV_CACHE: WeakKeyDictionary[Any, bool] = WeakKeyDictionary()
_MLP_ADDS_LINEARLY: ProbeMemo = WeakKeyDictionary()


def probe_tolerance(dtype: torch.dtype) -> float:
    """The relative difference a probe accepts between two ways of computing the same numbers:
    1e-4, or 2e-2 in half precision."""
    return 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4


def mlp_output_adds_linearly(model: Any) -> bool:
    """Whether every block adds ``hook_post · W_out`` (plus a constant) to the residual stream,
    so that changing layer ``l``'s post-activations by ``δ`` changes block ``l``'s output by
    exactly ``δ W_out`` (sequential and parallel blocks; not a norm after the MLP, nor a hook
    that bends the MLP's output).

    Probed with a short pass per layer that perturbs that layer's post-activations; the answer
    is kept per model until the hooks attached to it change.
    """
    return kept_until_hooks_change(
        _MLP_ADDS_LINEARLY, model, None, lambda: _probe_mlp_output(model)
    )


def mlp_linearity_known(model: Any) -> bool | None:
    """[`mlp_output_adds_linearly`][tl_capability.sites.mlp_output_adds_linearly]'s answer
    while the hooks it was found under stay; ``None`` where it is still to be found."""
    return known_until_hooks_change(_MLP_ADDS_LINEARLY, model, None)


def record_mlp_linearity(model: Any, answer: bool, signature: tuple[int, ...]) -> None:
    """Keeps ``answer`` as the linearity probe's
    ([`mlp_output_adds_linearly`][tl_capability.sites.mlp_output_adds_linearly]), found by a
    caller's own pass of its test ([`MlpShifts`][tl_capability.sites.MlpShifts]) under hooks of
    ``signature``."""
    record_until_hooks_change(_MLP_ADDS_LINEARLY, model, None, answer, signature)


def _probe_mlp_output(model: Any) -> bool:
    n_layers = model.cfg.n_layers
    names = [(neuron_hook_name(layer), resid_post_hook_name(layer)) for layer in range(n_layers)]
    if any(post not in model.hook_dict or out not in model.hook_dict for post, out in names):
        return False
    # One pass of n_layers + 1 three-token sequences, stopped at the last block: sequence 0
    # runs clean, sequence 1 + l has layer l's post-activations shifted by delta[l], and each
    # block's output is read for every sequence (the weights, what a short pass spends its time
    # reading, are read once, not once per layer).
    tokens = torch.zeros(n_layers + 1, 3, dtype=torch.long, device=model_device(model))
    shifts = MlpShifts(model, 3, first=1)
    seen: dict[int, Tensor] = {}

    def grab(layer: int):
        def hook(resid: Tensor, hook: Any) -> None:
            seen[layer] = resid.detach()

        return hook

    fwd = shifts.hooks() + [(out, grab(layer)) for layer, (_, out) in enumerate(names[:-1])]
    with torch.no_grad():
        seen[n_layers - 1] = run_until(model, names[-1][1], tokens, fwd)
    return shifts.add_linearly(seen, clean=0)


class MlpShifts:
    """The test of [`mlp_output_adds_linearly`][tl_capability.sites.mlp_output_adds_linearly]:
    layer ``l``'s post-activations are shifted by a fixed random ``δ_l`` in sequence
    ``first + l`` (``width`` positions), and that block's output must differ from a clean
    sequence's by ``δ_l W_out`` exactly (to 1e-3).

    ``stacked`` puts ``width`` layers in each sequence instead, layer ``l`` shifted at position
    ``width − 1 − l mod width`` only: a causal model's earlier layers there shift later
    positions, which that position does not see (``n_sequences`` of them, not ``n_layers``; a
    model that is not causal fails the test). ``rows(layer, act, seq, pos)`` may name where the
    shifted positions sit in an activation whose positions a caller packed."""

    def __init__(self, model: Any, width: int, first: int, rows: Any = None, stacked: bool = False):
        gen = torch.Generator().manual_seed(0)
        self.width, self.first, self.rows, self.stacked = width, first, rows, stacked
        n_layers = model.cfg.n_layers
        self.n_sequences = -(-n_layers // width) if stacked else n_layers
        self.names = [neuron_hook_name(layer) for layer in range(n_layers)]
        self.w_outs = [mlp_w_out(model, layer).detach() for layer in range(n_layers)]
        self.deltas = [
            (0.1 * torch.randn(1 if stacked else width, w.shape[0], generator=gen)).to(
                w.device, w.dtype
            )
            for w in self.w_outs
        ]

    def place(self, layer: int) -> tuple[int, int | slice]:
        """The sequence and the position(s) where layer ``layer`` is shifted."""
        if not self.stacked:
            return self.first + layer, slice(None)
        return self.first + layer // self.width, self.width - 1 - layer % self.width

    def hooks(self) -> list:
        """The hooks that shift each layer's post-activations in its own place."""
        return [(name, self._shift(layer)) for layer, name in enumerate(self.names)]

    def _shift(self, layer: int):
        def hook(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()
            where = self.place(layer)
            if self.rows is not None:
                where = self.rows(layer, act, *where)
            act[where] += self.deltas[layer].reshape(act[where].shape)
            return act

        return hook

    def add_linearly(self, seen: dict[int, Tensor], clean: int) -> bool:
        """Whether every block's output ``seen[l]`` (sequences first) differs between layer
        ``l``'s place and the same positions of sequence ``clean`` by ``δ_l W_out``."""
        for layer, (delta, w_out) in enumerate(zip(self.deltas, self.w_outs, strict=True)):
            dtype = seen[layer].dtype
            out = seen[layer].float()
            seq, pos = self.place(layer)
            shifted, base = out[seq, pos], out[clean, pos]
            expected = (delta @ w_out).float().reshape(shifted.shape)
            scale = float(expected.abs().max())
            # Each output is exact to a few of its own ulps, and a residual may carry values 10^5
            # times the change (SmolLM2's first position: 2·10^4 against 0.1), where the change
            # drowns in their rounding; half precision keeps the plain test (it fails there).
            ulps = 8 * torch.finfo(dtype).eps if dtype in (torch.float32, torch.float64) else 0.0
            slack = 1e-3 * expected.abs() + 1e-4 * scale + ulps * (shifted.abs() + base.abs())
            if not bool(((shifted - base - expected).abs() <= slack).all()):
                return False
        return True
