"""`fromscratch demo moons`: >= 97% training accuracy for every seed 0..9, and its files."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from fromscratch.demos import moons


def test_accuracy_for_seeds_0_to_9():
    acc = {seed: moons.train(seed).accuracy for seed in range(10)}
    table = "  ".join(f"seed {s}: {a:.1%}" for s, a in acc.items())
    print(table)
    assert all(a >= moons.TARGET_ACCURACY for a in acc.values()), table


def test_data():
    x, labels = moons.make_moons(seed=1)
    assert x.shape == (400, 2) and labels.shape == (400,)
    assert np.bincount(labels).tolist() == [200, 200]
    x0, _ = moons.make_moons(noise=0.0)
    upper, lower = x0[:200], x0[200:]
    assert np.allclose(np.hypot(*upper.T), 1.0)                        # unit half circle
    assert np.allclose(np.hypot(lower[:, 0] - 1, lower[:, 1] - 0.5), 1.0)


def test_main_writes_files(tmp_path, capsys):
    assert moons.main(["--out", str(tmp_path), "--seed", "2", "--epochs", "200",
                       "--frames", "4"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs"] == 200 and metrics["seed"] == 2
    assert 0 < metrics["final_loss"] < 0.7 and 0.5 < metrics["accuracy"] <= 1.0
    for name in ("loss.png", "boundary.png", "boundary.gif"):
        assert (tmp_path / name).stat().st_size > 1000, name
        assert str(tmp_path / name) in out
    assert Image.open(tmp_path / "boundary.gif").n_frames == 4
