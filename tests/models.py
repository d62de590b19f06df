"""Tiny models for tests, built in well under a second, with no download.

``tiny_model`` gives a TransformerLens 4.x ``TransformerBridge`` (``boot_native``) or, when the
tests run under TransformerLens 3.x, a ``HookedTransformer``: the core tests run on both.
``save_hf_model`` writes a random-weight Hugging Face model of a named architecture with the
zoo's character tokenizer to a directory, for ``TransformerBridge.boot_transformers(dir)``.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from tl_capability.sites import transformer_lens_has
from tl_capability.zoo.train import build_tokenizer

HAS_HOOKED = transformer_lens_has("HookedTransformer")
HAS_BRIDGE = transformer_lens_has("TransformerBridge")
TL_MAJOR = 3 if HAS_HOOKED else 4


@functools.cache
def tokenizer_dir() -> Path:
    """The zoo's character-level tokenizer saved to disk (the bridge needs saved tokenizers)."""
    path = Path(tempfile.mkdtemp(prefix="tlc-tok-"))
    build_tokenizer().save_pretrained(path)
    return path


def char_tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(tokenizer_dir())


def tiny_model(
    n_layers: int = 2,
    d_model: int = 64,
    d_mlp: int = 128,
    n_heads: int = 4,
    n_ctx: int = 48,
    seed: int = 0,
    act_fn: str = "gelu",
    soft_cap: float | None = None,
) -> Any:
    """A random-weight model in eval mode, with the character tokenizer (``soft_cap``: a
    final logit soft-cap, as Gemma 2's)."""
    tok = char_tokenizer()
    kwargs = dict(
        n_layers=n_layers,
        d_model=d_model,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        d_mlp=d_mlp,
        d_vocab=len(tok),
        n_ctx=n_ctx,
        act_fn=act_fn,
        normalization_type="LN",
        seed=seed,
    )
    if soft_cap is not None:
        kwargs["output_logits_soft_cap"] = soft_cap
    if HAS_BRIDGE:
        from transformer_lens import TransformerBridge, TransformerBridgeConfig

        model = TransformerBridge.boot_native(TransformerBridgeConfig(**kwargs), tokenizer=tok)
    else:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        torch.manual_seed(seed)
        model = HookedTransformer(
            HookedTransformerConfig(**kwargs, default_prepend_bos=True), tokenizer=tok
        )
    return model.eval()


ARCHITECTURES = ("gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "opt", "qwen2")
GATED = ("llama", "mistral", "qwen2")


def hf_config(arch: str, vocab_size: int) -> Any:
    """A tiny config (2 layers, width 64, 128 neurons per layer) of one architecture."""
    import transformers as t

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    if arch == "gpt2":
        return t.GPT2Config(n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=128, **common)
    if arch == "gpt_neox":
        return t.GPTNeoXConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            **common,
        )
    if arch == "gpt_neo":  # a global layer, then a local one (GPT-Neo's window_size)
        return t.GPTNeoConfig(
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            attention_types=[[["global", "local"], 1]],
            **common,
        )
    if arch == "opt":  # width 32: TransformerLens reads OPT's d_mlp as 4 x width
        return t.OPTConfig(
            hidden_size=32,
            word_embed_proj_dim=32,
            ffn_dim=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            **common,
        )
    if arch == "bloom":  # not in ARCHITECTURES: ALiBi built from a 2-D mask (256 neurons)
        return t.BloomConfig(hidden_size=64, n_layer=2, n_head=4, **common)
    if arch == "xglm":  # not in ARCHITECTURES: its attention checks the mask's batch size
        return t.XGLMConfig(
            d_model=32,
            ffn_dim=128,
            num_layers=2,
            attention_heads=4,
            max_position_embeddings=64,
            **common,
        )
    if arch == "mpt":  # not in ARCHITECTURES: ALiBi, no key/value-cache path (128 neurons)
        return t.MptConfig(d_model=32, n_layers=2, n_heads=4, max_seq_len=64, **common)
    if arch == "openai_gpt":  # not in ARCHITECTURES: its bridge runs no blocks.N.hook_resid_post
        return t.OpenAIGPTConfig(n_embd=64, n_layer=2, n_head=4, n_positions=64, **common)
    if arch == "gptj":
        return t.GPTJConfig(
            n_positions=64, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_inner=128, **common
        )
    gated = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **common,
    )
    if arch == "llama":
        return t.LlamaConfig(**gated)
    if arch == "mistral":
        return t.MistralConfig(sliding_window=None, **gated)
    if arch == "bert":
        return t.BertConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            pad_token_id=1,
        )
    if arch == "qwen2":
        return t.Qwen2Config(use_sliding_window=False, tie_word_embeddings=False, **gated)
    if arch == "gemma2":  # not in ARCHITECTURES: a final logit soft-cap, tested on its own
        return t.Gemma2Config(head_dim=16, sliding_window=64, final_logit_softcapping=0.5, **gated)
    raise ValueError(arch)


def masked_lm_tokenizer() -> Any:
    """The character tokenizer plus BERT's special tokens ([MASK], [CLS], [SEP])."""
    tok = char_tokenizer()
    tok.add_special_tokens({"mask_token": "[MASK]", "cls_token": "[CLS]", "sep_token": "[SEP]"})
    return tok


def save_hf_model(arch: str, directory: Path, seed: int = 0, **config: Any) -> Path:
    """Writes a random-weight model of ``arch`` (its tiny config, changed by ``config``) and the
    character tokenizer to ``directory``."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    tok = masked_lm_tokenizer() if arch == "bert" else char_tokenizer()
    torch.manual_seed(seed)
    auto = AutoModelForMaskedLM if arch == "bert" else AutoModelForCausalLM
    settings = hf_config(arch, len(tok))
    for key, value in config.items():
        setattr(settings, key, value)
    model = auto.from_config(settings).eval()
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
