"""Faults as tests: what every file the library writes does when it goes wrong.

The artefacts: scores (``NeuronScores.save``: ``scores.safetensors`` + ``scores.json``), masks
(``NeuronMask.save``: ``mask.safetensors`` + ``mask.json``) and attribution checkpoints
(``attribute(..., checkpoint_dir=...)``: one safetensors file per rank, resumed by the next call
with the same arguments). Every fault ends in a clear error whose message names the file or its
folder, or in exactly the result of a run without the fault (``torch.equal``); never in a
silently different result.

The matrix (fault: scores and masks; checkpoints):

- truncated at three lengths, or empty (each file): ``ValueError`` naming the file; the same.
- a flipped byte in the tensors' bytes: ``ValueError`` (their checksum); the same.
- a flipped byte in the safetensors header: ``ValueError``, or the same result where the flip
  is harmless (the checkpoint: a resumed run equal to a fresh one).
- a flipped byte in the JSON (its syntax, the ``save_id``, a checked field, not UTF-8):
  ``ValueError`` naming the file or folder; the checkpoint's JSON is in its header (the sweep
  above), its fingerprint, batch count and checksum flipped on purpose: ``ValueError``.
- NaN or inf in a tensor of a valid file, checksum updated: ``ValueError`` naming the folder;
  ``ValueError`` naming the file (also for sums or scores stored in fewer bits).
- one file of another model, width, dtype or dataset dropped in: ``ValueError`` (the pair does
  not belong together); ``ValueError`` (another run). A whole pair of another width loads, and
  is refused where it meets the model.
- the partner file missing: ``FileNotFoundError`` naming it; a checkpoint has none: without it
  (a killed write's temporary file left) the call starts over and gives the fresh result.
- SIGKILL mid-batch or mid-write, then the same call: the uninterrupted result, bit for bit.
- concurrent writers (two threads saving one folder or checkpoint; two processes running the
  same call, or two calls, on one checkpoint directory): one whole artefact; each process ends
  with the exact result or ``ValueError`` (another run).

The JSON files are meant to stay editable by hand, so a flip that leaves valid JSON and changes
an unchecked field (``model_name``, ``selection``, ``params``) is read as an edit, not a fault.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import tl_capability.attribution._checkpoint as checkpoint_module
from tests.models import tiny_model
from tests.scaleout_worker import checkpointed_run
from tl_capability import CapabilityDataset
from tl_capability._storage import load_atomic, save_atomic, tensors_digest
from tl_capability.attribution import AttributionConfig, NeuronScores, attribute
from tl_capability.interventions import ablate
from tl_capability.masks import NeuronMask, select

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "scaleout_worker.py"
CHECKPOINT = "attribution-rank0-of-1.safetensors"

pytestmark = pytest.mark.core

DATA = CapabilityDataset.from_pairs(
    ["12+34=", "rev abc:", "the day was", "q", "5+17=", "rev dog:", "a b c", "zz"],
    ["46", "cba", " fun", "xy", "22", "god", " d", "z"],
    name="faults",
)
OTHER = CapabilityDataset.from_pairs(
    ["1+1=", "rev ab:", "the sky is", "w"], ["2", "ba", " blue", "v"], name="other"
)


@functools.cache
def foreign_model(kind: str) -> Any:
    """A model other than the ``model`` fixture: other weights, width or dtype."""
    if kind == "model":
        return tiny_model(seed=1)
    if kind == "d_mlp":
        return tiny_model(d_mlp=64)
    model = tiny_model()
    model.to(torch.float64)
    return model


class Interrupted(Exception):
    """Raised after a chosen checkpoint save, as a run stopped midway."""


def checkpoint_run(model: Any, folder: Path, data: CapabilityDataset = DATA) -> NeuronScores:
    """The checkpointed call of the suite (4 batches of 2 samples, a save after each)."""
    return attribute(
        model,
        data,
        "grad_x_act",
        batch_size=2,
        per_sample=True,
        progress=False,
        config=AttributionConfig(checkpoint_dir=folder, checkpoint_every=1),
    )


def interrupted_run(model: Any, folder: Path, data: CapabilityDataset = DATA) -> Path:
    """``checkpoint_run`` stopped right after its second save; returns the checkpoint."""
    real, saves = checkpoint_module.save_atomic, []

    def save_then_stop(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        saves.append(1)
        if len(saves) == 2:
            raise Interrupted

    checkpoint_module.save_atomic = save_then_stop
    try:
        with pytest.raises(Interrupted):
            checkpoint_run(model, folder, data)
    finally:
        checkpoint_module.save_atomic = real
    assert load_atomic(folder / CHECKPOINT)[1]["batches_done"] == 2
    return folder / CHECKPOINT


def same_scores(a: NeuronScores, b: NeuronScores) -> bool:
    """Bit for bit the same scores, count, method and parameters."""
    tensors = [(a.values, b.values), (a.std, b.std)]
    if a.per_sample is not None or b.per_sample is not None:
        if a.per_sample is None or b.per_sample is None:
            return False
        tensors.append((a.per_sample, b.per_sample))
    same_meta = (a.n, a.method, a.params) == (b.n, b.method, b.params)
    return same_meta and all(torch.equal(x, y) for x, y in tensors)


def same_mask(a: NeuronMask, b: NeuronMask) -> bool:
    return a == b and (a.model_name, a.selection) == (b.model_name, b.selection)


@dataclass
class Artefact:
    """One saved artefact: its files, how it is read back, and what must come back."""

    kind: str
    folder: Path
    files: list[Path]
    load: Callable[[], Any]
    expected: Any

    def outcome(self) -> str:
        """``"error"`` (a clear one, naming the artefact's folder) or ``"exact"``; fails on a
        silently different result or any other exception."""
        try:
            got = self.load()
        except (ValueError, FileNotFoundError) as e:
            assert str(self.folder) in str(e), f"{e!r} does not name {self.folder}"
            return "error"
        same = same_mask if self.kind == "mask" else same_scores
        assert same(got, self.expected), f"{self.kind}: a silently different result"
        return "exact"


def _scores(model: Any, data: CapabilityDataset = DATA) -> NeuronScores:
    return attribute(model, data, "grad_x_act", per_sample=True, progress=False)


def make(kind: str, model: Any, folder: Path, data: CapabilityDataset = DATA) -> Artefact:
    """Saves an artefact of ``kind`` made with ``model`` and ``data`` into ``folder``."""
    if kind == "scores":
        scores = _scores(model, data)
        scores.save(folder)
        files = [folder / "scores.safetensors", folder / "scores.json"]
        return Artefact(kind, folder, files, lambda: NeuronScores.load(folder), scores)
    if kind == "mask":
        mask = select(_scores(model, data), top_k=12)
        mask.save(folder)
        files = [folder / "mask.safetensors", folder / "mask.json"]
        return Artefact(kind, folder, files, lambda: NeuronMask.load(folder), mask)
    path = interrupted_run(model, folder, data)
    fresh = checkpoint_run(model, folder.parent / f"{folder.name}-fresh", data)
    return Artefact(kind, folder, [path], lambda: checkpoint_run(model, folder, data), fresh)


KINDS = ["scores", "mask", "checkpoint"]
FILES = [("scores", 0), ("scores", 1), ("mask", 0), ("mask", 1), ("checkpoint", 0)]


def flip(path: Path, where: int, bits: int = 0x5A) -> None:
    raw = bytearray(path.read_bytes())
    raw[where] ^= bits
    path.write_bytes(bytes(raw))


def header_end(path: Path) -> int:
    """Where a safetensors file's tensor bytes begin (8 bytes of length, then the header)."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def rewrite_tensors(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Changes the tensors of a file with a valid structure: a pair's file keeps its header,
    its checksum updated (so only the checks of the values can notice); a checkpoint is saved
    again the way ``attribute`` saves it."""
    if path.name == CHECKPOINT:
        state, meta = load_atomic(path)
        change(state)
        save_atomic(path, state, meta)
        return
    with safe_open(path, framework="pt") as f:
        header = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - no iter
    change(tensors)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if "sha256" in header:
        header["sha256"] = tensors_digest(tensors)
    save_file(tensors, path, metadata=header)


# ---------------------------------------------------------------------- truncated, empty, missing


@pytest.mark.parametrize("kind,index", FILES)
@pytest.mark.parametrize("cut", ["8 bytes", "half", "all but the last 2 bytes"])
def test_a_truncated_file_is_refused_by_name(model, tmp_path, kind, index, cut):
    art = make(kind, model, tmp_path / kind)
    path = art.files[index]
    raw = path.read_bytes()
    keep = {"8 bytes": 8, "half": len(raw) // 2, "all but the last 2 bytes": len(raw) - 2}[cut]
    path.write_bytes(raw[:keep])
    with pytest.raises(ValueError, match=path.name):
        art.load()
    assert art.outcome() == "error"


@pytest.mark.parametrize("kind,index", FILES)
def test_an_empty_file_is_refused_by_name(model, tmp_path, kind, index):
    art = make(kind, model, tmp_path / kind)
    art.files[index].write_bytes(b"")
    with pytest.raises(ValueError, match=art.files[index].name):
        art.load()


@pytest.mark.parametrize("kind,index", [f for f in FILES if f[0] != "checkpoint"])
def test_a_missing_partner_file_is_reported_missing(model, tmp_path, kind, index):
    art = make(kind, model, tmp_path / kind)
    art.files[index].unlink()
    with pytest.raises(FileNotFoundError, match=f"no {art.files[index].name} in"):
        art.load()
    assert art.outcome() == "error"


@pytest.mark.parametrize("leftover", [None, ".tmp123", ".0123456789abcdef.tmp"])
def test_a_missing_checkpoint_starts_over_and_ignores_temporary_files(model, tmp_path, leftover):
    """A checkpoint has no partner file; without it (a killed write leaves only its temporary
    file, named the old way or the new) the call starts from the first batch and gives the
    fresh result."""
    art = make("checkpoint", model, tmp_path / "ckpt")
    (path,) = art.files
    if leftover is not None:
        raw = path.read_bytes()
        path.with_name(path.name + leftover).write_bytes(raw[: len(raw) // 2])
    path.unlink()
    assert art.outcome() == "exact"
    assert load_atomic(path)[1]["batches_done"] == 4


# ---------------------------------------------------------------------- flipped bytes


@pytest.mark.parametrize("kind", KINDS)
def test_a_flipped_byte_in_the_tensors_is_refused(model, tmp_path, kind):
    """Sixty bytes spread over the tensor data, one at a time: a changed score used to load."""
    art = make(kind, model, tmp_path / kind)
    path = art.files[0]
    clean = path.read_bytes()
    start = header_end(path)
    for where in range(start, len(clean), max(1, (len(clean) - start) // 60)):
        flip(path, where)
        assert art.outcome() == "error", f"flipped byte {where} of {len(clean)}"
        path.write_bytes(clean)
    assert art.outcome() == "exact"


@pytest.mark.parametrize("kind", KINDS)
def test_a_flipped_byte_in_the_safetensors_header_is_refused_or_harmless(model, tmp_path, kind):
    """Every byte of the length and the header (every 5th for a checkpoint, each of which is
    a resumed run), one at a time, with two bit patterns. Only a flip in the name of the
    checksum's key is harmless (the file reads as one saved without a checksum, and its
    tensors are intact); every other flip is refused."""
    art = make(kind, model, tmp_path / kind)
    path = art.files[0]
    clean = path.read_bytes()
    key = clean.index(b'"sha256"') + 1
    harmless = []
    for where in range(0, header_end(path), 5 if kind == "checkpoint" else 1):
        for bits in (0x01, 0xA5):
            flip(path, where, bits)
            if art.outcome() == "exact":
                harmless.append(where)
            path.write_bytes(clean)
    assert set(harmless) <= set(range(key, key + len("sha256")))


# (artefact, file, text before the byte, bits, the error): the checkpoint's JSON is a string in
# its safetensors header, its quotes escaped.
JSON_FLIPS = [
    ("scores", 1, None, 0x5A, "scores.json is not valid JSON"),  # "{" becomes "!"
    ("scores", 1, '"save_id": "', 0x01, "do not belong together"),
    ("scores", 1, '"n": ', 0x01, "per_sample has shape"),  # 8 samples become 9
    ("scores", 1, '"method": "', 0x80, "scores.json is not valid JSON"),  # not UTF-8
    ("mask", 1, None, 0x5A, "mask.json is not valid JSON"),
    ("mask", 1, '"save_id": "', 0x01, "do not belong together"),
    ("mask", 1, '"count": 1', 0x01, "says count = 13, the tensor has 12"),
    ("mask", 1, '"site": "', 0x80, "mask.json is not valid JSON"),
    ("checkpoint", 0, 'fingerprint\\": \\"', 0x01, "belongs to another run"),
    ("checkpoint", 0, 'batches_done\\": ', 0x01, "is damaged .*count"),  # 2 batches become 3
    ("checkpoint", 0, '"sha256":"', 0x01, "is damaged .*checksum"),
]


@pytest.mark.parametrize("kind,index,before,bits,match", JSON_FLIPS)
def test_a_flipped_byte_in_the_json_is_refused(model, tmp_path, kind, index, before, bits, match):
    art = make(kind, model, tmp_path / kind)
    path = art.files[index]
    raw = path.read_bytes()
    flip(path, 0 if before is None else raw.index(before.encode()) + len(before), bits)
    with pytest.raises(ValueError, match=match) as err:
        art.load()
    assert str(art.folder) in str(err.value)


# ---------------------------------------------------------------------- values in a valid file


NAN_CASES = [
    ("scores", "values", "values holds NaN or infinite values"),
    ("scores", "std", "std holds NaN or infinite values"),
    ("scores", "per_sample", "per_sample holds NaN or infinite values"),
    ("mask", "mask", "expected a 2-D bool"),
    ("checkpoint", "total", "total is not a finite float64 tensor"),
    ("checkpoint", "total_sq", "total_sq is not a finite float64 tensor"),
    ("checkpoint", "per_sample", "per_sample is not a finite float32 tensor"),
]


@pytest.mark.parametrize("kind,name,match", NAN_CASES)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_in_a_valid_file_is_refused(model, tmp_path, kind, name, match, value):
    art = make(kind, model, tmp_path / kind)

    def poison(tensors):
        t = tensors[name].float() if name == "mask" else tensors[name].clone()
        t.view(-1)[3] = value
        tensors[name] = t

    rewrite_tensors(art.files[0], poison)
    with pytest.raises(ValueError, match=match) as err:
        art.load()
    assert str(art.folder) in str(err.value)


@pytest.mark.parametrize("name", ["total", "total_sq", "per_sample"])
def test_a_checkpoint_with_a_lossy_dtype_is_refused(model, tmp_path, name):
    """Totals stored as float32 (or scores as bfloat16), checksum updated, used to resume to
    slightly different scores."""
    art = make("checkpoint", model, tmp_path / "ckpt")
    lower = torch.bfloat16 if name == "per_sample" else torch.float32
    rewrite_tensors(art.files[0], lambda t: t.update({name: t[name].to(lower)}))
    with pytest.raises(ValueError, match=f"{name} is not a finite float"):
        art.load()


SHAPE_CASES = [
    ("scores", "values", lambda t: t[:, :64], "must share one"),
    ("scores", "std", lambda t: t[0], "must share one"),
    ("scores", "std", lambda t: t.long(), "expected a float dtype"),
    ("scores", "per_sample", lambda t: t[1:], "per_sample has shape"),
    ("mask", "mask", lambda t: t[:, :64], "mask.json says .*, the tensor has"),
    ("mask", "mask", lambda t: t.to(torch.uint8), "expected a 2-D bool"),
    ("checkpoint", "total", lambda t: t[:1], "total has shape"),
    ("checkpoint", "per_sample", lambda t: t[:, :1], "per_sample has shape"),
    ("checkpoint", "count", lambda t: t.int(), "count"),
]


@pytest.mark.parametrize("kind,name,change,match", SHAPE_CASES)
def test_a_tensor_of_another_shape_or_dtype_in_a_valid_file_is_refused(
    model, tmp_path, kind, name, change, match
):
    """What the checksum cannot catch (a file written whole, its checksum right): the checks
    of the tensors against each other and the JSON."""
    art = make(kind, model, tmp_path / kind)
    rewrite_tensors(art.files[0], lambda t: t.update({name: change(t[name])}))
    with pytest.raises(ValueError, match=match) as err:
        art.load()
    assert str(art.folder) in str(err.value)


# ---------------------------------------------------------------------- foreign files


@pytest.mark.parametrize("kind,index", FILES)
@pytest.mark.parametrize("other", ["model", "d_mlp", "dtype", "dataset"])
def test_a_file_of_another_artefact_dropped_in_is_refused(model, tmp_path, kind, index, other):
    art = make(kind, model, tmp_path / kind)
    source = model if other == "dataset" else foreign_model(other)
    foreign = make(kind, source, tmp_path / "foreign", OTHER if other == "dataset" else DATA)
    shutil.copyfile(foreign.files[index], art.files[index])
    match = "belongs to another run" if kind == "checkpoint" else "do not belong together"
    with pytest.raises(ValueError, match=match) as err:
        art.load()
    assert str(art.files[index]) in str(err.value) or str(art.folder) in str(err.value)


@pytest.mark.parametrize("kind", ["scores", "mask"])
def test_a_whole_pair_of_another_width_is_refused_where_it_meets_the_model(model, tmp_path, kind):
    """A whole foreign pair is a valid artefact; the model it meets refuses its shape."""
    make(kind, foreign_model("d_mlp"), tmp_path / kind)
    if kind == "scores":
        mask = select(NeuronScores.load(tmp_path / kind), top_k=3)
    else:
        mask = NeuronMask.load(tmp_path / kind)
    with (
        pytest.raises(ValueError, match="2 layers of 64 neurons .*not 2 x 128"),
        ablate(model, mask),
    ):
        pass


# ---------------------------------------------------------------------- concurrent saves


@pytest.mark.parametrize("kind", ["scores", "mask", "checkpoint"])
def test_threads_saving_one_artefact_leave_a_whole_one(model, tmp_path, kind):
    """Temporary files used to be named after the process id only: two writers in one process
    (or two hosts with the same pid) wrote one temporary file and replaced each other's. Now
    no save fails and what is left is one writer's file, whole; of a pair, whose two files are
    renamed one after the other, one writer's pair or a pair refused as mixed."""
    scores = [_scores(model), _scores(model, OTHER)]
    items: list[Any] = scores
    if kind == "mask":
        items = [select(s, top_k=k) for s, k in zip(scores, (5, 9), strict=True)]
    elif kind == "checkpoint":
        items = [{"total": s.values.double(), "count": torch.tensor([s.n])} for s in scores]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def writer(item: Any) -> None:
        try:
            barrier.wait()
            for _ in range(60):
                if kind == "checkpoint":
                    save_atomic(tmp_path / "a" / CHECKPOINT, item, {"batches_done": 1})
                else:
                    item.save(tmp_path / "a")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(item,)) for item in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    if kind == "checkpoint":
        got = load_atomic(tmp_path / "a" / CHECKPOINT)[0]
        assert any(torch.equal(got["total"], item["total"]) for item in items)
        assert [p.name for p in (tmp_path / "a").iterdir()] == [CHECKPOINT]
    else:
        load, same = (
            (NeuronScores.load, same_scores) if kind == "scores" else (NeuronMask.load, same_mask)
        )
        try:
            got = load(tmp_path / "a")
        except ValueError as e:
            assert "do not belong together" in str(e)
        else:
            assert any(same(got, item) for item in items)
        assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
            f"{kind}.json",
            f"{kind}.safetensors",
        ]


