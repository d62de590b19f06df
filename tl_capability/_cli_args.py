"""The command line's argument types and its staged output folder (private to
[`tl_capability.cli`][tl_capability.cli]): every value is checked as the library checks it
(``options``' checks), and before any model is loaded."""

from __future__ import annotations

import argparse
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tl_capability.options import DType, check_positive_int, check_range, options


def checked(check: Any, **bounds: Any) -> Any:
    """An argparse type from an ``options`` check: the text parsed as a number (an ``int``
    for ``check_positive_int``), refused in the check's words."""

    def parse(text: str) -> Any:
        try:
            value = int(text) if check is check_positive_int else float(text)
        except ValueError:
            value = text
        try:
            return check(value, "the value", **bounds)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("the value ")) from None

    parse.__name__ = check.__name__  # argparse names the type in its messages
    return parse


positive_int = checked(check_positive_int)
count = checked(check_positive_int, minimum=0)
share = checked(check_range, low=0.0, high=1.0, low_open=True)
drop = checked(check_range, low=0.0, high=100.0, low_open=True, unit=" points")
tolerance = checked(check_range, low=0.0, high=100.0, unit=" points")


def device(text: str) -> str:
    """An argparse type: a device torch knows and this machine has (``cpu``, ``cuda``,
    ``cuda:1``, ``mps``, ...), checked before any model is loaded."""

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device ({exc})") from None
    available = {
        "cpu": lambda: True,
        "cuda": lambda: (
            torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
        ),
        "mps": lambda: torch.backends.mps.is_available(),
    }.get(device.type)
    if available is not None and not available():
        raise argparse.ArgumentTypeError(f"{text!r} is not available on this machine")
    return text


@contextmanager
def staged(out: str | Path) -> Iterator[Path]:
    """A temporary sibling of the folder ``out`` to write into, moved into place on success.

    On any exception (Ctrl-C included) the temporary folder, and any parent folder created for
    it, is removed: an interrupted command leaves no partial output. Files of an existing
    ``out`` that the command does not write are kept.
    """
    out = Path(out)
    created = next((p for p in reversed([out.parent, *out.parent.parents]) if not p.exists()), None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if not out.exists():
            os.replace(tmp, out)
            return
        for entry in tmp.iterdir():
            target = out / entry.name
            if entry.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def common_options(parser: argparse.ArgumentParser) -> None:
    """The options every command on a model and a dataset takes."""
    parser.add_argument(
        "--model",
        required=True,
        help="zoo (or zoo:gpt2, zoo:gpt2-dropout, zoo:llama), smollm2-135m, a GGUF file "
        "or a directory holding one, a local model directory, or a hub name",
    )
    parser.add_argument("--device", type=device, default=None, help="cpu, cuda, ... (default cpu)")
    parser.add_argument("--dtype", default=None, choices=options(DType))
    parser.add_argument("--split", default="test", help="dataset split to use")
    parser.add_argument("--n", type=positive_int, default=200, help="samples (default 200)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
