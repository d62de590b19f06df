"""The model surface: everything the library reads of a TransformerLens model, in one place.

The library codes against the hook surface that TransformerLens 3.x ``HookedTransformer`` and
4.x ``TransformerBridge`` share (``cfg.n_layers``, ``cfg.d_mlp``, ``hook_dict``, ``hooks()``),
so it never subclasses a model class. This module is the only one that knows hook names,
weight names and what a model supports; the others call its functions:

- the neuron hook of every layer ([`neuron_site`][tl_capability.sites.neuron_site],
  [`neuron_hook_name`][tl_capability.sites.neuron_hook_name]), and the residual hooks rows stop or
  fork at ([`resid_pre_hook_name`][tl_capability.sites.resid_pre_hook_name],
  [`final_resid_hook_name`][tl_capability.sites.final_resid_hook_name],
  [`unembed_input_hook`][tl_capability.sites.unembed_input_hook]);
- the head: [`final_norm`][tl_capability.sites.final_norm],
  [`unembed`][tl_capability.sites.unembed], [`unembedding`][tl_capability.sites.unembedding]
  (``W_U``, ``b_U``), [`logit_transform`][tl_capability.sites.logit_transform] (a soft-cap or
  scaling after the unembedding);
- the MLP weights edits change: [`mlp_w_out`][tl_capability.sites.mlp_w_out],
  [`mlp_parameters`][tl_capability.sites.mlp_parameters];
- what a model supports: [`is_masked_lm`][tl_capability.sites.is_masked_lm],
  [`is_bridge`][tl_capability.sites.is_bridge],
  [`supports_kv_cache`][tl_capability.sites.supports_kv_cache],
  [`kv_cache_forward`][tl_capability.sites.kv_cache_forward] and
  [`new_kv_cache`][tl_capability.sites.new_kv_cache];
- the checks and facts every entry point needs: [`require_eval`][tl_capability.sites.require_eval],
  [`model_device`][tl_capability.sites.model_device],
  [`model_name`][tl_capability.sites.model_name].

Sites:

- ``"post"`` (default): ``blocks.{l}.mlp.hook_post``, the input of ``W_out``. For GELU/ReLU MLPs
  that is act(pre); for gated MLPs (Llama, Mistral, Qwen) it is act(gate) * up, the vector that the
  down projection reads. This is the neuron of knowledge-neuron and CNL work. (Prior tools differ on
  gated models: EasyEdit reads the gate's output, the NEG code the up projection.)
- ``"pre"``: ``blocks.{l}.mlp.hook_pre``, the pre-activation (for gated MLPs the gate's
  pre-activation).

On the bridge these names are aliases (``mlp.out.hook_in`` / ``mlp.in.hook_out``): inside a hook
``hook.name`` is the canonical name, so hooks built here close over the layer index instead of
parsing names.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_capability.options import Site, check_option

SiteKind = Site
"""The former name of [`tl_capability.options.Site`][tl_capability.options.Site], kept for
imports."""

_HOOKS: dict[str, str] = {"post": "hook_post", "pre": "hook_pre"}
UNEMBED_INPUT = "unembed.hook_in"
"""The hook point that carries what the unembedding reads (bridges)."""


@dataclass(frozen=True)
class NeuronSite:
    """The neuron hook point of every layer of one model.

    Attributes:
        kind: ``"post"`` or ``"pre"``.
        n_layers: Number of transformer blocks.
        d_mlp: Neurons per layer.
        hook_names: ``hook_names[l]`` is the hook point of layer ``l``.
    """

    kind: Site
    n_layers: int
    d_mlp: int
    hook_names: tuple[str, ...]

    @property
    def n_neurons(self) -> int:
        """Total number of neurons over all layers."""
        return self.n_layers * self.d_mlp

    def hook_name(self, layer: int) -> str:
        """The hook point name of ``layer`` (negative indices count from the end)."""
        return self.hook_names[layer]


def transformer_lens_has(name: str) -> bool:
    """Whether the installed TransformerLens exports ``name`` (4.x raises ImportError for
    ``HookedTransformer`` instead of AttributeError)."""
    import transformer_lens

    try:
        getattr(transformer_lens, name)
    except (AttributeError, ImportError):
        return False
    return True


def require_eval(model: Any) -> None:
    """Raises if ``model`` or any of its submodules is in training mode, where dropout makes
    every result noisy.

    Raises:
        ValueError: With the fix (``model.eval()``) in the message.
    """
    modules = getattr(model, "modules", None)
    training = (
        any(m.training for m in modules())
        if callable(modules)
        else getattr(model, "training", False)
    )
    if training:
        raise ValueError(
            "the model (or one of its submodules) is in training mode (dropout is active, so "
            "attributions, accuracies and edits would be random); call model.eval() first. "
            "TransformerBridge.boot_native returns models in training mode."
        )


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def model_name(model: Any) -> str | None:
    """The model's name from its config, when it has one."""
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "model_name", None)


