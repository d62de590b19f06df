"""Tidy experiment results: rows of plain values, a pandas frame, a markdown table, intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Table:
    """Rows of one experiment, each a dict of plain values with the same keys.

    Attributes:
        title: What the table shows.
        rows: The results.
    """

    title: str
    rows: tuple[dict[str, Any], ...]

    def to_frame(self) -> Any:
        """The rows as a ``pandas.DataFrame``."""
        import pandas as pd

        return pd.DataFrame(list(self.rows))

    def to_markdown(self, floatfmt: str = ".3g") -> str:
        """The rows as a markdown table under a ``###`` title."""
        from tabulate import tabulate

        body = tabulate(list(self.rows), headers="keys", tablefmt="github", floatfmt=floatfmt)
        return f"### {self.title}\n\n{body}\n"
