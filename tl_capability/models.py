"""Loading a model by name for the command line and the tutorials: a zoo model, a local
Hugging Face directory, or a hub name.

TransformerLens 4.x loads everything through ``TransformerBridge.boot_transformers`` (a local
directory works offline); 3.x through ``HookedTransformer.from_pretrained``, which knows only the
models TransformerLens supports by name. Either way the model comes back in eval mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tl_capability.options import DType, check_option
from tl_capability.sites import transformer_lens_has

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_model(name: str, *, device: str | None = None, dtype: DType | None = None) -> Any:
    """Loads a zoo model, a local model directory or a hub name as a TransformerLens model.

    Args:
        name: ``"zoo"`` (the default zoo model), ``"zoo:NAME"`` (one of
            [`tl_capability.zoo.model_names`][tl_capability.zoo.model_names], e.g. ``"zoo:llama"``),
            a directory written by ``save_pretrained``, or a Hugging Face hub name (needs a network
            unless it is in the local cache).
        device: ``"cpu"``, ``"cuda"``, ... (default: the library's default, CPU).
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` (default: float32).

    Raises:
        ValueError: For an unknown dtype or zoo model name.
        FileNotFoundError: For a path-like name that does not exist, or a zoo model whose
            weights are missing.
    """
    if dtype is not None:
        check_option(dtype, DType, "dtype")
    if name == "zoo" or name.startswith("zoo:"):
        from tl_capability import zoo

        zoo_name = name.partition(":")[2] or zoo.DEFAULT_MODEL
        if zoo_name not in zoo.model_names():
            raise ValueError(
                f"unknown zoo model {zoo_name!r}; choose one of "
                + ", ".join(f"zoo:{n}" for n in zoo.model_names())
            )
        model = zoo.load_model(zoo_name, device=device)
        return model.to(_DTYPES[dtype]) if dtype else model
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise FileNotFoundError(f"no model directory at {name}")
    kwargs: dict[str, Any] = {}
    if device is not None:
        kwargs["device"] = device
    if dtype is not None:
        kwargs["dtype"] = _DTYPES[dtype]
    if transformer_lens_has("TransformerBridge"):
        from transformer_lens import TransformerBridge

        model = TransformerBridge.boot_transformers(str(Path(name).expanduser()), **kwargs)
    else:  # TransformerLens 3.x
        if looks_local:
            raise ValueError(
                "TransformerLens 3.x loads models by their official names only; load a local "
                "directory with TransformerLens 4.x, or build the HookedTransformer yourself"
            )
        from transformer_lens import HookedTransformer

        model = HookedTransformer.from_pretrained(name, **kwargs)
    model.eval()
    return model
