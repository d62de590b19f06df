"""Checkpoints of an attribution run: the running statistics saved every few batches, resumed by
a run with the same data, parameters and weights.

One file per rank (``attribution-rank{r}-of-{w}.safetensors``), written whole by
[`save_atomic`][tl_capability._storage.save_atomic], carrying a fingerprint of everything that
determines the run's batches and scores, the model's weights included
([`weights_digest`][tl_capability.attribution._checkpoint.weights_digest]). A checkpoint of
another run is refused, and so is a damaged one, by name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tl_capability._storage import load_atomic, save_atomic, tensor_bytes
from tl_capability.attribution._moments import Moments
from tl_capability.data import CapabilityDataset


@dataclass(frozen=True)
class Checkpoint:
    """Where one rank's running statistics are saved, how often, and the run they belong to.

    Attributes:
        path: The rank's checkpoint file.
        every: Batches between saves (the last batch is always saved).
        fingerprint: The run's [`fingerprint`][tl_capability.attribution._checkpoint.fingerprint].
    """

    path: Path
    every: int
    fingerprint: str

    @classmethod
    def for_rank(
        cls, directory: str | Path, every: int, fingerprint: str, rank: int, world: int
    ) -> Checkpoint:
        """The checkpoint of rank ``rank`` of ``world`` in ``directory``."""
        path = Path(directory) / f"attribution-rank{rank}-of-{world}.safetensors"
        return cls(path, every, fingerprint)

    def resume(
        self, moments: Moments, kept: Tensor | None, sizes: list[int]
    ) -> tuple[int, Moments, Tensor | None]:
        """``(batches done, statistics, per-sample scores)``: those saved, or the ones given
        (and 0) where there is no checkpoint yet.

        No lock: a run reads the checkpoint only here, and every save replaces the file whole
        ([`save_atomic`][tl_capability._storage.save_atomic]), so runs sharing the folder each
        end with their own exact result, and one that finds another run's checkpoint here is
        refused.

        Raises:
            ValueError: Naming the file, for another run's checkpoint or a damaged one.
        """
        if not self.path.exists():
            return 0, moments, kept
        state, meta = load_atomic(self.path)
        if meta.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"{self.path} belongs to another run (dataset, method, parameters, "
                "batching or the model's weights differ); remove it or use another "
                "checkpoint_dir"
            )
        done = meta.get("batches_done")
        shape = tuple(moments.total.shape)
        moments = _checked(self.path, state, done, sizes, shape, kept)
        return done, moments, (state["per_sample"] if kept is not None else None)

    def after_batch(self, done: int, n_batches: int, moments: Moments, kept: Tensor | None) -> None:
        """Saves the statistics of the first ``done`` batches, every ``every`` batches and after
        the last one."""
        if done % self.every == 0 or done == n_batches:
            state = moments.state_dict() | ({"per_sample": kept} if kept is not None else {})
            save_atomic(self.path, state, {"fingerprint": self.fingerprint, "batches_done": done})


def fingerprint(
    model: Any,
    dataset: CapabilityDataset,
    method: str,
    params: dict[str, Any],
    batch_size: int,
    per_sample: bool,
    rank: int,
    world: int,
) -> str:
    """A hash of everything that determines a run's batches and scores, the model's weights
    and their dtypes included
    ([`weights_digest`][tl_capability.attribution._checkpoint.weights_digest])."""
    h = hashlib.sha256()
    for p, a in zip(dataset.prompts, dataset.answers, strict=True):
        h.update(f"{p}\x00{a}\x01".encode())
    config = [method, params, batch_size, per_sample, rank, world, weights_digest(model)]
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    return h.hexdigest()


def weights_digest(model: Any) -> str:
    """A sha256 over every parameter and buffer of ``model``: names, dtypes, shapes and raw
    bytes, in ``state_dict`` order (tensors are copied to the CPU one at a time)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}\x00{t!r}\x01".encode())
            continue
        h.update(f"{name}\x00{t.dtype}\x00{tuple(t.shape)}\x01".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def _checked(
    path: Path,
    state: dict[str, Tensor],
    done: Any,
    sizes: list[int],
    shape: tuple[int, ...],
    kept: Tensor | None,
) -> Moments:
    """The statistics of a loaded checkpoint, after checking that they can be those of its
    first ``done`` batches (of ``sizes`` samples each) for neurons of ``shape``, in the dtypes
    a run saves (float64 sums; per-sample scores as ``kept``: fewer bits would resume to other
    scores).

    Raises:
        ValueError: Naming ``path``, for anything out of place.
    """

    def bad(why: str) -> ValueError:
        return ValueError(f"{path} is damaged ({why}); remove it to start over")

    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= len(sizes):
        raise bad(f"batches_done is {done!r}, expected an integer in 0..{len(sizes)}")
    expected = {
        "count": ((1,), torch.int64),
        "total": (shape, torch.float64),
        "total_sq": (shape, torch.float64),
    }
    if kept is not None:
        expected["per_sample"] = (tuple(kept.shape), kept.dtype)
    for name, (want, dtype) in expected.items():
        t = state.get(name)
        if t is None:
            raise bad(f"no {name!r} tensor")
        if tuple(t.shape) != want:
            raise bad(f"{name} has shape {tuple(t.shape)}, expected {want}")
        if name != "count" and (t.dtype != dtype or not torch.isfinite(t).all()):
            raise bad(f"{name} is not a finite {str(dtype).removeprefix('torch.')} tensor")
    count = state["count"]
    if count.dtype != torch.int64 or int(count[0]) != sum(sizes[:done]):
        want = sum(sizes[:done])
        raise bad(f"count {count.tolist()} is not the {want} samples of {done} batches")
    return Moments.from_state_dict(state)
