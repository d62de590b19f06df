"""The model surface: everything the library reads of a TransformerLens model, in one place.

The library codes against the hook surface that TransformerLens 3.x ``HookedTransformer`` and
4.x ``TransformerBridge`` share (``cfg.n_layers``, ``cfg.d_mlp``, ``hook_dict``, ``hooks()``),
so it never subclasses a model class. This package is the only place that knows hook names,
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
  [`kv_cache_forward`][tl_capability.sites.kv_cache_forward],
  [`new_kv_cache`][tl_capability.sites.new_kv_cache],
  [`resolve_use_cache`][tl_capability.sites.resolve_use_cache] (with
  [`position_free`][tl_capability.sites.position_free] /
  [`hooks_are_position_free`][tl_capability.sites.hooks_are_position_free]) and
  [`attention_window`][tl_capability.sites.attention_window]; probes kept per model until its
  hooks change ([`kept_until_hooks_change`][tl_capability.sites.kept_until_hooks_change]), within
  [`probe_tolerance`][tl_capability.sites.probe_tolerance];
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

from tl_capability.sites.hooks_attached import (
    ProbeMemo,
    head_has_hooks,
    hook_points_in_use,
    hook_signature,
    hooks_are_position_free,
    kept_until_hooks_change,
    known_until_hooks_change,
    position_free,
    record_until_hooks_change,
)
from tl_capability.sites.names import (
    UNEMBED_INPUT,
    HookNotReached,
    SiteKind,
    StopForward,
    block_modules,
    final_resid_hook_name,
    is_head_hook,
    is_masked_lm,
    mlp_io_hook_names,
    model_device,
    model_name,
    neuron_hook_name,
    require_eval,
    resid_post_hook_name,
    resid_pre_hook_name,
    run_until,
    transformer_lens_has,
    unembed_input_hook,
)
from tl_capability.sites.neurons import (
    NeuronSite,
    check_widths,
    neuron_site,
    width_checked,
)
from tl_capability.sites.support import (
    MlpShifts,
    attention_window,
    is_bridge,
    kv_cache_forward,
    kv_cache_known,
    may_have_kv_cache,
    mlp_linearity_known,
    mlp_output_adds_linearly,
    new_kv_cache,
    own_cache_verdict,
    probe_tolerance,
    record_kv_cache,
    record_mlp_linearity,
    resolve_use_cache,
    supports_kv_cache,
)
from tl_capability.sites.weights import (
    final_norm,
    logit_transform,
    mlp_parameters,
    mlp_w_out,
    unembed,
    unembedding,
)

__all__ = [
    "UNEMBED_INPUT",
    "HookNotReached",
    "MlpShifts",
    "NeuronSite",
    "ProbeMemo",
    "SiteKind",
    "StopForward",
    "attention_window",
    "block_modules",
    "check_widths",
    "final_norm",
    "final_resid_hook_name",
    "head_has_hooks",
    "hook_points_in_use",
    "hook_signature",
    "hooks_are_position_free",
    "is_bridge",
    "is_head_hook",
    "is_masked_lm",
    "kept_until_hooks_change",
    "known_until_hooks_change",
    "kv_cache_forward",
    "kv_cache_known",
    "logit_transform",
    "may_have_kv_cache",
    "mlp_io_hook_names",
    "mlp_linearity_known",
    "mlp_output_adds_linearly",
    "mlp_parameters",
    "mlp_w_out",
    "model_device",
    "model_name",
    "neuron_hook_name",
    "neuron_site",
    "new_kv_cache",
    "own_cache_verdict",
    "position_free",
    "probe_tolerance",
    "record_kv_cache",
    "record_mlp_linearity",
    "record_until_hooks_change",
    "require_eval",
    "resid_post_hook_name",
    "resid_pre_hook_name",
    "resolve_use_cache",
    "run_until",
    "supports_kv_cache",
    "transformer_lens_has",
    "unembed",
    "unembed_input_hook",
    "unembedding",
    "width_checked",
]
