"""Loading a model by name for the command line and the tutorials: a zoo model, a GGUF file, a
local Hugging Face directory, or a hub name.

TransformerLens 4.x loads everything through ``TransformerBridge.boot_transformers`` (a local
directory works offline); 3.x through ``HookedTransformer.from_pretrained``, which knows only the
models TransformerLens supports by name. Either way the model comes back in eval mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tl_capability import zoo
from tl_capability.gguf_files import dequantize, find_gguf
from tl_capability.options import DType, check_option
from tl_capability.sites import transformer_lens_has

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_model(name: str | Path, *, device: str | None = None, dtype: DType | None = None) -> Any:
    """Loads a zoo model, a GGUF file, a local model directory or a hub name as a
    TransformerLens model.

    Args:
        name: ``"zoo"`` (the default zoo model), ``"zoo:NAME"`` (one of
            [`tl_capability.zoo.model_names`][tl_capability.zoo.model_names], e.g. ``"zoo:llama"``),
            a pretrained zoo model (``"smollm2-135m"``, also as ``"zoo:smollm2-135m"``), a
            ``.gguf`` file or a directory holding one (dequantized once and cached, see
            [`tl_capability.gguf_files`][tl_capability.gguf_files]), a directory written by
            ``save_pretrained``, or a Hugging Face hub name (needs a network unless it is in the
            local cache).
        device: ``"cpu"``, ``"cuda"``, ... (default: the library's default, CPU).
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` (default: float32).

    Raises:
        TypeError: When ``name`` is not a string or a path.
        ValueError: For an empty name, an unknown dtype or zoo model name, or a GGUF file of an
            architecture transformers cannot dequantize.
        FileNotFoundError: For a path-like name that does not exist, or a zoo model whose
            weights are missing.
        ImportError: For a GGUF file or pretrained zoo model whose packages are missing.
    """
    if not isinstance(name, (str, Path)):
        raise TypeError(f"name must be a string or a path, got {type(name).__name__}")
    if dtype is not None:
        check_option(dtype, DType, "dtype")
    text = str(name)
    if not text.strip():
        raise ValueError("name is empty: give 'zoo', a model directory, a GGUF file or a hub name")
    if isinstance(name, str) and (name == "zoo" or name.startswith("zoo:")):
        zoo_name = name.partition(":")[2] or zoo.DEFAULT_MODEL
        known = zoo.model_names() + zoo.real_model_names()
        if zoo_name not in known:
            raise ValueError(
                f"unknown zoo model {zoo_name!r}; choose one of "
                + ", ".join(f"zoo:{n}" for n in known)
            )
        return _zoo(zoo_name, device, dtype)
    if isinstance(name, str) and name in zoo.real_model_names():
        return _zoo(name, device, dtype)
    gguf = find_gguf(text)
    if gguf is not None:
        directory = dequantize(gguf, "bfloat16" if dtype == "bfloat16" else "float32")
        if not transformer_lens_has("TransformerBridge"):  # TL 3.x: GPT-2 and Llama files
            return _to(zoo._load_dir(directory, device=device, dtype=_zoo_dtype(dtype)), dtype)
        return _boot(directory, device=device, dtype=dtype, local=True)
    looks_local = (
        isinstance(name, Path)
        or text.startswith((".", "/", "~"))
        or text.lower().endswith(".gguf")  # no hub name ends so: a file that is not there
        or Path(text).exists()
    )
    if looks_local and not Path(text).expanduser().is_dir():
        raise FileNotFoundError(f"no model directory or GGUF file at {text}")
    return _boot(Path(text).expanduser() if looks_local else text, device, dtype, looks_local)


def _zoo(name: str, device: str | None, dtype: DType | None) -> Any:
    return _to(zoo.load_model(name, device=device, dtype=_zoo_dtype(dtype)), dtype)


def _zoo_dtype(dtype: DType | None) -> str | None:
    return "bfloat16" if dtype == "bfloat16" else None


def _to(model: Any, dtype: DType | None) -> Any:
    return model.to(_DTYPES[dtype]) if dtype == "float16" else model


def _boot(name: str | Path, device: str | None, dtype: DType | None, local: bool) -> Any:
    """A TransformerLens model of a local directory or a hub name, in eval mode."""
    kwargs: dict[str, Any] = {}
    if device is not None:
        kwargs["device"] = device
    if dtype is not None:
        kwargs["dtype"] = _DTYPES[dtype]
    # Imported here: which class exists depends on the installed TransformerLens generation.
    if transformer_lens_has("TransformerBridge"):
        from transformer_lens import TransformerBridge

        model = TransformerBridge.boot_transformers(str(name), **kwargs)
    else:  # TransformerLens 3.x
        if local:
            raise ValueError(
                "TransformerLens 3.x loads models by their official names only; load a local "
                "directory with TransformerLens 4.x, or build the HookedTransformer yourself"
            )
        from transformer_lens import HookedTransformer

        model = HookedTransformer.from_pretrained(str(name), **kwargs)
    model.eval()
    return model
