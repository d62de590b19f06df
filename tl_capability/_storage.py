"""Files that are whole or refused: atomic saves, checksummed ``.safetensors`` + ``.json`` pairs.

[`save_atomic`][tl_capability._storage.save_atomic] writes one safetensors file (attribution's
checkpoints) so that a run killed mid-write leaves the previous file;
[`save_pair`][tl_capability._storage.save_pair] writes the library's ``.safetensors`` + ``.json``
pairs (scores, masks) so that an interrupted save never leaves a pair that loads.

Every file is written under a temporary name of its own (random, so that two writers of one
file, two threads or two hosts sharing a folder, never write the same temporary file) and
renamed into place; the tensors carry a sha256 checksum, checked when they are read
(``tests/test_faults.py`` holds the fault matrix).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load, save_file
from torch import Tensor


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """A sha256 over the names, dtypes, shapes and raw bytes of ``tensors`` (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}\x00{t.dtype}\x00{tuple(t.shape)}\x01".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def tensor_bytes(tensor: Tensor) -> memoryview:
    """The raw bytes of ``tensor`` (copied to the CPU, contiguous), for hashing."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _temporary(path: Path) -> Path:
    """A fresh name beside ``path`` for writing it: random, not the process id, which two
    processes on two hosts (or in two containers) sharing the folder can have in common, and
    which two threads share. (Not ``tempfile.mkstemp``: its files are private to the user, and
    the renamed file would keep that mode.)"""
    return path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")


def save_atomic(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Writes ``path`` (safetensors, with ``meta`` as JSON in its header) atomically: a run
    killed mid-write leaves the previous file intact, and concurrent writers leave one of
    their files, whole. A checksum of the tensors goes into the header, so that
    [`load_atomic`][tl_capability._storage.load_atomic] notices a damaged file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    header = {"meta": json.dumps(meta), "sha256": tensors_digest(tensors)}
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_atomic(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Reads what [`save_atomic`][tl_capability._storage.save_atomic] wrote.

    Raises:
        ValueError: Naming ``path``, when it is not a safetensors file with a JSON ``meta``
            object, or its tensors do not match the checksum written with them.
    """
    try:
        # One read of the file: under a writer renaming new files into place, safetensors'
        # own reader paired a header and tensors of two files in ~2 % of loads (it seems to
        # open the file twice: the header, then the tensors' storage by name), seen as a
        # checksum failure while a test polled a running checkpoint. Read whole, a renamed
        # file is old or new.
        data = path.read_bytes()
        tensors = load(data)
        (size,) = struct.unpack("<Q", data[:8])  # the format: header length, then JSON header
        header = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        meta = json.loads(header["meta"])
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors, JSON or a missing key: the file is damaged
        raise ValueError(f"{path} is not a readable checkpoint ({exc}); remove it") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a readable checkpoint (its meta is not an object)")
    if header.get("sha256") != tensors_digest(tensors):
        raise ValueError(f"{path} is damaged (its tensors do not match their checksum); remove it")
    return tensors, meta


def save_pair(directory: Path, stem: str, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Writes ``stem.safetensors`` and ``stem.json`` (``meta``, readable) into ``directory``.

    Both files are written under temporary names first, then renamed into place, and both
    carry the same random ``save_id``. A failure before the renames leaves the previous pair
    untouched; a crash between them leaves a pair that
    [`load_pair`][tl_capability._storage.load_pair] refuses, never a mismatched pair that loads. The
    tensors' header also holds their sha256, so that a damaged tensor file is refused. (The JSON
    stays editable by hand, ``save_id`` aside.)
    """
    directory.mkdir(parents=True, exist_ok=True)
    save_id = uuid.uuid4().hex
    text = json.dumps({**meta, "save_id": save_id}, indent=2, default=str) + "\n"
    tmp_tensors = _temporary(directory / f"{stem}.safetensors")
    tmp_json = _temporary(directory / f"{stem}.json")
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    try:
        save_file(
            tensors,
            tmp_tensors,
            metadata={"save_id": save_id, "sha256": tensors_digest(tensors)},
        )
        tmp_json.write_text(text)
        os.replace(tmp_tensors, directory / f"{stem}.safetensors")
        os.replace(tmp_json, directory / f"{stem}.json")
    finally:
        tmp_tensors.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)


def load_pair(directory: Path, stem: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Reads what [`save_pair`][tl_capability._storage.save_pair] wrote (and older pairs, written
    without a ``save_id`` or a checksum).

    Raises:
        FileNotFoundError: When either file is missing.
        ValueError: Naming the file, when one is unreadable, the JSON is not an object, the
            two files come from different saves, or the tensors do not match their checksum
            (or lost it).
    """
    tensors_path, json_path = directory / f"{stem}.safetensors", directory / f"{stem}.json"
    for p in (tensors_path, json_path):
        if not p.is_file():
            raise FileNotFoundError(f"no {p.name} in {directory}")
    try:
        with safe_open(tensors_path, framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - no iter
    except Exception as exc:
        raise ValueError(f"{tensors_path} is not a readable safetensors file ({exc})") from exc
    try:
        meta = json.loads(json_path.read_bytes().decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included
        raise ValueError(f"{json_path} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{json_path} does not hold a JSON object")
    if header.get("save_id") != meta.pop("save_id", None):
        raise ValueError(
            f"{tensors_path} and {json_path.name} do not belong together (their save_id "
            "differs: a save was interrupted, or one file was replaced); save again"
        )
    if "sha256" not in header and header.get("save_id") is not None:
        # save_pair writes the checksum with every save_id: its absence means an edit
        raise ValueError(
            f"{directory} does not hold valid {stem} files: {tensors_path.name} has no checksum "
            "(it was changed after it was saved); save again"
        )
    if "sha256" in header and header["sha256"] != tensors_digest(tensors):
        raise ValueError(
            f"{directory} does not hold valid {stem} files: {tensors_path.name} does not match "
            "its checksum (it was damaged, or changed after it was saved); save again"
        )
    return tensors, meta
