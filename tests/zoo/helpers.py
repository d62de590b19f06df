"""Helpers shared by the tests of this folder."""

import functools
from typing import Any

import torch

from tl_capability import zoo

ZOO = zoo.model_names()


# The family and training dropout of each shipped model.
EXPECTED = {"gpt2": ("gpt2", 0.0), "gpt2-dropout": ("gpt2", 0.1), "llama": ("llama", 0.0)}


@functools.cache
def _zoo(name: str) -> Any:
    return zoo.load_model(name)


def _hf_logits_and_mlp_post(hf: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The Hugging Face model's logits and, per layer, its MLP activation recomputed from the
    MLP's own modules: silu(gate_proj(x)) * up_proj(x) for Llama, gelu_new(c_fc(x)) for GPT-2."""
    llama = hf.config.model_type == "llama"
    layers = hf.model.layers if llama else hf.transformer.h
    outs: dict[tuple[int, str], torch.Tensor] = {}

    def record(key: tuple[int, str], module: Any, inputs: Any, output: torch.Tensor) -> None:
        outs[key] = output

    handles = [
        getattr(layer.mlp, n).register_forward_hook(functools.partial(record, (i, n)))
        for i, layer in enumerate(layers)
        for n in (("gate_proj", "up_proj") if llama else ("c_fc",))
    ]
    try:
        with torch.no_grad():
            logits = hf(tokens).logits
    finally:
        for h in handles:
            h.remove()
    if llama:
        silu = torch.nn.functional.silu
        return logits, [silu(outs[i, "gate_proj"]) * outs[i, "up_proj"] for i in range(len(layers))]
    gelu_new = functools.partial(torch.nn.functional.gelu, approximate="tanh")
    return logits, [gelu_new(outs[i, "c_fc"]) for i in range(len(layers))]


SHIPPED_TASKS = {
    "capitalize",
    "present-past",
    "singular-plural",
    "country-capital",
    "antonym",
    "english-french",
    "landmark-country",
    "person-occupation",
    "next_item",
}
