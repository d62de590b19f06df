"""The string options of the public API, as ``typing.Literal`` aliases, and their one check.

Every public function annotates its string options with one of these aliases and validates
them through [`check_option`][tl_capability.options.check_option], so that the allowed values are
written once (here), type checkers see them, and every refusal reads the same:
``method must be one of 'ig', 'grad_x_act', 'neurgrad', 'activation', got 'igg'``. Their values,
as a tuple, are [`options`][tl_capability.options.options] of the alias.

Numbers are checked here too, so that every refusal of a count or a share reads the same:
[`check_positive_int`][tl_capability.options.check_positive_int] (steps, sizes, rounds),
[`check_range`][tl_capability.options.check_range] (any bounded number: finite, not a bool) and
[`check_fraction`][tl_capability.options.check_fraction] (a share of neurons or samples).
"""

from __future__ import annotations

import math
import operator
from numbers import Real
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

LearnInit = Literal["auto", "none", "contrastive"]
"""Where ``locate``'s learned mask starts its gates
([`LearnConfig.init`][tl_capability.learned.LearnConfig]): ``"none"``, every gate at the start
logit; ``"contrastive"``, plus the standardised contrastive all-position grad × act scores
(the controls' need weighted 3); ``"auto"``, the contrastive scores only where the start probe
lowers the start below the gate's own (a model that does not tolerate half of its neurons
removed: its gates need the scores to know where to open)."""

Suppression = Literal["unlikely", "uniform"]
"""The suppression loss of [`learn_mask`][tl_capability.learned.learn_mask].

``"unlikely"``: ``−log(1 − P(answer))``, ``P(answer) = Π_m P(y_m)`` the teacher-forced
probability of the whole answer; it saturates once the answer is improbable, and one wrong token
is enough, as for exact-match accuracy. ``"uniform"``: Bayazit et al.'s ``KL(uniform ‖ p)`` at
each answer token, which keeps pushing every answer position towards the uniform distribution.
Measured on the zoo model (sigmoid gates, 150 steps, 100 training samples, five controls):
``"unlikely"`` reached a 60-point drop with 23 neurons (sentiment) and 55 (sort);
``"uniform"`` did not reach it within 5 % of the neurons (102 neurons: 18 and 55 points).
Our reading: the uniform target never saturates, so gates keep being spent on answers that are
already wrong, while exact match needs only one wrong token per answer. Hence the default."""

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


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Returns ``value`` as an ``int`` when it is an integer of at least ``minimum``.

    Args:
        value: What the caller passed: anything with ``__index__`` but a bool.
        name: The parameter's name, for the message.
        minimum: The smallest value allowed (1: a positive integer, 0: a count).

    Raises:
        ValueError: ``"{name} must be a positive integer, got {value!r}"`` (``"an integer of
            at least {minimum}"`` for another ``minimum``).
    """
    try:  # ints, NumPy's and 0-d integer tensors: whatever indexes a sequence
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is not None and number >= minimum:
        return number
    what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
    raise ValueError(f"{name} must be {what}, got {value!r}")


def check_range(
    value: Any,
    name: str,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    unit: str = "",
) -> float:
    """Returns ``value`` as a ``float`` when it is a finite number in the interval, else
    refuses it (NaN and infinities included, whatever the bounds).

    Args:
        value: What the caller passed; a bool is not a number here.
        name: The parameter's name, for the message.
        low: The interval's lower end.
        high: The interval's upper end.
        low_open: Whether ``low`` itself is refused.
        high_open: Whether ``high`` itself is refused.
        unit: Appended to the interval in the message (e.g. ``" points"``).

    Raises:
        ValueError: ``"{name} must be a finite number in (0, 1], got {value!r}"``.
    """
    number = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    above = number and (low < value if low_open else low <= value)
    if above and (value < high if high_open else value <= high):
        return float(value)

    def end(x: float) -> str:
        return "inf" if math.isinf(x) else f"{x:g}"

    if math.isinf(low) and math.isinf(high):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    opening = "(" if low_open or math.isinf(low) else "["
    closing = ")" if high_open or math.isinf(high) else "]"
    interval = f"{opening}{end(low)}, {end(high)}{closing}"
    raise ValueError(f"{name} must be a finite number in {interval}{unit}, got {value!r}")


def check_fraction(value: Any, name: str, *, zero_ok: bool = False, one_ok: bool = True) -> float:
    """Returns ``value`` when it is a share: in ``(0, 1]`` by default.

    Args:
        value: What the caller passed.
        name: The parameter's name, for the message.
        zero_ok: Whether 0 is allowed (``[0, ...``).
        one_ok: Whether 1 is allowed (``..., 1]``).

    Raises:
        ValueError: ``"{name} must be in (0, 1], got {value!r}"``.
    """
    return check_range(value, name, 0.0, 1.0, low_open=not zero_ok, high_open=not one_ok)
