"""Tidy experiment results: typed rows, a pandas frame, a markdown table, intervals.

Every experiment returns a frozen dataclass derived from
[`Table`][tl_capability.tables.Table] (``.title``, ``.rows``, ``.to_frame()``,
``.to_markdown()``) whose rows are small frozen dataclasses with named, typed fields;
[`Row`][tl_capability.tables.Row] lets them also be read like the dicts of earlier
versions (``row["drop"]``, ``dict(row)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Row", "Table", "mean_ci"]

# Two-sided 95 % Student-t quantiles for 1..30 degrees of freedom (beyond: the normal 1.96).
_T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its 95 % confidence interval (Student t; 0 for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    return mean, t * math.sqrt(var / n)


class Row(Mapping[str, Any]):
    """Mixin of the row records: read-only dict access to a dataclass's fields.

    ``row["drop"]`` is ``row.drop``; ``dict(row)``, ``row.keys()``, ``"drop" in row`` work as on
    the dict rows of earlier versions. Equality and hashing stay the dataclass's own.
    """

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))  # type: ignore[arg-type]


def _as_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in row}


@dataclass(frozen=True)
class Table:
    """Rows of one experiment, each a record (a [`Row`][tl_capability.tables.Row] or a
    dict) with the same fields.

    The base of every experiment's result type; also usable on its own with dict rows.

    Attributes:
        title: What the table shows.
        rows: The results.
    """

    title: str
    rows: tuple[Mapping[str, Any], ...]

    def to_frame(self) -> Any:
        """The rows as a ``pandas.DataFrame`` (one column per field)."""
        import pandas as pd

        return pd.DataFrame([_as_dict(r) for r in self.rows])

    def to_markdown(self, floatfmt: str = ".3g") -> str:
        """The rows as a markdown table under a ``###`` title."""
        from tabulate import tabulate

        rows = [_as_dict(r) for r in self.rows]
        body = tabulate(rows, headers="keys", tablefmt="github", floatfmt=floatfmt)
        return f"### {self.title}\n\n{body}\n"
