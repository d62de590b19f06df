"""GGUF files: found in a directory, read for their architecture, refused with what to do, and
cached where the environment says (through ``models.load_model``, the way users reach them)."""

from pathlib import Path

import numpy as np
import pytest

from tl_capability import gguf_files
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


def test_the_cache_honours_its_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_CAPABILITY_CACHE", str(tmp_path))
    assert gguf_files.cache_dir() == tmp_path
    monkeypatch.delenv("TL_CAPABILITY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_files.cache_dir() == tmp_path / "xdg" / "tl_capability"
