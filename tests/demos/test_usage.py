"""The demos' command lines: a count of 0 (or less) is a usage error, exit 2, before any
work; `fromscratch demo NAME --help` shows that demo's own options."""
from __future__ import annotations

import pytest

from fromscratch import cli
from fromscratch.demos import DEMOS, cubic, moons, sine


def _never_trains(*args, **kwargs):
    raise AssertionError("a demo started training")


def usage(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.mark.parametrize("argv, says", [
    (["demo", "sine", "--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["demo", "sine", "--frames", "0"], "argument --frames: must be at least 1, got 0"),
    (["demo", "moons", "--epochs", "-3"], "argument --epochs: must be at least 1, got -3"),
    (["demo", "moons", "--frames", "0"], "argument --frames: must be at least 1, got 0"),
    (["demo", "cubic", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["demo", "cubic", "--nproc", "0"], "argument --nproc: must be at least 1, got 0"),
    (["demo", "cubic", "--nproc", "-1"], "argument --nproc: must be at least 1, got -1"),
    (["demo", "cubic", "--accumulation-steps", "0"], "argument --accumulation-steps: must be"),
    (["demo", "cubic", "--accumulation-steps", "1.5"], "'1.5' is not a whole number"),
    (["demo", "cubic", "--nproc", "2", "--accumulation-steps", "51"],
     "102 micro-batches per step, but the data set has only 100 points"),
    (["demo", "--frames", "3"], "invalid choice: '3'"),
    (["demo", "--seed-config"], "unrecognized arguments: --seed-config"),
])
def test_bad_values_are_usage_errors(argv, says, capsys, monkeypatch):
    for demo in (cubic, sine, moons):
        monkeypatch.setattr(demo, "train", _never_trains)
    status, out, err = usage(argv, capsys)
    assert status == 2 and says in err and "usage: fromscratch demo" in err, err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("name, options", [
    ("cubic", ["--nproc", "--steps", "--accumulation-steps"]),
    ("sine", ["--seed-config", "--frames", "--epochs"]),
    ("moons", ["--frames", "--epochs"]),
    ("verify", ["--out"]),
])
def test_demo_help_is_the_demos_own(name, options, capsys):
    assert set(DEMOS) == {"cubic", "sine", "moons", "verify"}
    status, out, _ = usage(["demo", name, "--help"], capsys)
    assert status == 0 and f"usage: fromscratch demo {name}" in out
    assert all(option in out for option in options), out


def test_demo_help_without_a_name_lists_the_demos(capsys):
    assert cli.main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: fromscratch demo" in out and "fromscratch demo NAME --help" in out


def test_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    status, _, err = usage(["demo", "cubic", "--out", str(tmp_path / "file")], capsys)
    assert status == 2 and f"--out {tmp_path / 'file'} is a file, not a folder" in err
