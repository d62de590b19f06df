import json
import re

import pytest

from tests.models import HAS_BRIDGE, save_hf_model
from tl_capability import cli, zoo
from tl_capability.loaders import resolve
from tl_capability.masks import NeuronMask
from tl_capability.models import load_model

bridge_only = pytest.mark.skipif(not HAS_BRIDGE, reason="local directories load with TL 4.x")


def test_demo_writes_the_report_and_prints_the_headline(capsys, tmp_path):
    out_dir = tmp_path / "report"
    assert cli.main(["demo", "--quick", "--quiet", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    for name in zoo.capability_names():
        assert name in out
    assert "accuracy" in out and "%" in out and "Report:" in out
    index = (out_dir / "index.md").read_text()
    for png in (
        "neurons",
        "erase-matrix",
        "amplify-matrix",
        "overlap-matrix",
        "sigma",
        "neg",
        "linearity",
        "enhancement",
        "trace",
        "trace-aie",
        "circuit",
    ):
        assert (out_dir / f"{png}.png").stat().st_size > 1000
        assert f"({png}.png)" in index
    assert "Skill-neuron probe" in index and "Knowledge-neuron fidelity" in index
    assert "IPP" in index and "C(1,2)" in index and "Enhancement" in index
    assert "Three granularities" in index and "located layer" in index


def test_erase_random_sets_come_from_random_controls(capsys, tmp_path, zoo_model):
    from tl_capability import ablate, accuracy, attribute, select
    from tl_capability.experiments import mean_ci
    from tl_capability.masks import random_controls

    data = resolve("addition", split="test", n=40, seed=2)
    mask = select(attribute(zoo_model, zoo.dataset("sentiment", n=16), "grad_x_act",
                            progress=False), sigma=1.0)  # fmt: skip
    mask.save(tmp_path / "mask")
    assert cli.main(["erase", "--model", "zoo", "--mask", str(tmp_path / "mask"), "--data",
                     "addition", "--n", "40", "--random", "3", "--random-seed", "5",
                     "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    base = accuracy(zoo_model, data)

    def printed(seed: int) -> str:
        drops = []
        for control in random_controls(mask, 3, seed=seed):
            with ablate(zoo_model, control):
                drops.append(100 * (base - accuracy(zoo_model, data)))
        mean, half = mean_ci(drops)
        return f"size per layer: drop {mean:.1f} ± {half:.1f}"

    assert printed(5) in out
    assert printed(0) not in out  # the seed matters for these sets


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["nope"])


def test_locate_then_erase_on_the_zoo_model(capsys, tmp_path):
    out = tmp_path / "mask"
    assert cli.main(["locate", "--model", "zoo", "--data", "sentiment", "--n", "24",
                     "--method", "ig", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    mask = NeuronMask.load(out)
    assert len(mask) > 0 and f"{len(mask)} of 2048 neurons" in capsys.readouterr().out
    assert (out / "scores.safetensors").is_file()
    assert cli.main(["erase", "--model", "zoo", "--mask", str(out), "--data", "sentiment",
                     "--n", "60", "--random", "2", "--quiet"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    base, erased = map(float, re.search(r"accuracy ([\d.]+) % -> ([\d.]+) %", text).groups())
    random_drop = float(re.search(r"size per layer: drop (-?[\d.]+)", text).group(1))
    assert base - erased > random_drop + 10  # located neurons matter more than random ones
    assert cli.main(["erase", "--model", "zoo", "--mask", str(out), "--data", "sentiment",
                     "--n", "20", "--random", "1", "--mode", "mean", "--quiet"]) == 0  # fmt: skip
    assert "(mean)" in capsys.readouterr().out


def test_locate_against_controls_goes_through_locate(capsys, tmp_path):
    out = tmp_path / "mask"
    assert cli.main(["locate", "--model", "zoo", "--data", "sentiment", "--controls",
                     "addition", "sort", "--method", "contrastive", "--n", "16", "--steps",
                     "2", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    mask = NeuronMask.load(out)
    assert mask.selection["method"] == "contrastive"
    assert mask.selection["controls"] == ["addition", "sort"]
    assert 0 < len(mask) <= 0.05 * 2048
    assert "worst control drop" in capsys.readouterr().out
    # The budget rule's walk, drawn: own, worst control and random drop at every size tried.
    assert (out / "budget.png").is_file()
    index = (out / "index.md").read_text()
    assert "worst control drop / random sets" in index
    assert len(mask.selection["scan"][0]) == 4


def test_the_papers_pipeline_against_controls_says_what_its_set_costs_them(capsys, tmp_path):
    out = tmp_path / "mask"
    assert cli.main(["locate", "--model", "zoo", "--data", "sentiment", "--controls",
                     "addition", "--method", "ig", "--steps", "4", "--n", "24", "--out",
                     str(out), "--quiet"]) == 0  # fmt: skip
    sel = NeuronMask.load(out).selection
    assert set(sel["control_drops"]) == {"addition"}
    assert isinstance(sel["not_localization"], bool)
    text = capsys.readouterr().out
    assert "controls {'addition'" in text and "random sets" in text
    assert ("NOT localization" in text) == sel["not_localization"]


def test_locate_refuses_controls_named_like_the_target(tmp_path):
    with pytest.raises(ValueError, match="two datasets are named 'sentiment'"):
        cli.main(["--debug", "locate", "--model", "zoo", "--data", "sentiment", "--controls",
                  "sentiment", "--method", "contrastive", "--n", "4", "--out", str(tmp_path),
                  "--quiet"])  # fmt: skip


def test_erase_refuses_a_mask_from_another_model(tmp_path):
    NeuronMask.empty(2, 64).save(tmp_path / "mask")
    with pytest.raises(ValueError, match="2 layers of 64 neurons"):
        cli.main(["--debug", "erase", "--model", "zoo", "--mask", str(tmp_path / "mask"), "--data",
                  "sentiment", "--n", "4", "--quiet"])  # fmt: skip


@bridge_only
def test_report_on_a_local_model_and_a_local_file(capsys, tmp_path):
    model_dir = save_hf_model("gpt2", tmp_path / "model")
    rows = [{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(10)]
    data = tmp_path / "double.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report"
    assert cli.main(["report", "--model", str(model_dir), "--data", str(data), "reverse",
                     "--n", "10", "--n-locate", "6", "--sigmas", "2", "3", "--random", "1",
                     "--steps", "2", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    index = (out / "index.md").read_text()
    assert str(model_dir) in index and "(erase-matrix.png)" in index
    assert "| reverse" in index and str(data).split(":")[0] in index


def test_resolve_specs(tmp_path):
    assert resolve("addition", n=5).name == "addition" and len(resolve("addition", n=5)) == 5
    path = tmp_path / "e.jsonl"
    path.write_text('{"text": "I am glad", "label": 1}\n{"text": "so sad", "label": 0}\n')
    emotion = resolve(f"emotion:{path}")
    assert list(emotion.data["answer"]) == [" joy", " sadness"]
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"prompt": "1+1=", "answer": "2"}\n' * 3)
    assert len(resolve(str(pairs), n=2)) == 2


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        load_model("zoo", dtype="float8")
    with pytest.raises(FileNotFoundError, match="no model directory"):
        load_model(str(tmp_path / "missing"))
    assert load_model("zoo").cfg.d_mlp == 2048 // 4


def _error_line(capsys):
    """The error line, after checking that it is the only one and the last (model loading may
    print a progress bar before it)."""
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if "tl-capability" in line]
    assert len(ours) == 1 and err.endswith(ours[0] + "\n"), err
    assert ours[0].startswith("tl-capability: error: ") and "Traceback" not in err, err
    return ours[0]


def test_library_errors_print_one_line_and_exit_2(capsys, tmp_path):
    NeuronMask.empty(2, 64).save(tmp_path / "mask")
    argv = ["erase", "--model", "zoo", "--mask", str(tmp_path / "mask"), "--data", "sentiment",
            "--n", "4", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "2 layers of 64 neurons" in _error_line(capsys)
    with pytest.raises(ValueError, match="2 layers of 64 neurons"):
        cli.main(["--debug", *argv])
    assert cli.main([*argv[:2], "zoo", "--mask", str(tmp_path / "nothing"), *argv[5:]]) == 2
    assert "no mask.safetensors" in _error_line(capsys)


@pytest.mark.parametrize("n", ["0", "-5"])
def test_a_sample_count_that_is_not_positive_is_an_error(capsys, tmp_path, n):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["erase", "--model", "zoo", "--mask", str(tmp_path), "--data", "sentiment",
                  "--n", n, "--quiet"])  # fmt: skip
    assert exit_.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_bad_split_and_missing_file_are_errors(capsys, tmp_path):
    NeuronMask.empty(4, 512).save(tmp_path / "mask")
    base = ["erase", "--model", "zoo", "--mask", str(tmp_path / "mask"), "--n", "4", "--quiet"]
    assert cli.main([*base, "--data", "sentiment", "--split", "validation"]) == 2
    assert "validation" in _error_line(capsys)
    assert cli.main([*base, "--data", str(tmp_path / "x.jsonl")]) == 2
    assert "no such file" in _error_line(capsys)


@pytest.mark.parametrize(
    "specs,name",
    [
        (["addition", "addition"], "addition"),
        (["emotion:a", "imdb:b", "emotion:b"], "emotion"),
    ],
)
def test_report_refuses_capabilities_with_the_same_name(capsys, tmp_path, specs, name):
    """Later specs used to replace earlier ones of the same name silently."""
    out = tmp_path / "report"
    assert cli.main(["report", "--model", "zoo", "--data", *specs, "--out", str(out),
                     "--quiet"]) == 2  # fmt: skip
    assert f"'{name}'" in _error_line(capsys)
    assert not out.exists()


def test_interrupted_locate_leaves_no_partial_folder(capsys, tmp_path, monkeypatch):
    """Ctrl-C between scores.save and mask.save used to leave a folder with scores only."""

    def interrupted(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(NeuronMask, "save", interrupted)
    out = tmp_path / "new" / "mask"
    assert cli.main(["locate", "--model", "zoo", "--data", "sentiment", "--n", "4",
                     "--method", "activation", "--out", str(out), "--quiet"]) == 130  # fmt: skip
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_interrupted_report_keeps_the_previous_folder(capsys, tmp_path, monkeypatch):
    from tl_capability import experiments
    from tl_capability import report as report_module

    out = tmp_path / "report"
    out.mkdir()
    (out / "index.md").write_text("previous")
    monkeypatch.setattr(experiments, "localization_suite", lambda *a, **k: None)
    monkeypatch.setattr(report_module, "add_localization", lambda *a, **k: None)
    real_save = report_module.Report.save

    def save_then_interrupt(self, directory):
        real_save(self, directory)
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module.Report, "save", save_then_interrupt)
    assert cli.main(["report", "--model", "zoo", "--data", "addition", "--out", str(out),
                     "--quiet"]) == 130  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
    assert (out / "index.md").read_text() == "previous"
    monkeypatch.setattr(report_module.Report, "save", real_save)
    assert cli.main(["report", "--model", "zoo", "--data", "addition", "--out", str(out),
                     "--quiet"]) == 0  # fmt: skip
    assert (out / "index.md").read_text().startswith("# tl_capability report")
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def _usage_error(capsys, argv):
    """argparse's refusal: exit 2, no traceback, the reason on the last line."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def _no_model_load(monkeypatch):
    """Fails the test if a command loads a model: its arguments should be refused first."""
    from tl_capability import models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_model", refuse)


@pytest.mark.parametrize(
    "device", ["bogus", "cuda:0" if not __import__("torch").cuda.is_available() else "cuda:99"]
)
def test_a_device_this_machine_lacks_is_one_line(capsys, tmp_path, monkeypatch, device):
    """--device bogus and --device cuda without a GPU printed 30-40-line tracebacks."""
    _no_model_load(monkeypatch)
    argv = ["locate", "--model", "zoo", "--data", "sentiment", "--device", device,
            "--out", str(tmp_path / "m")]  # fmt: skip
    line = _usage_error(capsys, argv)
    assert "--device" in line and repr(device) in line


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--steps", "0"], "--steps: must be a positive integer, got 0"),
        (["--method", "ig", "--steps", "0"], "--steps: must be a positive integer"),
        (["--target-drop", "0"], "--target-drop: must be a finite number in (0, 100] points"),
        (["--target-drop", "-5"], "--target-drop"),
        (["--budget", "0"], "--budget: must be a finite number in (0, 1]"),
        (["--method", "ig", "--budget", "0"], "--budget"),
        (["--batch-size", "0"], "--batch-size: must be a positive integer"),
    ],
)
def test_locate_refuses_values_out_of_range_before_loading(
    capsys, tmp_path, monkeypatch, extra, words
):
    """--steps 0 wrote "steps": 20, and --target-drop 0 reported its goal reached."""
    _no_model_load(monkeypatch)
    argv = ["locate", "--model", "zoo", "--data", "sentiment", "--out", str(tmp_path / "m"),
            *extra]  # fmt: skip
    assert words in _usage_error(capsys, argv)


def test_report_refuses_zero_steps(capsys, tmp_path, monkeypatch):
    _no_model_load(monkeypatch)
    argv = ["report", "--model", "zoo", "--data", "addition", "--steps", "0",
            "--out", str(tmp_path / "r")]  # fmt: skip
    assert "--steps: must be a positive integer" in _usage_error(capsys, argv)


def test_a_budget_for_the_papers_pipeline_is_refused(capsys, tmp_path, monkeypatch):
    """--method ig --budget 0.1 was accepted and ignored: the σ rule picks the size."""
    _no_model_load(monkeypatch)
    argv = ["locate", "--model", "zoo", "--data", "sentiment", "--method", "ig",
            "--budget", "0.1", "--out", str(tmp_path / "m"), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "--budget" in _error_line(capsys)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("command", ["locate", "report"])
def test_an_unwritable_out_is_found_before_computing(capsys, tmp_path, monkeypatch, command):
    """An --out under a file used to fail only after the whole computation."""
    _no_model_load(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = [command, "--model", "zoo", "--data", "sentiment", "--out",
            str(blocker / "out"), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "a-file" in _error_line(capsys)
    assert blocker.read_text() == ""
