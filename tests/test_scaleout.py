"""Scale-out: torchrun sharding equals one process; a killed run resumes to the same result."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.scaleout_worker import checkpointed_run, dataset
from tl_capability._storage import load_atomic
from tl_capability.attribution import AttributionConfig, NeuronScores, attribute
from tl_capability.attribution._moments import Moments

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "scaleout_worker.py"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_torchrun_with_two_gloo_ranks_equals_one_process(model, tmp_path):
    out = tmp_path / "scores"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(WORKER),
            "dist",
            str(out),
        ],
        check=True,
        env=_env(),
        cwd=ROOT,
        timeout=300,
        capture_output=True,
    )
    sharded = NeuronScores.load(out)
    single = attribute(model, dataset(11), steps=3, per_sample=True, progress=False)
    assert sharded.n == single.n == 11
    torch.testing.assert_close(sharded.values, single.values, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(sharded.std, single.std, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(sharded.per_sample, single.per_sample, rtol=1e-5, atol=1e-8)


def test_killed_run_resumes_to_the_same_result(model, tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "checkpoint", str(ckpt)],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    path = ckpt / "attribution-rank0-of-1.safetensors"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        # Saves are atomic renames, so a file that exists is always complete.
        if path.exists() and load_atomic(path)[1]["batches_done"] >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state, meta = load_atomic(path)
    total_batches = 20
    assert 3 <= meta["batches_done"] < total_batches, "the worker was not killed midway"
    assert Moments.from_state_dict(state).count == 2 * meta["batches_done"]

    resumed = checkpointed_run(model, ckpt)
    fresh = checkpointed_run(model)
    assert load_atomic(path)[1]["batches_done"] == total_batches
    torch.testing.assert_close(resumed.values, fresh.values, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(resumed.per_sample, fresh.per_sample, rtol=1e-6, atol=1e-9)


def test_checkpoint_of_another_run_is_refused(model, tmp_path):
    attribute(
        model,
        dataset(4),
        "grad_x_act",
        progress=False,
        config=AttributionConfig(checkpoint_dir=tmp_path),
    )
    with pytest.raises(ValueError, match="belongs to another run"):
        attribute(
            model,
            dataset(5),
            "grad_x_act",
            progress=False,
            config=AttributionConfig(checkpoint_dir=tmp_path),
        )
    assert load_atomic(tmp_path / "attribution-rank0-of-1.safetensors")[1]["batches_done"] == 1
