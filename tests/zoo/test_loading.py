"""Loading the zoo's models: names, directories, eval mode, the Hugging Face activations."""

from typing import Any

import pytest
import torch

from tests.models import HAS_BRIDGE, HAS_HOOKED
from tests.zoo.helpers import EXPECTED, ZOO, _hf_logits_and_mlp_post, _zoo
from tl_capability import accuracy, models, zoo
from tl_capability.zoo import train as trainer

pytestmark = pytest.mark.core


def test_the_zoo_lists_its_models_and_keeps_the_default():
    assert ZOO == ["gpt2", "gpt2-dropout", "llama"] == list(EXPECTED)
    assert zoo.DEFAULT_MODEL == "gpt2"
    assert zoo.MODEL_DIR == zoo.model_dir() == zoo.model_dir("gpt2") == zoo.MODELS_DIR / "gpt2"
    assert trainer.MODEL_DIR == zoo.MODEL_DIR
    assert (zoo.MODEL_DIR / "model.safetensors").is_file()
    with pytest.raises(ValueError, match=r"unknown zoo model 'gpt5'.*'gpt2-dropout', 'llama'"):
        zoo.model_dir("gpt5")


@pytest.mark.parametrize("name", ZOO)
def test_loads_offline_in_eval_mode_with_a_tokenizer(name):
    zoo.import_backend()
    model = _zoo(name)
    assert not model.training
    tokens = model.to_tokens("12+34=")
    assert tokens.shape == (1, 7) and tokens[0, 0].item() == model.tokenizer.bos_token_id
    assert model.to_string(tokens[0, 1:]) == "12+34="


@pytest.mark.parametrize("name", ZOO)
def test_model_is_not_a_constant_answerer(name):
    """Sanity check on the accuracy above: wrong answers are scored wrong."""
    data = zoo.dataset("addition", n=50)
    wrong = type(data).from_pairs(data.prompts, [str(int(a) + 1) for a in data.answers])
    assert accuracy(_zoo(name), wrong) < 0.1


@pytest.mark.parametrize("name", ZOO)
def test_zoo_answers_are_deterministic(name):
    """Also checks that eval mode switches the dropout model's dropout off."""
    model = _zoo(name)
    tokens = model.to_tokens("37+48=")
    with torch.no_grad():
        a, b = model(tokens), model(tokens)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ZOO)
def test_training_info_records_the_family_and_the_accuracies(name):
    info = zoo.training_info(name)
    assert set(info["test_accuracy"]) == set(zoo.capability_names())
    assert info["architecture"]["n_layer"] >= 2
    assert (info["family"], info["dropout"]) == EXPECTED[name]
    assert zoo.loading._family(zoo.model_dir(name)) == info["family"]


def test_load_model_keeps_its_old_signature():
    """``load_model("hooked")``, from before the zoo had several models, still means the kind."""
    kind = "bridge" if HAS_BRIDGE else "hooked"
    for model in (zoo.load_model(kind), zoo.load_model(kind, "cpu")):
        assert not model.training
        assert model.cfg.d_mlp == zoo.training_info()["architecture"]["n_inner"]
    with pytest.raises(ValueError, match="is a kind, not a zoo model"):
        zoo.load_model("hooked", "bridge")
    with pytest.raises(ValueError, match="kind must be"):
        zoo.load_model("gpt2", kind="jax")


def test_unknown_and_missing_models(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"unknown zoo model 'gpt5'.*\['gpt2', 'gpt2-dropout'"):
        zoo.load_model("gpt5")
    monkeypatch.setattr(zoo.loading, "MODELS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="--out tl_capability/zoo/models/llama --family"):
        zoo.load_model("llama")
    with pytest.raises(FileNotFoundError, match="--dropout 0.1 --steps 6000 --seed 0"):
        zoo.training_info("gpt2-dropout")


def test_models_load_model_resolves_zoo_names(monkeypatch):
    default = models.load_model("zoo")
    assert not default.training and default.cfg.d_mlp == _zoo("gpt2").cfg.d_mlp
    with pytest.raises(ValueError, match="zoo:gpt2, zoo:gpt2-dropout, zoo:llama"):
        models.load_model("zoo:gpt5")
    calls = []

    def fake_load_model(
        name: str, kind: str = "auto", device: str | None = None, dtype: str | None = None
    ) -> Any:
        calls.append(name)
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(zoo, "load_model", fake_load_model)
    for name in ["zoo", *(f"zoo:{n}" for n in ZOO)]:
        models.load_model(name, dtype="float16")
    assert calls == ["gpt2", *ZOO]


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("bridge", marks=pytest.mark.skipif(not HAS_BRIDGE, reason="TL 4.x only")),
        pytest.param("hooked", marks=pytest.mark.skipif(not HAS_HOOKED, reason="TL 3.x only")),
    ],
)
def test_a_zoo_format_directory_loads_with_the_hugging_face_activations(zoo_format_dir, kind):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(zoo_format_dir).eval()
    model = zoo.loading._load_dir(zoo_format_dir, kind)
    assert not model.training
    tokens = model.to_tokens("12+34= rev abc:")
    expected_logits, expected_post = _hf_logits_and_mlp_post(hf, tokens)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: "hook_post" in n)
    assert expected_logits.abs().max() > 1  # large weights: the comparison means something
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-4)
    for layer, post in enumerate(expected_post):
        torch.testing.assert_close(cache[f"blocks.{layer}.mlp.hook_post"], post, rtol=0, atol=1e-4)


def test_a_directory_of_another_family_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="GPT-2 or Llama"):
        zoo.loading._family(tmp_path)
