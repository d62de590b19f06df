"""The zoo's training script, on a tiny model trained for 2 steps: what it saves, what it
reports, and that a seed fixes the run."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tl_capability.zoo import train as trainer
from tl_capability.zoo.tasks import TASKS

pytestmark = pytest.mark.core

TINY = dict(n_layer=1, n_embd=16, n_head=2, n_inner=32)


def _train(out, family="gpt2", seed=0, eval_every=1):
    return trainer.train(
        out, steps=2, batch_size=4, seed=seed, eval_every=eval_every, architecture=TINY,
        family=family,
    )  # fmt: skip


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_two_steps_save_a_model_that_loads_back_with_what_it_was_trained_on(
    tmp_path, capsys, family
):
    out = tmp_path / family
    accs = _train(out, family)
    assert set(accs) == set(TASKS) and all(0 <= a <= 1 for a in accs.values())
    assert capsys.readouterr().out.count("step ") == 2  # a line per evaluation
    meta = json.loads((out / "training.json").read_text())
    assert meta["family"] == family and meta["dropout"] == 0.0
    assert meta["architecture"] == trainer.ARCHITECTURE | TINY
    assert (meta["steps"], meta["batch_size"], meta["seed"]) == (2, 4, 0)
    assert meta["test_accuracy"] == accs
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.model_type == family and model.config.num_hidden_layers == 1
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.get_vocab() == trainer.build_tokenizer().get_vocab()
    examples = TASKS["choice"].sample(1000, "test", seed=777)  # the final evaluation's samples
    assert trainer.exact_match(model, tokenizer, examples) == accs["choice"]


def test_a_seed_fixes_the_run(tmp_path):
    weights = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        _train(tmp_path / name, seed=seed, eval_every=2)
        model = AutoModelForCausalLM.from_pretrained(tmp_path / name)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def test_an_unknown_family_is_refused():
    with pytest.raises(ValueError, match="family must be 'gpt2' or 'llama', got 'bert'"):
        trainer.build_model(trainer.build_tokenizer(), trainer.ARCHITECTURE, "bert", 0.0)
