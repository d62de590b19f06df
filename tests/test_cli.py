import pytest

from tl_capability import cli


def test_demo_writes_the_report_and_prints_the_headline(capsys, tmp_path):
    from tl_capability import zoo

    out_dir = tmp_path / "report"
    assert cli.main(["demo", "--quick", "--quiet", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    for name in zoo.capability_names():
        assert name in out
    assert "accuracy" in out and "%" in out and "Report:" in out
    index = (out_dir / "index.md").read_text()
    for png in ("neurons", "erase-matrix", "sigma", "neg"):
        assert (out_dir / f"{png}.png").stat().st_size > 1000
        assert f"({png}.png)" in index
    assert "Skill-neuron probe" in index and "Knowledge-neuron fidelity" in index


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["nope"])
