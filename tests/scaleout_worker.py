"""Subprocess worker for tests/test_scaleout.py and tests/test_faults.py: run under torchrun,
killed mid-run (by the test, or by itself at a chosen point), or racing another worker for one
checkpoint directory.

``TLC_TEST_PID`` makes ``os.getpid`` return that number, as two processes on two hosts (or in two
containers) sharing a directory can have the same process id; ``TLC_TEST_SAVE_DELAY`` waits that
many seconds after writing each temporary file (before it is renamed into place), so that two
racing workers overlap.
"""

import os
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.models import tiny_model
from tl_capability import CapabilityDataset
from tl_capability.attribution import AttributionConfig, attribute

_PID = os.getpid()  # the real one, to kill this process even under TLC_TEST_PID


def dataset(n: int) -> CapabilityDataset:
    return CapabilityDataset.from_pairs(
        [f"rev {'abcdefg'[: i % 5 + 2]}{i}:" for i in range(n)],
        [f"{i % 7}x"[: i % 2 + 1] for i in range(n)],
    )


def checkpointed_run(model, checkpoint_dir=None, n=40):
    """The long run the checkpoint tests kill (``n / 2`` batches of 2 samples, a save after
    each)."""
    return attribute(
        model,
        dataset(n),
        steps=8,
        batch_size=2,
        per_sample=True,
        progress=False,
        config=AttributionConfig(checkpoint_dir=checkpoint_dir, checkpoint_every=1),
    )


def killed_run(model, checkpoint_dir, saves: int, mode: str) -> None:
    """``checkpointed_run``, SIGKILLed after its ``saves``-th checkpoint: ``kill-batch`` during
    the next batch's forward pass, ``kill-write`` halfway through writing the next checkpoint
    (its temporary file cut in half)."""
    import tl_capability._storage as stats

    done = 0
    real = stats.save_file

    def counted(tensors, filename, metadata=None):
        nonlocal done
        real(tensors, filename, metadata=metadata)
        if mode == "kill-write" and done == saves:
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            os.kill(_PID, signal.SIGKILL)
        done += 1

    def kill_after_saves(resid, hook):
        if mode == "kill-batch" and done == saves:
            os.kill(_PID, signal.SIGKILL)

    stats.save_file = counted
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", kill_after_saves)]):
        checkpointed_run(model, checkpoint_dir)
    raise SystemExit("the run ended without being killed")


def race(model, root, sync, sizes: list[int], me: int) -> None:
    """For each ``n`` of ``sizes``, ``checkpointed_run`` of ``dataset(n)`` in ``root/r{i}/ckpt``,
    started with the other worker (a barrier of files in ``sync``); the scores go to
    ``root/r{i}/out{me}``, a ``ValueError`` to ``root/r{i}/error{me}.txt``."""
    for i, n in enumerate(sizes):
        Path(sync, f"ready{i}-{me}").touch()
        deadline = time.time() + 60
        while not Path(sync, f"ready{i}-{1 - me}").exists():
            if time.time() > deadline:
                raise SystemExit("the other worker never came")
            time.sleep(0.001)
        folder = Path(root, f"r{i}")
        try:
            scores = checkpointed_run(model, folder / "ckpt", n)
        except ValueError as e:
            Path(folder, f"error{me}.txt").write_text(str(e))
        else:
            scores.save(folder / f"out{me}")


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    if os.environ.get("TLC_TEST_PID"):
        os.getpid = lambda: int(os.environ["TLC_TEST_PID"])
    if os.environ.get("TLC_TEST_SAVE_DELAY"):
        import tl_capability._storage as stats

        write, delay = stats.save_file, float(os.environ["TLC_TEST_SAVE_DELAY"])

        def slow_save_file(*args, **kwargs):
            write(*args, **kwargs)
            time.sleep(delay)

        stats.save_file = slow_save_file
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
    elif mode in ("kill-batch", "kill-write"):
        killed_run(model, out, int(sys.argv[3]), mode)
    elif mode == "race":
        race(model, out, sys.argv[3], [int(n) for n in sys.argv[4].split(",")], int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
