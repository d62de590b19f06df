"""Reports only render: figures read the typed results' fields, and nothing is computed."""

import ast
from pathlib import Path

import pytest
import torch

from tl_capability import report as report_module
from tl_capability import zoo
from tl_capability.experiments import (
    AmplifyResult,
    AmplifyRow,
    EnhancementResult,
    EnhancementRow,
    EraseResult,
    EraseRow,
    LinearityResult,
    LinearityRow,
    NeurgradAgreementResult,
    OverlapMatrixResult,
    OverlapRow,
    SplitOverlapResult,
    SplitOverlapRow,
    localization_suite,
)
from tl_capability.masks import NeuronMask
from tl_capability.report import (
    Report,
    add_localization,
    enhancement_curves,
    erase_matrix,
    linearity_histogram,
    neg_scatter,
    overlap_heatmap,
    sigma_curves,
)

#: Functions that compute (run a model, attribute, select, run an experiment), by module.
COMPUTING = {
    "tl_capability.evaluate": ("accuracy", "answer_correct", "answer_probability"),
    "tl_capability.attribution": ("attribute",),
    "tl_capability.interventions": ("ablate",),
    "tl_capability.masks": ("select", "random_controls"),
    "tl_capability.experiments": (
        "localization_suite", "split_overlap", "erase", "amplify", "overlap_matrix",
        "locate_scores",
    ),
    "tl_capability.experiments.overlap": (
        "attribute", "select", "split_overlap", "overlap_matrix", "locate_scores",
    ),
    "tl_capability.experiments.erase": (
        "accuracy", "ablate", "select", "random_controls", "erase", "amplify", "locate_scores",
        "_matrix",
    ),
    "tl_capability.experiments.suite": (
        "accuracy", "select", "localization_suite", "split_overlap", "overlap_matrix",
        "locate_scores", "_matrix",
    ),
}  # fmt: skip


def small_localization(model):
    locate = {n: zoo.dataset(n, n=12, split="train") for n in ("sentiment", "sort")}
    evaluate = {n: zoo.dataset(n, n=16, seed=4) for n in ("sentiment", "sort")}
    kwargs = {"sigmas": (2.0, 3.0), "n_random": 1, "method": "grad_x_act"}
    return locate, evaluate, kwargs


def test_rendering_a_localization_computes_nothing(zoo_model, tmp_path, monkeypatch):
    import importlib

    locate, evaluate, kwargs = small_localization(zoo_model)
    found = localization_suite(zoo_model, locate, evaluate, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("report.py computed something")

    for module, names in COMPUTING.items():
        for name in names:
            monkeypatch.setattr(importlib.import_module(module), name, forbidden)
    monkeypatch.setattr(type(zoo_model), "forward", forbidden)
    report = Report("test")
    assert add_localization(report, found) is found
    index = report.save(tmp_path).read_text()
    for table in (found.accuracy, found.halves, found.erased):
        assert table.to_markdown() in index
    for png in ("neurons", "erase-matrix", "sigma", "amplify-matrix", "overlap-matrix"):
        assert f"({png}.png)" in index and (tmp_path / f"{png}.png").stat().st_size > 1000
    assert "Amplifying (×2)" in index
    with pytest.raises(TypeError, match="positional argument"):
        add_localization(report, found, 3)  # the call of earlier versions is gone


def test_report_module_holds_no_computing_function():
    computing = {name for names in COMPUTING.values() for name in names}
    assert not computing & set(vars(report_module))


def test_report_never_imports_the_experiments():
    """It renders only: results come in, nothing is computed, so it needs no experiment."""
    source = Path(report_module.__file__).read_text()
    assert "tl_capability.experiments" not in {
        node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)
    }
    assert "import tl_capability.experiments" not in source


def _grid(fig):
    return torch.as_tensor(fig.axes[0].images[0].get_array().data)