def is_masked_lm(model: Any) -> bool:
    """Whether the model is a bidirectional masked LM (BERT-style) rather than a causal LM."""
    if type(model).__name__ in ("HookedEncoder", "HookedEncoderDecoder"):
        return True
    cfg = getattr(model, "cfg", None)
    # TransformerLens 3.x names it original_architecture, 4.x architecture.
    arch = str(getattr(cfg, "original_architecture", None) or getattr(cfg, "architecture", ""))
    return arch.endswith(("ForMaskedLM", "ForPreTraining")) or arch.startswith(("Bert", "Roberta"))


def neuron_hook_name(layer: int, site: Site = "post") -> str:
    """The neuron hook point of ``layer``: ``blocks.{layer}.mlp.hook_post`` (or ``hook_pre``).

    Raises:
        ValueError: For an unknown site.
    """
    return f"blocks.{layer}.mlp.{_HOOKS[check_option(site, Site, 'site')]}"


def resid_pre_hook_name(layer: int) -> str:
    """The hook point of the residual stream entering block ``layer``."""
    return f"blocks.{layer}.hook_resid_pre"


def resid_post_hook_name(layer: int) -> str:
    """The hook point of the residual stream leaving block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


class StopForward(Exception):
    """Raised by a hook to end a forward pass once what it needs is captured."""


class HookNotReached(ValueError):
    """A forward pass ended without running the hook point it was to stop at."""


def run_until(
    model: Any, name: str, tokens: Tensor, fwd_hooks: list, **forward_kwargs: Any
) -> Tensor:
    """Runs the model until hook point ``name`` and returns what it carried (the layers above
    and the unembedding, a vocabulary-sized read of weights, never run).

    Raises:
        HookNotReached: When the pass ends without running ``name``.
    """
    captured: dict[str, Tensor] = {}

    def grab(value: Tensor, hook: Any) -> None:
        captured["value"] = value
        raise StopForward

    try:
        with model.hooks(fwd_hooks=[*fwd_hooks, (name, grab)]):
            model(tokens, **forward_kwargs)
    except StopForward:
        pass
    if "value" not in captured:
        raise HookNotReached(
            f"the forward pass never ran hook point {name!r}: this model does not route its "
            "computation through the hook points TransformerLens names for it"
        )
    return captured["value"]


def final_resid_hook_name(model: Any) -> str:
    """The hook point of the residual stream leaving the last block (before ``ln_final``)."""
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"


def unembed_input_hook(model: Any) -> str | None:
    """The hook point to read the unembedding's input at, or ``None`` where that input is
    [`final_norm`][tl_capability.sites.final_norm] of the last block's output.

    Masked-LM bridges (BERT) put a transform (dense, activation) before ``ln_final`` that is
    not exposed as modules, so there the input is read at ``unembed.hook_in``.
    """
    if is_masked_lm(model) and UNEMBED_INPUT in model.hook_dict:
        return UNEMBED_INPUT
    return None


def final_norm(model: Any, resid: Float[Tensor, "row d_model"]) -> Float[Tensor, "row d_model"]:
    """``ln_final`` applied to one residual vector per row."""
    return model.ln_final(resid[:, None])[:, 0]


def unembed(model: Any, x: Float[Tensor, "row d_model"]) -> Float[Tensor, "row vocab"]:
    """The logits of one unembedding input per row, after the model's
    [`logit_transform`][tl_capability.sites.logit_transform] if it has one."""
    logits = model.unembed(x[:, None])[:, 0]
    transform = logit_transform(model)
    return logits if transform is None else transform(logits)


_PROBE_LOGITS = torch.linspace(-40.0, 40.0, 81)
_TRANSFORMS: WeakKeyDictionary[Any, bool] = WeakKeyDictionary()


def logit_transform(model: Any) -> Callable[[Tensor], Tensor] | None:
    """What the model's forward pass does to its logits after the unembedding (Gemma 2's
    soft-cap ``s·tanh(z/s)``; Granite's, Cohere's or Falcon-H1's scaling), as a function of
    ``[..., vocab]`` logits, or ``None`` when nothing.

    The bridge names it per architecture (``adapter.apply_output_logits_transform``, what its
    own logit lens applies); a ``HookedTransformer`` has only ``cfg.output_logits_soft_cap``.
    """
    transform = getattr(getattr(model, "adapter", None), "apply_output_logits_transform", None)
    if callable(transform):
        # Whether it is the identity, probed once per model (it is called once per pass).
        known = _TRANSFORMS.get(model)
        if known is None:
            probe = _PROBE_LOGITS.to(model_device(model))
            out = transform(probe)
            known = _TRANSFORMS[model] = not (out is probe or torch.equal(out, probe))
        return transform if known else None
    cap = getattr(getattr(model, "cfg", None), "output_logits_soft_cap", None)
    if isinstance(cap, int | float) and cap > 0:
        return lambda z: cap * torch.tanh(z / cap)
    return None


def unembedding(
    model: Any,
) -> tuple[Float[Tensor, "d_model vocab"], Float[Tensor, " vocab"] | None]:
    """The unembedding's weights ``W_U`` and bias ``b_U`` (``None`` for a model without one)."""
    w_u = model.W_U if hasattr(model, "W_U") else model.unembed.W_U
    return w_u, getattr(model, "b_U", None)


