"""Mergeable running statistics for per-neuron scores.

Attribution over a dataset of any length keeps only a count, a sum and a sum of squares per
neuron, in float64. Two [`Moments`][tl_capability.stats.Moments] over disjoint shards merge exactly
(``a + b``), which is what lets distributed ranks all-reduce
([`all_reduce_sum`][tl_capability.stats.all_reduce_sum]) and interrupted runs resume from an atomic
checkpoint ([`save_atomic`][tl_capability.stats.save_atomic]).
[`save_pair`][tl_capability.stats.save_pair] writes the library's ``.safetensors`` + ``.json`` pairs
so that an interrupted save never leaves a pair that loads.

Every file is written under a temporary name of its own (random, so that two writers of one
file, two threads or two hosts sharing a folder, never write the same temporary file) and
renamed into place; the tensors carry a sha256 checksum, checked when they are read.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor


@dataclass
class Moments:
    """Count, sum and sum of squares of samples of a fixed-shape tensor.

    Attributes:
        count: Number of samples added.
        total: Sum of the samples (float64).
        total_sq: Sum of their squares (float64).
    """

    count: int
    total: Float[Tensor, ...]
    total_sq: Float[Tensor, ...]

    @classmethod
    def zeros(cls, *shape: int) -> Moments:
        """Empty statistics for samples of ``shape``."""
        z = torch.zeros(shape, dtype=torch.float64)
        return cls(0, z, z.clone())

    def add(self, samples: Float[Tensor, "n ..."]) -> None:
        """Adds a batch of samples (first axis) in place."""
        if samples.shape[1:] != self.total.shape:
            raise ValueError(
                f"samples of shape {tuple(samples.shape[1:])}, expected {tuple(self.total.shape)}"
            )
        x = samples.detach().to(device="cpu", dtype=torch.float64)
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.total_sq += (x * x).sum(0)

    def __add__(self, other: Moments) -> Moments:
        if self.total.shape != other.total.shape:
            raise ValueError("cannot merge statistics of different shapes")
        return Moments(
            self.count + other.count, self.total + other.total, self.total_sq + other.total_sq
        )

    @property
    def mean(self) -> Float[Tensor, ...]:
        """The mean, in float32."""
        if self.count == 0:
            raise ValueError("no samples")
        return (self.total / self.count).float()

    @property
    def std(self) -> Float[Tensor, ...]:
        """The sample standard deviation (``n - 1`` in the denominator; 0 for one sample)."""
        if self.count < 2:
            return torch.zeros_like(self.total, dtype=torch.float32)
        mean = self.total / self.count
        var = (self.total_sq - self.count * mean * mean) / (self.count - 1)
        return var.clamp_min(0).sqrt().float()

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors for safetensors (the count as a one-element int64 tensor)."""
        return {
            "count": torch.tensor([self.count], dtype=torch.int64),
            "total": self.total.contiguous(),
            "total_sq": self.total_sq.contiguous(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> Moments:
        """Inverse of [`state_dict`][tl_capability.stats.Moments.state_dict]."""
        return cls(int(state["count"][0]), state["total"].double(), state["total_sq"].double())


def distributed_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the ``torch.distributed`` group, or ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensors: list[Tensor], device: torch.device | None = None) -> list[Tensor]:
    """Sums tensors across ranks (a no-op in a single process); returns them on the CPU.

    NCCL reduces only GPU tensors, so they travel through ``device`` (the model's) there.
    """
    import torch.distributed as dist

    if distributed_info()[1] == 1:
        return tensors
    use = device if dist.get_backend() == "nccl" else torch.device("cpu")
    out = []
    for t in tensors:
        moved = t.to(use).contiguous()
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        out.append(moved.cpu())
    return out


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
    [`load_atomic`][tl_capability.stats.load_atomic] notices a damaged file."""
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
    """Reads what [`save_atomic`][tl_capability.stats.save_atomic] wrote.

    Raises:
        ValueError: Naming ``path``, when it is not a safetensors file with a JSON ``meta``
            object, or its tensors do not match the checksum written with them.
    """
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - no iter
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
    untouched; a crash between them leaves a pair that [`load_pair`][tl_capability.stats.load_pair]
    refuses, never a mismatched pair that loads. The tensors' header also holds their sha256,
    so that a damaged tensor file is refused. (The JSON stays editable by hand, ``save_id``
    aside.)
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
    """Reads what [`save_pair`][tl_capability.stats.save_pair] wrote (and older pairs, written
    without a ``save_id`` or a checksum).

    Raises:
        FileNotFoundError: When either file is missing.
        ValueError: Naming the file, when one is unreadable, the JSON is not an object, the
            two files come from different saves, or the tensors do not match their checksum.
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
    if "sha256" in header and header["sha256"] != tensors_digest(tensors):
        raise ValueError(
            f"{directory} does not hold valid {stem} files: {tensors_path.name} does not match "
            "its checksum (it was damaged, or changed after it was saved); save again"
        )
    return tensors, meta
