"""`fromscratch demo sine`: the default configuration reaches MSE <= 0.01 for every seed
0..9 in 4000 epochs, beats the notebook's configuration, and the demo writes its files."""
from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image

from fromscratch.demos import _engine_demo, sine


def test_default_config_reaches_target_for_seeds_0_to_9():
    finals = {seed: sine.train(sine.DEFAULT, seed, sine.EPOCHS).final_loss for seed in range(10)}
    table = "  ".join(f"seed {s}: {v:.2e}" for s, v in finals.items())
    print(table)
    assert all(v <= sine.TARGET for v in finals.values()), f"target {sine.TARGET}: {table}"


def test_default_config_beats_the_notebooks():
    """By more than 10x on seeds 0, 1, 2 (the notebook's figures themselves are checked
    in tests/numpy_nn/test_notebook.py)."""
    for seed in (0, 1, 2):
        notebook = sine.train(sine.NOTEBOOK, seed).final_loss
        assert sine.train(sine.DEFAULT, seed).final_loss < notebook / 10, seed


def test_data_is_the_notebooks():
    x, y = sine.data()
    assert x.shape == y.shape == (100, 1)
    assert x[0, 0] == 0.0 and x[-1, 0] == 1.0
    assert np.allclose(y, 20 * np.sin(2 * np.pi * x))


def _run_main(args, capsys):
    assert sine.main(args) == 0
    return capsys.readouterr().out


def test_main_writes_files(tmp_path, capsys):
    out = _run_main(["--out", str(tmp_path), "--seed", "3", "--epochs", "400", "--frames", "5"],
                    capsys)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs"] == 400 and metrics["seed"] == 3
    assert 0 < metrics["final_loss"] < metrics["first_loss"]
    assert metrics["config"]["name"] == "default"
    assert metrics["notebook_config_final_loss"] > metrics["final_loss"]
    for name in ("loss.png", "fit.png", "fit.gif"):
        path = tmp_path / name
        assert path.stat().st_size > 1000, name
        assert str(path) in out                        # the demo says where its files are
    assert Image.open(tmp_path / "fit.gif").n_frames == 5


def test_main_seed_config(tmp_path, capsys):
    _run_main(["--out", str(tmp_path), "--seed-config", "--epochs", "300", "--frames", "3"],
              capsys)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["name"] == "notebook" and metrics["config"]["lr"] == 0.15
    assert os.path.exists(tmp_path / "fit.gif")


def test_progress_bar_shows_in_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr("sys.stdout", term)
    with _engine_demo.progress("training", 10) as update:
        update(10, 0.5)
    assert "training" in term.getvalue() and "10/10" in term.getvalue()


def test_cli_passes_out_to_one_demo_and_to_all(tmp_path, monkeypatch, capsys):
    from fromscratch import cli
    assert cli.main(["demo", "sine", "--out", str(tmp_path / "one"), "--epochs", "50",
                     "--frames", "2"]) == 0
    assert (tmp_path / "one" / "metrics.json").exists()
    calls = []
    monkeypatch.setattr("fromscratch.demos.run", lambda name, argv: calls.append((name, argv)) or 0)
    assert cli.main(["demo", "--out", str(tmp_path / "all")]) == 0    # not a demo named DIR
    assert ("sine", ["--out", str(tmp_path / "all" / "sine")]) in calls
    assert ("moons", ["--out", str(tmp_path / "all" / "moons")]) in calls
