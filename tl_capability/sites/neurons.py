"""The neuron site: the neuron hook point of every layer
([`neuron_site`][tl_capability.sites.neuron_site]), its width checked once per model. Part of
[`tl_capability.sites`][tl_capability.sites]."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import torch

from tl_capability.options import Site, check_option
from tl_capability.sites.names import (
    StopForward,
    model_device,
    neuron_hook_name,
)


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


# What a forward pass found out about a model, once per model: the checks run on every call of
# attribute / accuracy and each costs a pass (on CPU, streaming all weights) that a one-prompt
# attribution would otherwise pay three times over. Keyed weakly, so a model is not kept alive.
_WIDTHS_CHECKED: WeakKeyDictionary[Any, set[NeuronSite]] = WeakKeyDictionary()


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
    if check_width and not width_checked(model, result):
        _check_width(model, result)
        _WIDTHS_CHECKED.setdefault(model, set()).add(result)
    return result


def width_checked(model: Any, site: NeuronSite) -> bool:
    """Whether ``site``'s hooks were found ``d_mlp`` wide on ``model`` (by
    [`neuron_site`][tl_capability.sites.neuron_site] or
    [`check_widths`][tl_capability.sites.check_widths])."""
    return site in _WIDTHS_CHECKED.get(model, ())


def check_widths(model: Any, site: NeuronSite, widths: dict[int, int]) -> None:
    """The width check of [`neuron_site`][tl_capability.sites.neuron_site] on widths a caller's
    own pass saw (``widths[layer]``: the last dimension of ``site``'s hook there, absent where it
    did not fire), so that a pass the caller runs anyway stands in for the check's own; kept
    as checked once it passes.

    Raises:
        ValueError: As ``neuron_site``.
    """
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
                f"cfg.d_mlp is {site.d_mlp}: either this layer is not a dense MLP (a mixture of "
                "experts), whose neurons cannot be addressed as (layer, index), or the config "
                "misstates its width (TransformerLens's bridge reads OPT's d_mlp as 4 × d_model "
                "whatever its ffn_dim)"
            )
    _WIDTHS_CHECKED.setdefault(model, set()).add(site)


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
    check_widths(model, site, widths)
