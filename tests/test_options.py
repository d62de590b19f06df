"""String options: one Literal alias each, one check, one message, annotated everywhere."""

import inspect
import re
from functools import partial
from pathlib import Path

import pytest
import torch

from tl_capability import (
    CapabilityDataset,
    LearnConfig,
    LocateConfig,
    NeuronMask,
    NeuronScores,
    ablate,
    attribute,
    contrastive_scores,
    empirical_neg,
    erase_curve,
    ig_alphas,
    iterative_ranking,
    learn_mask,
    locate,
    mean_activations,
    neuron_site,
    options,
    rank_neurons,
    select,
)
from tl_capability._storage import save_pair
from tl_capability.attribution import AttributionConfig
from tl_capability.attribution._all_positions import all_position_scores
from tl_capability.interventions import mask_hooks
from tl_capability.options import check_option
from tl_capability.sites import neuron_hook_name

pytestmark = pytest.mark.core

PACKAGE = Path(__file__).parent.parent / "tl_capability"
DATA = CapabilityDataset.from_pairs(["12+34=", "rev abc:"], ["46", "cba"], name="t")
OTHER = CapabilityDataset.from_pairs(["the day was", "q"], [" fun", "xy"], name="o")
BAD = "nonsense"


def _mask(model, site="post"):
    return NeuronMask.from_indices([(0, 1)], model.cfg.n_layers, model.cfg.d_mlp, site=site)


def _ablate(model, **kw):
    with ablate(model, _mask(model), **kw):
        pass


def _scores_on_disk(tmp_path, method):
    values = torch.zeros(2, 3)
    meta = {"n": 1, "method": method, "params": {}}
    save_pair(tmp_path, "scores", {"values": values, "std": values.clone()}, meta)
    return NeuronScores.load(tmp_path)


def _mask_on_disk(tmp_path, site):
    tensor = torch.zeros(2, 3, dtype=torch.bool)
    save_pair(tmp_path, "mask", {"mask": tensor}, {"site": site, "selection": {}})
    return NeuronMask.load(tmp_path)


# (id, alias name in tl_capability.options, parameter name in the message, call(model, value,
# tmp_path), the public function whose parameter must carry the alias as its annotation or None,
# and optionally the refused value when not BAD)
OPTIONS = [
    ("attribute-method", "AttributionMethod", "method",
     lambda m, v, p: attribute(m, DATA, v, progress=False), (attribute, "method")),
    ("attribute-metric", "Metric", "metric",
     lambda m, v, p: attribute(m, DATA, metric=v, progress=False), (attribute, "metric")),
    ("AttributionConfig-site", "Site", "site",
     lambda m, v, p: AttributionConfig(site=v), (AttributionConfig, "site")),
    ("AttributionConfig-rule", "IGRule", "rule",
     lambda m, v, p: AttributionConfig(rule=v), (AttributionConfig, "rule")),
    ("attribute-positions", "Positions", "positions",
     lambda m, v, p: attribute(m, DATA, positions=v, progress=False), (attribute, "positions")),
    ("attribute-all-positions-method", "AllPositionMethod", "method",
     lambda m, v, p: attribute(m, DATA, v, positions="all", progress=False), None, "neurgrad"),
    ("all_position_scores-method", "AllPositionMethod", "method",
     lambda m, v, p: all_position_scores(m, neuron_site(m), None, v, "prob", None, 1),
     (all_position_scores, "method")),
    ("ig_alphas-rule", "IGRule", "rule", lambda m, v, p: ig_alphas(3, v), (ig_alphas, "rule")),
    ("NeuronScores.load-method", "AttributionMethod", "method",
     lambda m, v, p: _scores_on_disk(p, v), None),
    ("empirical_neg-metric", "Metric", "metric",
     lambda m, v, p: empirical_neg(m, DATA, [(0, 1)], metric=v, progress=False),
     (empirical_neg, "metric")),
    ("empirical_neg-site", "Site", "site",
     lambda m, v, p: empirical_neg(m, DATA, [(0, 1)], site=v, progress=False),
     (empirical_neg, "site")),
    ("neuron_site-site", "Site", "site", lambda m, v, p: neuron_site(m, v), (neuron_site, "site")),
    ("neuron_hook_name-site", "Site", "site",
     lambda m, v, p: neuron_hook_name(0, v), (neuron_hook_name, "site")),
    ("mean_activations-site", "Site", "site",
     lambda m, v, p: mean_activations(m, DATA, v), (mean_activations, "site")),
    ("mask_hooks-mode", "InterventionMode", "mode",
     lambda m, v, p: mask_hooks(_mask(m), v), (mask_hooks, "mode")),
    ("mask_hooks-mask-site", "Site", "the mask's site",
     lambda m, v, p: mask_hooks(_mask(m, site=v)), None),
    ("NeuronMask.hooks-mode", "InterventionMode", "mode",
     lambda m, v, p: _mask(m).hooks(v), None),
    ("ablate-mode", "InterventionMode", "mode",
     lambda m, v, p: _ablate(m, mode=v), (ablate, "mode")),
    ("erase_curve-mode", "InterventionMode", "mode",
     lambda m, v, p: erase_curve(m, torch.zeros(2, 128), DATA, mode=v, progress=False), None),
    ("select-side", "Side", "side",
     lambda m, v, p: select(torch.zeros(2, 3), side=v), (select, "side")),
    ("NeuronMask.load-site", "Site", "site", lambda m, v, p: _mask_on_disk(p, v), None),
    ("LearnConfig-gate", "Gate", "gate",
     lambda m, v, p: LearnConfig(gate=v), (LearnConfig, "gate")),
    ("LearnConfig-suppression", "Suppression", "suppression",
     lambda m, v, p: LearnConfig(suppression=v), (LearnConfig, "suppression")),
    ("learn_mask-site", "Site", "site",
     lambda m, v, p: learn_mask(m, DATA, None, site=v, progress=False), (learn_mask, "site")),
    ("locate-method", "LocateMethod", "method",
     lambda m, v, p: locate(m, DATA, method=v, progress=False), (locate, "method")),
    ("LocateConfig-reduce", "Reduce", "reduce",
     lambda m, v, p: LocateConfig(reduce=v), (LocateConfig, "reduce")),
    ("rank_neurons-method", "LocateMethod", "method",
     lambda m, v, p: rank_neurons(m, DATA, method=v, progress=False), (rank_neurons, "method")),
    ("iterative_ranking-reduce", "Reduce", "reduce",
     lambda m, v, p: iterative_ranking(m, DATA, chunk=1, rounds=1, reduce=v, progress=False),
     (iterative_ranking, "reduce")),
    ("contrastive_scores-reduce", "Reduce", "reduce",
     lambda m, v, p: contrastive_scores(torch.zeros(2, 3), {"o": torch.zeros(2, 3)}, reduce=v),
     (contrastive_scores, "reduce")),
]  # fmt: skip


