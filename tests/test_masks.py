"""Neuron masks: selection, algebra, metrics, placebos, persistence."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tl_capability.masks import NeuronMask, coarse_masks, random_controls, refine, select

pytestmark = pytest.mark.core

SHAPE = (3, 16)


def masks(shape=SHAPE):
    return st.lists(st.booleans(), min_size=shape[0] * shape[1], max_size=shape[0] * shape[1]).map(
        lambda bits: NeuronMask(torch.tensor(bits).view(*shape))
    )


@given(masks(), masks())
def test_overlap_and_iou_are_symmetric_bounded_and_ordered(a, b):
    assert a.overlap(b) == pytest.approx(b.overlap(a))
    assert a.iou(b) == pytest.approx(b.iou(a))
    assert 0.0 <= a.iou(b) <= a.overlap(b) + 1e-12 <= 1.0 + 1e-12
    assert a.overlap(a) == 1.0 and a.iou(a) == 1.0


@given(masks(), masks(), masks())
def test_set_algebra_laws(a, b, c):
    assert ~(a | b) == (~a & ~b)
    assert ~(a & b) == (~a | ~b)
    assert (a - b) == (a & ~b)
    assert (a & (b | c)) == ((a & b) | (a & c))
    assert len(a | b) == len(a) + len(b) - len(a & b)
    assert ~~a == a


@settings(max_examples=25)
@given(masks(), st.integers(0, 10_000))
def test_random_like_keeps_per_layer_counts(a, seed):
    r = a.random_like(seed=seed)
    assert r.per_layer() == a.per_layer()
    assert r == a.random_like(seed=seed)


def sparse_masks(shape=SHAPE, max_size=12):
    """Masks of at most ``max_size`` neurons (room is left to draw controls beside them)."""
    pairs = st.tuples(st.integers(0, shape[0] - 1), st.integers(0, shape[1] - 1))
    return st.sets(pairs, max_size=max_size).map(
        lambda chosen: NeuronMask.from_indices(sorted(chosen), *shape)
    )


@settings(max_examples=40, deadline=None)
@given(masks(), st.integers(0, 10_000), st.integers(0, 4))
def test_random_controls_keep_per_layer_counts_and_follow_the_seed(a, seed, n):
    sets = random_controls(a, n, seed=seed)
    assert len(sets) == n
    for i, control in enumerate(sets):
        assert control.per_layer() == a.per_layer()
        assert control == a.random_like(seed=seed + i)  # set i is seeded seed + i
        assert control.selection["seed"] == seed + i and control.site == a.site
    assert random_controls(a, n, seed=seed) == sets  # deterministic
    assert random_controls(a, n + 2, seed=seed)[:n] == sets  # more sets extend the first ones


@settings(max_examples=40, deadline=None)
@given(sparse_masks(), sparse_masks(), st.integers(0, 10_000), st.booleans())
def test_random_controls_never_draw_excluded_neurons(a, excluded, seed, per_layer):
    free = (~excluded.tensor).sum(1).tolist()
    if per_layer:
        assume(all(c <= f for c, f in zip(a.per_layer(), free, strict=True)))
    sets = random_controls(a, 3, seed=seed, per_layer=per_layer, exclude=excluded)
    for control in sets:
        assert not (control.tensor & excluded.tensor).any()
        if per_layer:
            assert control.per_layer() == a.per_layer()
        else:
            assert len(control) == len(a)
    assert random_controls(a, 3, seed=seed, per_layer=per_layer, exclude=excluded) == sets


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.booleans(), st.integers(8, 40))
def test_random_controls_differ_between_seeds(seed, per_layer, size):
    # At least 8 of 256 neurons: two seeds drawing the same set is astronomically unlikely
    # (with 1 neuron it happens once in 256 and hypothesis finds it).
    tensor = torch.zeros(4, 64, dtype=torch.bool)
    tensor[:, :8] = True  # 8 of 64 per layer: two equal draws are astronomically unlikely
    a = NeuronMask(tensor)
    kwargs = {} if per_layer else {"per_layer": False, "size": size}
    first, second = random_controls(a, 2, seed=seed, **kwargs)
    assert first != second
    assert random_controls(a, 1, seed=seed + 1, **kwargs)[0] == second
    assert random_controls(a, 1, seed=seed + 7, **kwargs)[0] != first
    if not per_layer:
        assert len(first) == size


def test_random_controls_anywhere_and_their_errors():
    top = NeuronMask.from_indices([(0, 0), (0, 1), (0, 2)], *SHAPE)
    (anywhere,) = random_controls(top, 1, seed=0, per_layer=False, exclude=top, size=45)
    assert len(anywhere) == 45 and anywhere == ~top  # every other neuron: nothing else fits
    assert random_controls(top, 0, seed=0) == ()
    with pytest.raises(ValueError, match="an integer of at least 0"):
        random_controls(top, -1, seed=0)
    with pytest.raises(ValueError, match="size is for per_layer=False"):
        random_controls(top, 1, seed=0, size=3)
    with pytest.raises(ValueError, match="46 neurons asked for, 45 left"):
        random_controls(top, 1, seed=0, per_layer=False, exclude=top, size=46)
    full_layer = NeuronMask.from_indices([(0, j) for j in range(14)], *SHAPE)  # 14 > 16 - 3
    with pytest.raises(ValueError, match=r"too few neurons left .* layers \[0\]"):
        random_controls(full_layer, 1, seed=0, exclude=top)
    with pytest.raises(TypeError):
        random_controls(top, 1, seed=0, exclude=top.tensor)


@settings(max_examples=25, deadline=None)
@given(masks())
def test_save_load_round_trip(tmp_path_factory, a):
    path = tmp_path_factory.mktemp("mask")
    a2 = NeuronMask(a.tensor, "m", "post", {"rule": "sigma", "value": 3.0})
    a2.save(path)
    back = NeuronMask.load(path)
    assert back == a2 and back.selection == a2.selection and back.model_name == "m"


def test_basic_accessors():
    m = NeuronMask.from_indices([(0, 1), (2, 5), (2, 7)], *SHAPE)
    assert len(m) == 3 and m.per_layer() == [1, 0, 2]
    assert m.indices().tolist() == [[0, 1], [2, 5], [2, 7]]
    assert m.fraction == 3 / 48
    assert NeuronMask.empty(*SHAPE).overlap(NeuronMask.empty(*SHAPE)) == 1.0
    assert m.overlap(NeuronMask.empty(*SHAPE)) == 0.0
    with pytest.raises(ValueError, match="out of range"):
        NeuronMask.from_indices([(3, 0)], *SHAPE)
    with pytest.raises(ValueError, match="2-D bool"):
        NeuronMask(torch.zeros(3, 4))


def test_foreign_masks_are_refused():
    a, b = NeuronMask.empty(3, 16), NeuronMask.empty(4, 16)
    with pytest.raises(ValueError, match="4 layers of 16 neurons .*not 3 x 16"):
        a & b
    with pytest.raises(ValueError, match="site"):
        a | NeuronMask.empty(3, 16, site="pre")


def test_selection_rules():
    values = torch.zeros(*SHAPE)
    values[1, 3] = 10.0
    values[2, 0] = -8.0
    values[0, 5] = 1.0
    # std = 1.89, mean = 0.06: only 10 and -8 are more than 2 or 3 std from the mean
    assert select(values, sigma=3, side="both").indices().tolist() == [[1, 3], [2, 0]]
    assert select(values, sigma=3).indices().tolist() == [[1, 3]]  # positive side by default
    assert select(values, sigma=3, side="negative").indices().tolist() == [[2, 0]]
    default = select(values)
    assert default.indices().tolist() == [[1, 3]]
    assert default.selection["value"] == 2.0 and default.selection["side"] == "positive"
    assert select(values, top_k=2).indices().tolist() == [[0, 5], [1, 3]]
    assert select(values, top_k=2, side="both").indices().tolist() == [[1, 3], [2, 0]]
    assert select(values, top_k=1, side="negative").indices().tolist() == [[2, 0]]
    assert select(values, fraction_of_max=0.05).indices().tolist() == [[0, 5], [1, 3]]
    assert len(select(values, quantile=1.0)) == 1
    with pytest.raises(ValueError, match="side"):
        select(values, side="up")
    with pytest.raises(ValueError, match="one selection rule"):
        select(values, sigma=3, top_k=2)
    with pytest.raises(ValueError, match="fraction_of_max"):
        select(values, fraction_of_max=2.0)


def test_refine_keeps_shared_neurons_and_removes_negatives():
    p = [
        NeuronMask.from_indices(ix, *SHAPE)
        for ix in ([(0, 1), (1, 2), (2, 3)], [(0, 1), (1, 2)], [(0, 1), (2, 9)], [(0, 1), (1, 2)])
    ]
    kept = refine(p, share=0.7)
    assert kept.indices().tolist() == [[0, 1], [1, 2]]  # in 4/4 and 3/4 > 0.7 of prompts
    assert refine(p, share=0.75).indices().tolist() == [[0, 1]]  # strictly more than p
    neg = NeuronMask.from_indices([(1, 2)], *SHAPE)
    assert refine(p, share=0.7, negatives=[neg]).indices().tolist() == [[0, 1]]
    with pytest.raises(ValueError):
        refine([])


def test_coarse_masks_per_prompt(model):
    from tests.attribution.test_attribute import DATA
    from tl_capability.attribution import attribute

    scores = attribute(model, DATA, "grad_x_act", per_sample=True, progress=False)
    coarse = coarse_masks(scores, 0.2)
    assert len(coarse) == len(DATA)
    for m, s in zip(coarse, scores.per_sample, strict=True):
        assert torch.equal(m.tensor, s > 0.2 * s.max())
    with pytest.raises(ValueError, match="per_sample"):
        coarse_masks(attribute(model, DATA, "grad_x_act", progress=False))


def test_algebra_with_a_non_mask_is_a_type_error():
    with pytest.raises(TypeError, match="expected a NeuronMask"):
        NeuronMask.empty(*SHAPE) & torch.zeros(*SHAPE, dtype=torch.bool)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_select_refuses_non_finite_scores(bad):
    scores = torch.zeros(2, 8)
    scores[1, 3] = bad
    for rule in (dict(sigma=2.0), dict(top_k=1), dict(quantile=0.9)):
        with pytest.raises(ValueError, match="NaN or infinite"):
            select(scores, **rule)


# ---------------------------------------------------------------------- files


def _saved(tmp_path):
    mask = NeuronMask.from_indices([(0, 1), (2, 5)], *SHAPE, model_name="m")
    mask.save(tmp_path / "m")
    return mask


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(site="gate"), "site"),
        (dict(site=None), "site"),
        (dict(count=7), "count"),
        (dict(count="2"), "count"),
        (dict(n_layers=4), "n_layers"),
        (dict(selection=[1]), "selection"),
    ],
)
def test_mask_load_validates_the_json(tmp_path, change, match):
    """A bogus site or a count that disagrees with the tensor used to load silently."""
    import json

    _saved(tmp_path)
    info = json.loads((tmp_path / "m" / "mask.json").read_text())
    info.update(change)
    (tmp_path / "m" / "mask.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=match) as err:
        NeuronMask.load(tmp_path / "m")
    assert str(tmp_path / "m") in str(err.value)


def test_a_mask_whose_checksum_was_deleted_is_refused(tmp_path):
    """A swapped tensor whose checksum entry was deleted loaded: a file written with a save_id
    always carries its checksum, so a missing one means the file was changed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    _saved(tmp_path)
    path = tmp_path / "m" / "mask.safetensors"
    with safe_open(path, framework="pt") as f:
        header = dict(f.metadata())
    del header["sha256"]
    swapped = NeuronMask.from_indices([(1, 1), (2, 6)], *SHAPE).tensor  # same count
    save_file({"mask": swapped}, path, metadata=header)
    with pytest.raises(ValueError, match="checksum"):
        NeuronMask.load(tmp_path / "m")


def test_mask_load_refuses_a_non_bool_tensor_and_unreadable_files(tmp_path):
    from safetensors.torch import save_file

    _saved(tmp_path)
    save_file({"mask": torch.ones(*SHAPE)}, tmp_path / "m" / "mask.safetensors")
    with pytest.raises(ValueError, match="mask.safetensors"):
        NeuronMask.load(tmp_path / "m")
    _saved(tmp_path)
    (tmp_path / "m" / "mask.json").write_text("[")
    with pytest.raises(ValueError, match="mask.json"):
        NeuronMask.load(tmp_path / "m")


def test_mask_save_is_atomic_across_both_files(tmp_path, request):
    """A failure between the tensor file and the JSON used to leave a mismatched pair."""
    first = _saved(tmp_path)
    monkeypatch = request.getfixturevalue("json_writes_fail")
    with pytest.raises(OSError, match="disk full"):
        NeuronMask.from_indices([(1, 1)], *SHAPE, site="pre").save(tmp_path / "m")
    monkeypatch.undo()
    back = NeuronMask.load(tmp_path / "m")
    assert back == first and back.model_name == "m"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["mask.json", "mask.safetensors"]