@pytest.mark.core
def test_matrices_read_the_rows_fields():
    rows = (
        EraseRow("a", 2.0, 5, "a", 90.0, 10.0, 80.0, 1.0, 0.5),
        EraseRow("a", 2.0, 5, "b", 90.0, 85.0, 5.0, 0.0, 0.0),
        EraseRow("b", 2.0, 7, "a", 90.0, 60.0, 30.0, 2.0, 1.0),
        EraseRow("b", 2.0, 7, "b", 80.0, 20.0, 60.0, 1.0, 1.0),
        EraseRow("a", 3.0, 2, "a", 90.0, 50.0, 40.0, 0.0, 0.0),
    )
    erased = EraseResult("e", rows, (2.0, 3.0), 1, 0)
    assert _grid(erase_matrix(erased)).tolist() == [[80.0, 5.0], [30.0, 60.0]]  # first σ
    assert _grid(erase_matrix(erased, 3.0)).tolist() == [[40.0]]
    amplified = AmplifyResult(
        "x", (AmplifyRow("a", 2.0, 5, "b", 50.0, 70.0, -20.0, 0.0, 0.0),), (2.0,), 1, 0, 2.0
    )
    assert _grid(erase_matrix(amplified)).tolist() == [[-20.0]]
    overlaps = OverlapMatrixResult(
        "o",
        (OverlapRow("a", "a", 1.0, 1.0), OverlapRow("a", "b", 0.25, 0.1),
         OverlapRow("b", "a", 0.25, 0.1), OverlapRow("b", "b", 1.0, 1.0)),
        ("a", "b"),
    )  # fmt: skip
    assert _grid(overlap_heatmap(overlaps)).tolist() == [[1.0, 0.25], [0.25, 1.0]]
    halves = SplitOverlapResult(
        "h",
        (SplitOverlapRow("a", 3.0, 4, 6, 0.02, 0.5, 0.3),
         SplitOverlapRow("a", 2.0, 9, 11, 0.04, 0.7, 0.5)),
        (2.0, 3.0),
        0,
    )  # fmt: skip
    fig = sigma_curves(erased, halves)
    own, random, *_ = fig.axes[0].lines
    assert list(own.get_xdata()) == [2.0, 3.0] and list(own.get_ydata()) == [80.0, 40.0]
    assert list(random.get_ydata()) == [1.0, 0.0]
    assert list(fig.axes[1].lines[0].get_ydata()) == [0.7, 0.5]
    assert list(fig.axes[2].lines[0].get_ydata()) == pytest.approx([4.0, 2.0])


@pytest.mark.core
def test_enhancement_curves_take_the_dataset_from_the_result_not_the_title():
    mask = NeuronMask.from_indices([(0, 1)], 2, 4)
    rows = (
        EnhancementRow("located", 1, 0, 20.0),
        EnhancementRow("located", 1, 3, 70.0),
        EnhancementRow("random", 1, 0, 20.0),
        EnhancementRow("random", 1, 3, 30.0),
    )
    result = EnhancementResult("Repair (a note) of a model", rows, "addition", mask, mask, 1.0, 0)
    ax = enhancement_curves(result).axes[0]
    assert ax.get_title() == "addition"
    assert [list(line.get_ydata()) for line in ax.lines] == [[20.0, 70.0], [20.0, 30.0]]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["located (1)", "random (1)"]


@pytest.mark.core
def test_linearity_histogram_and_neg_scatter_read_the_results():
    top = NeuronMask.from_indices([(0, 0), (0, 1)], 1, 4)
    rows = (
        LinearityRow("top", 0, 0, 0.95, 0.1),
        LinearityRow("top", 0, 1, 0.85, 0.2),
        LinearityRow("random", 0, 3, 0.05, 0.0),
    )
    result = LinearityResult("l", rows, "addition", top, ~top, 0)
    ax = linearity_histogram(result).axes[0]
    heights = [sum(p.get_height() for p in c) for c in ax.containers]
    assert heights == [2, 1]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["top (2)", "random (1)"]
    predicted, measured = torch.tensor([[1.0, -2.0]]), torch.tensor([[2.0, -4.0]])
    agreement = NeurgradAgreementResult(
        "n", (), torch.tensor([[0, 0], [0, 1]]), predicted, measured
    )
    from_result = neg_scatter(agreement).axes[0]
    from_tensors = neg_scatter(predicted, measured).axes[0]
    assert from_result.get_legend().get_texts()[0].get_text() == "fit through 0: slope 2.00"
    assert (
        from_result.collections[0].get_offsets().tolist()
        == from_tensors.collections[0].get_offsets().tolist()
        == [[1.0, 2.0], [-2.0, -4.0]]
    )
    with pytest.raises(TypeError):
        neg_scatter(predicted)
