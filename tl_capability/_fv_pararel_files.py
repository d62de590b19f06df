"""Readers of the Function Vectors task files and PARAREL's T-REx facts and patterns, in their
original formats, with errors that name the file, line and what was expected.

Below both [`tl_capability.loaders`][tl_capability.loaders] (the full sets) and
[`tl_capability.zoo.real`][tl_capability.zoo.real] (the shipped parts), so neither imports the
other's layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_FV_EXPECTED = 'a Function Vectors task file: a JSON list of {"input": ..., "output": ...} objects'
_TREX_EXPECTED = (
    "T-REx facts as in PARAREL's data/trex_lms_vocab/P*.jsonl: one JSON object per line with "
    '"sub_label" and "obj_label"'
)
_PATTERNS_EXPECTED = (
    "PARAREL paraphrase patterns as in data/pattern_data/graphs_json/P*.jsonl: one JSON object "
    'per line with a "pattern" holding [X] and [Y] once each'
)


def _text(value: Any) -> str | None:
    """A stripped string from a string or an integer (``"5"`` and ``5`` alike), else None."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).strip() or None


def read_function_vectors(path: str | Path) -> list[tuple[str, str]]:
    """Reads a Function Vectors task file (``dataset_files/abstractive/<task>.json`` in
    ericwtodd/function_vectors) as ``(input, output)`` pairs, in file order.

    Args:
        path: The ``.json`` file: a list of ``{"input": ..., "output": ...}`` objects.

    Raises:
        FileNotFoundError: When there is no such file.
        ValueError: Naming the file and what was expected, when it is not JSON, not a list of
            such objects, or an entry's input or output is missing or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not JSON ({exc}); expected {_FV_EXPECTED}") from exc
    if not isinstance(entries, list) or not entries:
        raise ValueError(
            f"{path} holds a {type(entries).__name__}"
            f"{' (empty)' if isinstance(entries, list) else ''}; expected {_FV_EXPECTED}"
        )
    pairs = []
    for i, entry in enumerate(entries):
        fields = (
            (_text(entry.get("input")), _text(entry.get("output")))
            if isinstance(entry, dict)
            else (None, None)
        )
        if fields[0] is None or fields[1] is None:
            raise ValueError(f"{path}: entry {i} is {entry!r}; expected {_FV_EXPECTED}")
        pairs.append((fields[0], fields[1]))
    return pairs


def _json_lines(path: str | Path, expected: str) -> tuple[Path, list[tuple[int, Any]]]:
    """The file's non-empty lines, parsed, with their line numbers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}, line {number}, is not a JSON object ({exc}); expected {expected}"
            ) from exc
    if not rows:
        raise ValueError(f"{path} is empty; expected {expected}")
    return path, rows


def read_trex(path: str | Path) -> list[tuple[str, str]]:
    """Reads T-REx facts in PARAREL's format (``data/trex_lms_vocab/P*.jsonl``) as
    ``(subject, object)`` pairs (``sub_label``, ``obj_label``), in file order.

    Raises:
        FileNotFoundError: When there is no such file.
        ValueError: Naming the file, the line and what was expected, for a line that is not a
            JSON object with non-empty ``sub_label`` and ``obj_label``.
    """
    path, rows = _json_lines(path, _TREX_EXPECTED)
    facts = []
    for number, row in rows:
        fields = (
            (_text(row.get("sub_label")), _text(row.get("obj_label")))
            if isinstance(row, dict)
            else (None, None)
        )
        if fields[0] is None or fields[1] is None:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{path}, line {number}, has {keys}; expected {_TREX_EXPECTED}")
        facts.append((fields[0], fields[1]))
    return facts


def read_pararel_patterns(path: str | Path) -> list[str]:
    """Reads PARAREL's paraphrase patterns of one relation
    (``data/pattern_data/graphs_json/P*.jsonl``), in file order (``"The capital of [X] is
    [Y] ."``).

    Raises:
        FileNotFoundError: When there is no such file.
        ValueError: Naming the file, the line and what was expected, for a line without a
            pattern that holds ``[X]`` and ``[Y]`` once each.
    """
    path, rows = _json_lines(path, _PATTERNS_EXPECTED)
    patterns = []
    for number, row in rows:
        pattern = row.get("pattern") if isinstance(row, dict) else None
        if not isinstance(pattern, str) or pattern.count("[X]") != 1 or pattern.count("[Y]") != 1:
            shown = pattern if isinstance(pattern, str) else row
            raise ValueError(f"{path}, line {number}, has {shown!r}; expected {_PATTERNS_EXPECTED}")
        patterns.append(pattern)
    return patterns
