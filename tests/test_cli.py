import pytest

from tl_capability import cli


def test_demo_prints_every_capability_and_its_accuracy(capsys):
    from tl_capability import zoo

    assert cli.main(["demo", "--n", "20"]) == 0
    out = capsys.readouterr().out
    for name in zoo.capability_names():
        assert name in out
    assert "accuracy" in out and "%" in out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["nope"])
