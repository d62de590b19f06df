"""Hook names and what every entry point reads of a model: which hook point is the neuron, the
residual stream or the unembedding's input (TransformerLens 3 and 4 share them), the eval-mode
check, a model's device and name, and [`run_until`][tl_capability.sites.run_until], a pass that
stops at a hook point. Part of [`tl_capability.sites`][tl_capability.sites]."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tl_capability.options import Site, check_option

SiteKind = Site
"""The former name of [`tl_capability.options.Site`][tl_capability.options.Site], kept for
imports."""

_HOOKS: dict[str, str] = {"post": "hook_post", "pre": "hook_pre"}
UNEMBED_INPUT = "unembed.hook_in"
"""The hook point that carries what the unembedding reads (bridges)."""


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


def mlp_io_hook_names(model: Any, layer: int) -> tuple[str, str] | None:
    """The hook points of what ``layer``'s MLP module reads and what it returns (a bridge's
    ``blocks.{layer}.mlp.hook_in`` and ``hook_out``), or ``None`` where the model has none."""
    names = (f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.mlp.hook_out")
    hook_dict = getattr(model, "hook_dict", {})
    return names if all(name in hook_dict for name in names) else None


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


def is_head_hook(name: Any) -> bool:
    """Whether a ``(name, hook)`` pair may act on the head: its name is a hook point of
    ``ln_final`` or the unembedding, or is not a name at all (a filter function)."""
    return not isinstance(name, str) or name.startswith(("ln_final", "unembed"))


def block_modules(model: Any) -> list[Any]:
    """The model's transformer blocks, in order (the modules its forward pass calls)."""
    return list(model.blocks)