def mlp_w_out(model: Any, layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """``W_out`` of ``layer``'s MLP: row ``j`` is what neuron ``j`` writes (its value slot).

    ``model.blocks[layer].mlp.W_out`` is a view of the parameter on both TransformerLens
    generations, so writing to it sticks; the stacked ``model.W_out`` is a copy.

    Raises:
        ValueError: When its shape is not ``[d_mlp, d_model]``.
    """
    w = model.blocks[layer].mlp.W_out
    if w.shape[0] != model.cfg.d_mlp:
        raise ValueError(
            f"blocks.{layer}.mlp.W_out has shape {tuple(w.shape)}, expected "
            f"[d_mlp={model.cfg.d_mlp}, d_model]"
        )
    return w


def mlp_parameters(model: Any, layer: int) -> Iterator[torch.nn.Parameter]:
    """Every parameter of ``layer``'s MLP (``W_in``, ``b_in``, ``W_gate``, ``W_out``, ...)."""
    return model.blocks[layer].mlp.parameters()


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


def supports_kv_cache(model: Any) -> bool:
    """Whether ``model`` takes the fast, exact cached path of
    [`tl_capability.rows`][tl_capability.rows]: a bridge over a Hugging Face causal decoder whose
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


def _probe_kv_cache(model: Any) -> bool:
    if (
        not is_bridge(model)
        or not _is_hf_model(model.original_model)
        or getattr(model.cfg, "is_encoder_decoder", False)
        or is_masked_lm(model)
    ):
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
    # renamed it) leaves it empty, and cached rows would then silently see no prefix.
    with torch.no_grad():
        filled = all(layer.keys is not None for layer in cache.layers)
        if filled and cache.get_seq_length() == 2:
            # Final residuals, not logits: the unembedding would read a vocabulary of weights.
            last = final_resid_hook_name(model)
            kwargs = {"past_key_values": cache, "use_cache": True}
            step = run_until(model, last, tokens[:, 2:], [], **kwargs)[:, -1].float()
            full = run_until(model, last, tokens, [])[:, -1].float()
            scale = float(full.abs().max())
            half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
            if float((step - full).abs().max()) <= (2e-2 if half else 1e-4) * max(scale, 1.0):
                return True
    warnings.warn(
        "this model's key/value cache does not reproduce its full forward pass (a "
        "transformer-lens / transformers version mismatch? transformer-lens 4.3 needs "
        "transformers < 5.24); rows take the general path: the same numbers, more slowly",
        stacklevel=3,
    )
    return False


def _is_hf_model(module: Any) -> bool:
    """Whether ``module`` is a Hugging Face ``PreTrainedModel``."""
    from transformers import PreTrainedModel

    return isinstance(module, PreTrainedModel)


# What a forward pass found out about a model, once per model: the checks run on every call of
# attribute / accuracy and each costs a pass (on CPU, streaming all weights) that a one-prompt
# attribution would otherwise pay three times over. Keyed weakly, so a model is not kept alive.
_WIDTHS_CHECKED: WeakKeyDictionary[Any, set[NeuronSite]] = WeakKeyDictionary()
_KV_CACHE: WeakKeyDictionary[Any, bool] = WeakKeyDictionary()


_MLP_ADDS_LINEARLY: WeakKeyDictionary[Any, tuple[tuple[int, ...], bool]] = WeakKeyDictionary()


def mlp_output_adds_linearly(model: Any) -> bool:
    """Whether every block adds ``hook_post · W_out`` (plus a constant) to the residual stream,
    so that changing layer ``l``'s post-activations by ``δ`` changes block ``l``'s output by
    exactly ``δ W_out`` (sequential and parallel blocks; not a norm after the MLP, nor a hook
    that bends the MLP's output).

    Probed with a short pass per layer that perturbs that layer's post-activations; the answer
    is kept per model until the hooks attached to it change.
    """
    signature = hook_signature(model)
    known = _MLP_ADDS_LINEARLY.get(model)
    if known is None or known[0] != signature:
        known = _MLP_ADDS_LINEARLY[model] = (signature, _probe_mlp_output(model))
    return known[1]


def hook_signature(model: Any) -> tuple[int, ...]:
    """The ids of every forward and forward-pre hook registered on the model's modules: facts
    probed once per model are probed again when they change. Ids are unique per registration,
    so swapping one hook for another (same count, other function) is seen too."""
    return tuple(
        key
        for module in model.modules()
        for hooks in (module._forward_pre_hooks, module._forward_hooks)
        for key in hooks
    )


def head_has_hooks(model: Any) -> bool:
    """Whether a hook point of ``ln_final`` or the unembedding carries a hook (forward or
    backward): what a pass that unembeds chosen rows only would run differently from the
    model's own. Hooks on the embedding or inside the blocks run the same way in both. Only
    hook points count: TransformerLens puts module hooks of its own on some models' modules."""
    heads = [getattr(model, name, None) for name in ("ln_final", "unembed")]
    return any(
        getattr(m, "fwd_hooks", None) or getattr(m, "bwd_hooks", None)
        for head in heads
        if head is not None
        for m in head.modules()
    )


def hook_points_in_use(model: Any) -> bool:
    """Whether any TransformerLens hook point of the model carries a temporary hook (forward or
    backward): the hooks users attach, through ``model.hooks`` or ``add_hook``. Permanent ones
    do not count: TransformerLens 4 wires some bridges' hook points (BERT, OPT) with permanent
    hooks of its own."""
    return any(
        not handle.is_permanent
        for m in model.modules()
        for handle in (*getattr(m, "fwd_hooks", ()), *getattr(m, "bwd_hooks", ()))
    )


def is_head_hook(name: Any) -> bool:
    """Whether a ``(name, hook)`` pair may act on the head: its name is a hook point of
    ``ln_final`` or the unembedding, or is not a name at all (a filter function)."""
    return not isinstance(name, str) or name.startswith(("ln_final", "unembed"))


def block_modules(model: Any) -> list[Any]:
    """The model's transformer blocks, in order (the modules its forward pass calls)."""
    return list(model.blocks)


def _probe_mlp_output(model: Any) -> bool:
    n_layers = model.cfg.n_layers
    names = [(neuron_hook_name(layer), resid_post_hook_name(layer)) for layer in range(n_layers)]
    if any(post not in model.hook_dict or out not in model.hook_dict for post, out in names):
        return False
    device = model_device(model)
    tokens = torch.zeros(1, 3, dtype=torch.long, device=device)
    gen = torch.Generator().manual_seed(0)
    seen: dict[str, Tensor] = {}

    def grab(key: str):
        def hook(resid: Tensor, hook: Any) -> None:
            seen[key] = resid.detach().float()

        return hook

    # Each pass stops at the block it reads: the blocks above and the unembedding never run.
    with torch.no_grad():
        below = [(out, grab(f"clean{layer}")) for layer, (_, out) in enumerate(names[:-1])]
        seen[f"clean{n_layers - 1}"] = run_until(model, names[-1][1], tokens, below).float()
        for layer, (post, out) in enumerate(names):
            w_out = mlp_w_out(model, layer).detach()
            delta = 0.1 * torch.randn(1, 3, w_out.shape[0], generator=gen)
            delta = delta.to(w_out.device, w_out.dtype)

            def shift(act: Tensor, hook: Any, delta: Tensor = delta) -> Tensor:
                return act + delta

            shifted = run_until(model, out, tokens, [(post, shift)]).float()
            change = shifted - seen[f"clean{layer}"]
            expected = (delta @ w_out).float()
            scale = float(expected.abs().max())
            if not torch.allclose(change, expected, rtol=1e-3, atol=1e-4 * scale):
                return False
    return True


def neuron_site(model: Any, site: Site = "post", *, check_width: bool = True) -> NeuronSite:
    """Resolves the neuron hook point of every layer and checks that it is usable.

    Args:
        model: A TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        site: ``"post"`` (post-activation, the default) or ``"pre"``.
        check_width: Run a one-token forward pass and check that every hook carries exactly
            ``cfg.d_mlp`` neurons (catches mixture-of-experts layers and odd adapters); done
            once per model and site.

    Returns:
        The [`NeuronSite`][tl_capability.sites.NeuronSite].

    Raises:
        ValueError: For an unknown site, a model without ``cfg.n_layers``/``cfg.d_mlp``, a
            missing hook (attention-only models, adapters without MLP hooks), or a hook whose
            width is not ``d_mlp``.
    """
    check_option(site, Site, "site")
    cfg = getattr(model, "cfg", None)
    n_layers = getattr(cfg, "n_layers", None)
    d_mlp = getattr(cfg, "d_mlp", None)
    if not isinstance(n_layers, int) or not isinstance(d_mlp, int) or d_mlp <= 0:
        raise ValueError(
            "the model has no MLP neurons to attribute (cfg.n_layers / cfg.d_mlp missing; "
            "attention-only model?). tl_capability needs a TransformerLens model with MLP layers."
        )
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is None:
        raise ValueError(
            f"{type(model).__name__} has no hook_dict: pass a TransformerLens model "
            "(HookedTransformer or TransformerBridge)"
        )
    names = tuple(neuron_hook_name(layer, site) for layer in range(n_layers))
    missing = [n for n in names if n not in hook_dict]
    if missing:
        raise ValueError(
            f"the model has no neuron hook {missing[0]!r} ({len(missing)} of {n_layers} layers "
            f"lack one); site={site!r} needs MLP hook points on every layer. Attention-only "
            "models and adapters that do not expose MLP activations are not supported."
        )
    result = NeuronSite(site, n_layers, d_mlp, names)
    if check_width and result not in _WIDTHS_CHECKED.get(model, ()):
        _check_width(model, result)
        _WIDTHS_CHECKED.setdefault(model, set()).add(result)
    return result


def _check_width(model: Any, site: NeuronSite) -> None:
    widths: dict[int, int] = {}

    def record(layer: int):
        def hook(act: torch.Tensor, hook: Any) -> None:
            widths[layer] = act.shape[-1]
            if len(widths) == site.n_layers:
                raise StopForward  # the unembedding (a vocabulary-sized read) is not needed

        return hook

    tokenizer = getattr(model, "tokenizer", None)
    token = getattr(tokenizer, "bos_token_id", None) or 0
    tokens = torch.tensor([[token]], device=model_device(model))
    fwd = [(site.hook_name(layer), record(layer)) for layer in range(site.n_layers)]
    with contextlib.suppress(StopForward), torch.no_grad(), model.hooks(fwd_hooks=fwd):
        model(tokens)
    for layer in range(site.n_layers):
        width = widths.get(layer)
        if width is None:
            raise ValueError(
                f"hook {site.hook_name(layer)!r} did not fire during a forward pass: this layer "
                "does not run a dense MLP through it"
            )
        if width != site.d_mlp:
            raise ValueError(
                f"hook {site.hook_name(layer)!r} carries {width} values per position but "
                f"cfg.d_mlp is {site.d_mlp}: this layer is not a dense MLP (mixture of experts?), "
                "so its neurons cannot be addressed as (layer, index)"
            )
