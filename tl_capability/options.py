"""The string options of the public API, as ``typing.Literal`` aliases, and their one check.

Every public function annotates its string options with one of these aliases and validates
them through [`check_option`][tl_capability.options.check_option], so that the allowed values are
written once (here), type checkers see them, and every refusal reads the same:
``method must be one of 'ig', 'grad_x_act', 'neurgrad', 'activation', got 'igg'``. The tuples
that modules exported before (``attribution.METHODS``, ``masks.SITES``, ...) are
[`options`][tl_capability.options.options] of these aliases.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, get_args

AttributionMethod = Literal["ig", "grad_x_act", "neurgrad", "activation"]
"""How [`attribute`][tl_capability.attribution.attribute] scores a neuron."""

AllPositionMethod = Literal["ig", "grad_x_act", "activation"]
"""The attribution methods that ``positions="all"`` supports
([`attribute`][tl_capability.attribution.attribute])."""

Metric = Literal["prob", "logprob"]
"""What a row reads: ``P(answer token)`` or its log."""

IGRule = Literal["midpoint", "left", "right"]
"""The integrated-gradients quadrature ([`ig_alphas`][tl_capability.attribution.ig_alphas])."""

Positions = Literal["answer", "all"]
"""Where an attribution changes the neuron: at the answer-predicting position, or everywhere."""

Site = Literal["post", "pre"]
"""Which MLP hook is "the neuron" ([`tl_capability.sites`][tl_capability.sites])."""

Side = Literal["positive", "negative", "both"]
"""Which tail of the scores a selection rule keeps ([`select`][tl_capability.masks.select])."""

InterventionMode = Literal["zero", "scale", "mean", "add", "value"]
"""What an intervention does to a neuron
([`tl_capability.interventions`][tl_capability.interventions])."""

LocateMethod = Literal["answer", "all", "contrastive", "iterative", "learned"]
"""How [`locate`][tl_capability.localization.locate] ranks neurons."""

Reduce = Literal["max", "mean"]
"""How control scores combine
([`contrastive_scores`][tl_capability.localization.contrastive_scores])."""

Gate = Literal["hard_concrete", "sigmoid"]
"""The removal gate of [`learn_mask`][tl_capability.learned.learn_mask]."""

Suppression = Literal["unlikely", "uniform"]
"""The suppression loss of [`learn_mask`][tl_capability.learned.learn_mask]."""

Split = Literal["train", "test"]
"""A dataset split (the zoo's task generators, the hub loaders)."""

DType = Literal["float32", "float16", "bfloat16"]
"""A model's floating-point type when loading ([`load_model`][tl_capability.models.load_model])."""

CacheDType = Literal["float32", "bfloat16"]
"""The precisions a dequantized GGUF model is cached in."""

Localizer = Literal["kn", "rome", "kc"]
"""The poster's three localizers: knowledge neurons, ROME's causal-traced layer, knowledge
circuits."""

_T = TypeVar("_T")


def options(alias: Any) -> tuple[str, ...]:
    """The allowed values of a ``Literal`` alias, in the order it lists them.

    Raises:
        TypeError: When ``alias`` is not a ``Literal`` of strings.
    """
    values = get_args(alias)
    if not values or not all(isinstance(v, str) for v in values):
        raise TypeError(f"{alias!r} is not a Literal of strings")
    return values


def check_option(value: _T, alias: Any, name: str, *, note: str | None = None) -> _T:
    """Returns ``value`` when it is one of ``alias``'s values, else refuses it.

    Args:
        value: What the caller passed.
        alias: One of this module's ``Literal`` aliases.
        name: The parameter's name, for the message.
        note: Why the allowed values are restricted here, appended to them in parentheses
            (e.g. ``"positions='all' supports no other"``).

    Raises:
        ValueError: ``"{name} must be one of 'a', 'b', got {value!r}"``.
    """
    allowed = options(alias)
    if isinstance(value, str) and value in allowed:
        return value
    listed = ", ".join(repr(v) for v in allowed)
    if note:
        listed = f"{listed} ({note})"
    raise ValueError(f"{name} must be one of {listed}, got {value!r}")
