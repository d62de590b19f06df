"""Subprocess worker for tests/test_scaleout.py (run under torchrun, or killed mid-run)."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.models import tiny_model
from tl_capability import CapabilityDataset
from tl_capability.attribution import attribute


def dataset(n: int) -> CapabilityDataset:
    return CapabilityDataset.from_pairs(
        [f"rev {'abcdefg'[: i % 5 + 2]}{i}:" for i in range(n)],
        [f"{i % 7}x"[: i % 2 + 1] for i in range(n)],
    )


def checkpointed_run(model, checkpoint_dir=None):
    """The long run the checkpoint test kills (20 batches of 2 samples, a save after each)."""
    return attribute(
        model,
        dataset(40),
        steps=8,
        batch_size=2,
        per_sample=True,
        progress=False,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=1,
    )


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    model = tiny_model()
    if mode == "dist":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        scores = attribute(model, dataset(11), steps=3, per_sample=True, progress=False)
        if dist.get_rank() == 0:
            scores.save(out)
        dist.destroy_process_group()
    elif mode == "checkpoint":
        checkpointed_run(model, out)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
