"""GGUF files as TransformerLens models: dequantized once, cached as a Hugging Face directory.

transformers dequantizes a GGUF file when the ``gguf`` package is installed, but a model loaded
that way refuses ``save_pretrained`` and keeps a ``quantization_config`` that the bridge does
not expect. So the weights are copied into a plain model built from the same config, which is
saved (safetensors, float32 or bfloat16) with the tokenizer in a cache directory; every later
load reads that directory, offline, in a few seconds.

The cache lives in ``$TL_CAPABILITY_CACHE`` if set, else ``$XDG_CACHE_HOME/tl_capability`` (or
``~/.cache/tl_capability``); an entry is keyed by the file's contents (SHA-256), so a copy of
the same file elsewhere (a fresh virtual environment, a link, a renamed copy) finds the entry,
and a replaced file is converted again. The digest of a path is kept beside the entries for its
size, times and inode, so a file is hashed once, not at every load; a conversion hashes it
anew, so an entry never holds other contents than its name says.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch

from tl_capability.options import CacheDType, check_option

__all__ = ["cache_dir", "dequantize", "find_gguf", "gguf_architecture"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_INSTALL = 'pip install -e ".[real]"  (or: pip install gguf)'


def cache_dir() -> Path:
    """The directory that holds dequantized models (created on first use)."""
    root = os.environ.get("TL_CAPABILITY_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "tl_capability"


def find_gguf(path: str | Path) -> Path | None:
    """The GGUF file that ``path`` names: the file itself, or the only ``*.gguf`` file of a
    directory that is not a Hugging Face model directory (no ``config.json``); ``None`` when
    ``path`` is neither.

    Raises:
        ValueError: For a directory holding several GGUF files (name the one to load).
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ValueError(f"{path} holds several GGUF files ({names}); pass the file to load")
    return found[0] if found else None


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError as e:
        raise ImportError(f"loading a GGUF file needs the `gguf` package: {_INSTALL}") from e
    return gguf


def gguf_architecture(path: str | Path) -> str:
    """The ``general.architecture`` field of a GGUF file's header (``"llama"``, ``"gpt2"``, ...).

    Raises:
        ImportError: Without the ``gguf`` package.
        ValueError: When the file is not a readable GGUF file.
    """
    gguf = _require_gguf()
    try:
        field = gguf.GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    # a file cut short or not GGUF fails inside the reader with any of these
    except (KeyError, ValueError, OSError, IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})") from e


# transformers' GGUF table also holds the shared sections and encoder-decoder models, which
# AutoModelForCausalLM does not load
_NOT_CAUSAL_LMS = {"general", "tokenizer", "t5", "umt5"}


def _supported() -> list[str]:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(set(GGUF_CONFIG_MAPPING) - _NOT_CAUSAL_LMS)


def _entry(path: Path, dtype: str, fresh: bool = False) -> Path:
    """The cache entry of ``path``'s contents in ``dtype``; ``fresh`` hashes the file even where
    a memo of its digest is kept (before a conversion names an entry by it)."""
    root = cache_dir() / "gguf"
    stat = path.stat()
    where = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}"
    memo = root / "digests" / hashlib.sha256(where.encode()).hexdigest()[:24]
    try:
        digest = "" if fresh else memo.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        digest = ""
    if not _DIGEST.fullmatch(digest):  # none kept, or a memo cut short: hash the file
        digest = _sha256(path)
        tmp = memo.with_name(f".{memo.name}-{os.getpid()}")
        with suppress(OSError):  # a cache it cannot write to: hashed again next time
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(digest)
            tmp.replace(memo)  # whole or absent, for a process reading it meanwhile
    return root / f"{digest}-{dtype}"


_DIGEST = re.compile("[0-9a-f]{24}")


def _sha256(path: Path) -> str:
    """The first 24 hex digits of the file's SHA-256, read in 16 MiB pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for piece in iter(lambda: f.read(1 << 24), b""):
            digest.update(piece)
    return digest.hexdigest()[:24]


def dequantize(path: str | Path, dtype: str = "float32", *, progress: bool = True) -> Path:
    """A Hugging Face directory (safetensors + tokenizer) holding a GGUF file's model,
    dequantized once and cached.

    Args:
        path: The ``.gguf`` file.
        dtype: ``"float32"`` (default) or ``"bfloat16"``: the precision the weights are saved in.
        progress: Let transformers show its progress bar while it dequantizes.

    Returns:
        The cached directory, ready for ``TransformerBridge.boot_transformers``.

    Raises:
        ImportError: Without the ``gguf`` package.
        ValueError: For an unknown dtype, a file that is not GGUF, or an architecture that
            transformers cannot dequantize (the message lists the ones it can).
        FileNotFoundError: When the file does not exist.
    """
    path = Path(path).expanduser()
    check_option(dtype, CacheDType, "dtype")
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    out = _entry(path, dtype)
    if (out / "model.safetensors").is_file():
        return out
    out = _entry(path, dtype, fresh=True)  # a conversion names its entry by what it read
    architecture = gguf_architecture(path)
    if architecture not in _supported():
        raise ValueError(
            f"{path.name} holds a {architecture!r} model, which transformers cannot dequantize; "
            f"GGUF architectures it reads: {', '.join(_supported())}"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # transformers' GGUF reader offers no offline switch of its own; the file is local.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    finally:
        if not progress:
            hf_logging.enable_progress_bar()
    config = type(loaded.config).from_dict(
        {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    )
    # A plain model of the same config: save_pretrained refuses a GGUF-loaded one.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.to(_DTYPES[dtype])
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the entry and renamed, so a killed conversion never leaves a half entry.
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
