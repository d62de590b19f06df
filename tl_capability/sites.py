"""Which tensor is "the neuron": the MLP hook point of every layer, for any TransformerLens model.

The library codes against the hook surface that TransformerLens 3.x ``HookedTransformer`` and
4.x ``TransformerBridge`` share (``cfg.n_layers``, ``cfg.d_mlp``, ``hook_dict``, ``hooks()``),
so it never subclasses a model class.

Sites:

- ``"post"`` (default): ``blocks.{l}.mlp.hook_post``, the input of ``W_out``. For GELU/ReLU
  MLPs that is act(pre); for gated MLPs (Llama, Mistral, Qwen) it is act(gate) * up, the vector
  that the down projection reads. This is the neuron of knowledge-neuron and CNL work. (Prior
  tools differ on gated models: EasyEdit reads the gate's output, the NEG code the up
  projection.)
- ``"pre"``: ``blocks.{l}.mlp.hook_pre``, the pre-activation (for gated MLPs the gate's
  pre-activation).

On the bridge these names are aliases (``mlp.out.hook_in`` / ``mlp.in.hook_out``): inside a hook
``hook.name`` is the canonical name, so hooks built here close over the layer index instead of
parsing names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

SiteKind = Literal["post", "pre"]
_HOOKS: dict[str, str] = {"post": "hook_post", "pre": "hook_pre"}


@dataclass(frozen=True)
class NeuronSite:
    """The neuron hook point of every layer of one model.

    Attributes:
        kind: ``"post"`` or ``"pre"``.
        n_layers: Number of transformer blocks.
        d_mlp: Neurons per layer.
        hook_names: ``hook_names[l]`` is the hook point of layer ``l``.
    """

    kind: str
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


def neuron_site(model: Any, site: str = "post", *, check_width: bool = True) -> NeuronSite:
    """Resolves the neuron hook point of every layer and checks that it is usable.

    Args:
        model: A TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        site: ``"post"`` (post-activation, the default) or ``"pre"``.
        check_width: Run a one-token forward pass and check that every hook carries exactly
            ``cfg.d_mlp`` neurons (catches mixture-of-experts layers and odd adapters).

    Returns:
        The :class:`NeuronSite`.

    Raises:
        ValueError: For an unknown site, a model without ``cfg.n_layers``/``cfg.d_mlp``, a
            missing hook (attention-only models, adapters without MLP hooks), or a hook whose
            width is not ``d_mlp``.
    """
    if site not in _HOOKS:
        raise ValueError(f"site must be one of {sorted(_HOOKS)}, got {site!r}")
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
    names = tuple(f"blocks.{layer}.mlp.{_HOOKS[site]}" for layer in range(n_layers))
    missing = [n for n in names if n not in hook_dict]
    if missing:
        raise ValueError(
            f"the model has no neuron hook {missing[0]!r} ({len(missing)} of {n_layers} layers "
            f"lack one); site={site!r} needs MLP hook points on every layer. Attention-only "
            "models and adapters that do not expose MLP activations are not supported."
        )
    result = NeuronSite(site, n_layers, d_mlp, names)
    if check_width:
        _check_width(model, result)
    return result


def _check_width(model: Any, site: NeuronSite) -> None:
    widths: dict[int, int] = {}

    def record(layer: int):
        def hook(act: torch.Tensor, hook: Any) -> None:
            widths[layer] = act.shape[-1]

        return hook

    tokenizer = getattr(model, "tokenizer", None)
    token = getattr(tokenizer, "bos_token_id", None) or 0
    tokens = torch.tensor([[token]], device=model_device(model))
    fwd = [(site.hook_name(layer), record(layer)) for layer in range(site.n_layers)]
    with torch.no_grad(), model.hooks(fwd_hooks=fwd):
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