# ---------------------------------------------------------------------- processes


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def one_thread():
    """The workers compute with one thread; so does this process, for bit-equal results."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


KILLS = ("kill-batch", "kill-write")


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> dict[str, Path]:
    """The checkpoint folders of two workers (run at once) that SIGKILLed themselves after their
    third checkpoint: during the next batch, or halfway through writing the next checkpoint."""
    root = tmp_path_factory.mktemp("killed")
    procs = {}
    for mode in KILLS:
        with (root / f"{mode}.log").open("w") as log:
            procs[mode] = subprocess.Popen(
                [sys.executable, str(WORKER), mode, str(root / mode), "3"],
                env=_env(),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    for mode, proc in procs.items():
        proc.wait(timeout=300)
        log = (root / f"{mode}.log").read_text()
        assert proc.returncode == -signal.SIGKILL, log[-2000:]
    return {mode: root / mode for mode in KILLS}


@pytest.mark.parametrize("mode", KILLS)
def test_sigkill_then_resume_equals_an_uninterrupted_run(model, killed, one_thread, mode):
    """The same call resumes from the third checkpoint to the uninterrupted result."""
    ckpt = killed[mode]
    path = ckpt / CHECKPOINT
    assert load_atomic(path)[1]["batches_done"] == 3
    temps = [p.name for p in ckpt.iterdir() if p.name != CHECKPOINT]
    assert len(temps) == (1 if mode == "kill-write" else 0), temps
    resumed = checkpointed_run(model, ckpt)
    assert load_atomic(path)[1]["batches_done"] == 20
    assert same_scores(resumed, checkpointed_run(model))


# Rounds of the two racing workers: the same call three times, then two calls three times.
SAME, OTHER_CALLS = (0, 1, 2), (3, 4, 5)
RACE_SIZES = ((40, 40, 40, 40, 40, 40), (40, 40, 40, 36, 36, 36))


@pytest.fixture(scope="module")
def race(tmp_path_factory) -> Path:
    """Two workers started together on one checkpoint directory per round (a barrier of files),
    under one process id (as on two hosts), each pausing after writing a temporary file, so
    that their writes overlap; returns their folder (``r{i}/out{me}`` or ``r{i}/error{me}.txt``,
    and the checkpoint left in ``r{i}/ckpt``)."""
    root = tmp_path_factory.mktemp("race")
    (root / "sync").mkdir()
    logs = [root / f"log{me}.txt" for me in (0, 1)]
    procs = []
    for me in (0, 1):
        sizes = ",".join(map(str, RACE_SIZES[me]))
        with logs[me].open("w") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(WORKER),
                        "race",
                        str(root),
                        str(root / "sync"),
                        sizes,
                        f"{me}",
                    ],
                    env=_env(TLC_TEST_PID="4242", TLC_TEST_SAVE_DELAY="0.003"),
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.time() + 300
    try:  # until both end, or one fails (its partner would wait for it at the next round)
        while time.time() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() for p in procs):
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log.read_text()[-3000:]
    return root


def test_the_same_call_in_two_processes_gives_the_exact_result(model, race, one_thread):
    fresh = checkpointed_run(model)
    for i in SAME:
        for me in (0, 1):
            assert same_scores(NeuronScores.load(race / f"r{i}" / f"out{me}"), fresh)
        assert same_scores(checkpointed_run(model, race / f"r{i}" / "ckpt"), fresh)  # complete


def test_two_calls_in_one_directory_give_their_result_or_a_clear_error(model, race, one_thread):
    fresh = {40: checkpointed_run(model), 36: checkpointed_run(model, n=36)}
    for i in OTHER_CALLS:
        folder = race / f"r{i}"
        for me in (0, 1):
            n, error = RACE_SIZES[me][i], folder / f"error{me}.txt"
            if error.exists():
                assert "belongs to another run" in error.read_text()
            else:
                assert same_scores(NeuronScores.load(folder / f"out{me}"), fresh[n])
        # The checkpoint left behind is one run's, whole: that run resumes, the other is refused.
        outcomes = []
        for n in (40, 36):
            try:
                outcomes.append(same_scores(checkpointed_run(model, folder / "ckpt", n), fresh[n]))
            except ValueError as e:
                assert "belongs to another run" in str(e)
                outcomes.append("refused")
        assert sorted(map(str, outcomes)) == ["True", "refused"]


def test_a_checkpoint_read_while_another_process_replaces_it_is_old_or_new(tmp_path):
    """A reader polling a checkpoint that a running attribution keeps replacing gets a whole
    file, old or new. safetensors' own reader opens the file twice (the header, then the
    storage), so a rename between the two paired the old header with the new tensors: about 2 %
    of loads failed their checksum under a writer like this one (and a scale-out test flaked)."""
    path = tmp_path / "attribution-rank0-of-1.safetensors"
    save_atomic(path, {"x": torch.zeros(1000)}, {"i": 0})
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            save_atomic(path, {"x": torch.full((1000,), float(i))}, {"i": i})

    thread = threading.Thread(target=writer)
    thread.start()
    loads, seen = 0, set()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            tensors, meta = load_atomic(path)  # raises on a mismatched header and tensors
            assert float(tensors["x"][0]) == meta["i"]
            loads += 1
            seen.add(meta["i"])
    finally:
        stop.set()
        thread.join()
    assert loads > 100 and len(seen) > 10  # the file really changed under the reads
