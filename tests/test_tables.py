"""Tables: typed rows that read like dicts, and Student-t intervals."""

import pytest

from tl_capability.experiments import (
    EraseResult,
    EraseRow,
    Table,
    mean_ci,
)


def test_mean_ci():
    assert mean_ci([2.0]) == (2.0, 0.0)
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * (1 / 3) ** 0.5)
    with pytest.raises(ValueError):
        mean_ci([])


def test_rows_are_typed_and_still_read_like_dicts():
    row = EraseRow("a", 2.0, 3, "b", 90.0, 40.0, 50.0, 1.0, 0.5)
    assert row.drop == row["drop"] == 50.0
    assert dict(row) == {
        "located": "a", "sigma": 2.0, "neurons": 3, "evaluated": "b", "base": 90.0,
        "erased": 40.0, "drop": 50.0, "random_drop": 1.0, "random_ci95": 0.5,
    }  # fmt: skip
    assert "drop" in row and "nope" not in row and row.get("nope") is None
    with pytest.raises(KeyError):
        row["nope"]
    with pytest.raises(AttributeError):
        row.drop = 0.0  # frozen
    result = EraseResult("t", (row,), (2.0,), 1, 0)
    assert isinstance(result, Table)
    assert list(result.to_frame().columns) == list(row)
    assert result.to_frame()["drop"].tolist() == [50.0]
    assert result.to_markdown().startswith("### t\n\n| located")
    assert result.cell("a", "b", 2.0) is row and result.at(3.0) == ()