@pytest.mark.parametrize(
    "alias_name,name,call,bad",
    [(*row[1:4], row[5] if len(row) > 5 else BAD) for row in OPTIONS],
    ids=[row[0] for row in OPTIONS],
)
def test_an_unknown_option_is_refused_naming_the_parameter_and_the_allowed_values(
    model, tmp_path, alias_name, name, call, bad
):
    allowed = options.options(getattr(options, alias_name))
    listed = ", ".join(repr(v) for v in allowed)
    with pytest.raises(ValueError, match=re.escape(f"{name} must be one of {listed}")) as error:
        call(model, bad, tmp_path)
    assert str(error.value).endswith(f"got {bad!r}")


@pytest.mark.parametrize(
    "alias_name,target",
    [(row[1], row[4]) for row in OPTIONS if row[4] is not None],
    ids=[row[0] for row in OPTIONS if row[4] is not None],
)
def test_every_option_is_annotated_with_its_alias(alias_name, target):
    function, parameter = target
    annotation = inspect.signature(function).parameters[parameter].annotation
    assert annotation == alias_name  # the modules use postponed annotations: a string


def test_check_option_returns_the_value_and_refuses_non_strings():
    assert check_option("pre", options.Site, "site") == "pre"
    with pytest.raises(ValueError, match=r"site must be one of 'post', 'pre', got None"):
        check_option(None, options.Site, "site")
    with pytest.raises(ValueError, match=r"\(why not\), got 'x'"):
        check_option("x", options.Site, "site", note="why not")
    with pytest.raises(TypeError, match="not a Literal"):
        options.options(str)


def test_no_module_keeps_a_tuple_of_an_aliases_values():
    """The legacy tuples (``METHODS = get_args(AttributionMethod)``, ...) go: the alias is the
    one place, and ``options.options(alias)`` its values."""
    aliases = {n for n in dir(options) if n[:1].isupper() and n != "TypeVar"}
    tuples = re.compile(r"^\w+(: [^=]+)? = (typing\.)?get_args\((\w+)\)", re.MULTILINE)
    found = [
        f"{path.relative_to(PACKAGE).as_posix()}: {m.group(0)}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for m in tuples.finditer(path.read_text())
        if m.group(3) in aliases
    ]
    assert not found, found
    from tl_capability.sites import SiteKind

    assert SiteKind == options.Site


_INT, _FRACTION, _RANGE = options.check_positive_int, options.check_fraction, options.check_range


@pytest.mark.parametrize(
    "check,value,message",
    [
        (partial(_INT, name="rounds"), 2.5, "rounds must be a positive integer, got 2.5"),
        (partial(_INT, name="rounds"), True, "got True"),
        (partial(_INT, name="n", minimum=0), -1, "n must be an integer of at least 0"),
        (partial(_FRACTION, name="f"), 0, "f must be a finite number in (0, 1], got 0"),
        (partial(_FRACTION, name="f", zero_ok=True, one_ok=False), 1.0, "in [0, 1)"),
        (partial(_RANGE, name="w", low=0.0), float("nan"), "w must be a finite number in [0, inf)"),
        (partial(_RANGE, name="d", low=0, high=100, low_open=True, unit=" pt"), 0, "(0, 100] pt"),
        (partial(_RANGE, name="x"), "3", "x must be a finite number, got '3'"),
    ],
)  # fmt: skip
def test_the_number_checks_refuse_in_one_wording(check, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check(value)


def test_the_number_checks_return_the_value():
    assert options.check_positive_int(torch.tensor(3), "k") == 3
    assert options.check_positive_int(0, "n", minimum=0) == 0
    assert options.check_fraction(1, "f") == 1.0
    assert options.check_fraction(0, "f", zero_ok=True) == 0.0
    assert options.check_range(2, "x", 0.0) == 2.0


def test_only_options_words_the_refusal():
    """Validation stays in one place: no other module raises "must be one of" by itself."""
    wording = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name != "options.py" and "must be one of" in path.read_text():
            wording.append(name)
    assert not wording, wording
