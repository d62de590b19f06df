"""Fixtures shared by the tests of this folder."""

from pathlib import Path

import pytest
import torch

from tl_capability.zoo import train as trainer


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def zoo_format_dir(request, tmp_path_factory) -> Path:
    """A tiny model of one zoo family built by the trainer, saved as the zoo saves its models.

    Its weights are redrawn large (norm weights too) so that a mis-converted weight, a wrong
    rotary convention or a swapped gate shows in the logits.
    """
    family = request.param
    directory = tmp_path_factory.mktemp(f"zoo-{family}")
    tokenizer = trainer.build_tokenizer()
    torch.manual_seed(0)
    arch = dict(n_layer=2, n_embd=64, n_head=4, n_inner=96, n_positions=32)
    hf = trainer.build_model(tokenizer, arch, family, dropout=0.0).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.3) if p.dim() >= 2 else p.uniform_(0.5, 1.5)
    hf.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE tokenizer that knows "hello" and " world" as single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["hello world"] * 50, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)
