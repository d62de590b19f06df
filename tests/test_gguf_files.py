"""GGUF files: found in a directory, read for their architecture, refused with what to do, and
cached where the environment says (through ``models.load_model``, the way users reach them)."""

from pathlib import Path

import numpy as np
import pytest

from tl_capability import gguf_files
from tl_capability.models import load_model


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test here keeps its cache (and the digests' memos) out of the user's."""
    monkeypatch.setenv("TL_CAPABILITY_CACHE", str(tmp_path / "cache"))


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


def test_a_file_cut_short_or_of_no_causal_lm_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_CAPABILITY_CACHE", str(tmp_path / "cache"))
    whole = _write_gguf(tmp_path / "whole.gguf", "llama").read_bytes()
    for cut in (len(whole) // 2, 40, 9):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(whole[:cut])
        with pytest.raises(ValueError, match=f"cut{cut}.gguf is not a readable GGUF file"):
            load_model(path)
    for section in ("general", "t5"):  # in transformers' GGUF table, but no causal LM
        with pytest.raises(ValueError, match=f"'{section}'.*cannot dequantize"):
            load_model(_write_gguf(tmp_path / f"{section}.gguf", section))
    assert "general" not in gguf_files._supported() and "llama" in gguf_files._supported()


def test_a_missing_gguf_file_is_not_taken_for_a_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model directory or GGUF file at nothere.gguf"):
        load_model("nothere.gguf")


def test_the_cache_entry_follows_the_contents_not_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_CAPABILITY_CACHE", str(tmp_path / "cache"))
    one = _write_gguf(tmp_path / "one.gguf", "llama")
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "renamed.gguf"
    copy.write_bytes(one.read_bytes())
    entry = gguf_files._entry(one, "float32")
    assert gguf_files._entry(copy, "float32") == entry  # a fresh venv's copy finds it
    assert gguf_files._entry(one, "bfloat16") != entry
    assert gguf_files._entry(one, "float32") == entry  # the path's digest, kept
    other = _write_gguf(tmp_path / "other.gguf", "gpt2")
    assert gguf_files._entry(other, "float32") != entry
    one.write_bytes(other.read_bytes())  # replaced in place: converted again
    assert gguf_files._entry(one, "float32") == gguf_files._entry(other, "float32")
    # a memo cut short, unreadable or wrong: hashed again (a conversion always hashes)
    memos = list((tmp_path / "cache" / "gguf" / "digests").glob("[0-9a-f]*"))
    right = gguf_files._entry(other, "float32")
    for text in (b"", b"\xff\xfe", b"0123"):
        for memo in memos:
            memo.write_bytes(text)
        assert gguf_files._entry(other, "float32") == right
    for memo in memos:
        memo.write_text("0" * 24)
    assert gguf_files._entry(other, "float32") != right  # a memo is trusted ...
    assert gguf_files._entry(other, "float32", fresh=True) == right  # ... but not to convert
    assert gguf_files._entry(other, "float32") == right  # and is mended


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
