"""Many processes (gloo, CPU): W processes with accumulation k take exactly the steps of
one process with accumulation W*k on the same loader."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fromscratch.train import fit
from fromscratch.train.cli import main as train_main
from fromscratch.train.distributed import deal, empty_like, launch
from fromscratch.nn import BatchNorm

from .helpers import (ce_mean, ce_sum, fit_worker, make_optimizer, max_diff, params,
                      token_batches, token_model, windows)

pytestmark = pytest.mark.distributed

CONFIGS = {
    # 11 micro-batches, windows of 2 x 2 = 4: the last window has 3, rank 1 gets one
    "sgd-uneven": dict(n_batches=11, k=2, epochs=2, optimizer="sgd", max_grad_norm=0.5,
                       count_syncs=True),
    # 9 micro-batches: the last window has one, rank 1 gets none and runs an empty one
    "adam-empty-rank": dict(n_batches=9, k=2, epochs=2, optimizer="adam"),
    # a plain mean loss (over sequences) is weighted the same way on any W
    "mean-loss": dict(n_batches=9, k=1, epochs=1, optimizer="sgd", mean_loss=True),
    # SyncBatchNorm inside DDP, with the empty micro-batch in the last window
    "sync-bn": dict(n_batches=9, k=1, epochs=2, optimizer="sgd", norm="sync"),
    # an inf input in micro-batch 5, which only rank 1 sees: both ranks skip step 3 (or
    # both stop: one that went on alone would wait for the other until the timeout)
    "nonfinite-skip": dict(n_batches=9, k=1, epochs=1, optimizer="sgd", poison=5,
                           on_nonfinite="skip"),
    "nonfinite-raise": dict(n_batches=9, k=1, epochs=1, optimizer="sgd", poison=5),
}


def one_process(cfg, k, batches=None, norm=None):
    model = token_model(norm=norm)
    optimizer, scheduler = make_optimizer(cfg["optimizer"], model)
    history = fit(model, batches or token_batches(cfg["n_batches"]),
                  ce_mean if cfg.get("mean_loss") else ce_sum, optimizer, scheduler=scheduler,
                  epochs=cfg["epochs"], accumulation_steps=k,
                  max_grad_norm=cfg.get("max_grad_norm"),
                  on_nonfinite=cfg.get("on_nonfinite", "raise"), progress=False)
    return params(model), history


def test_two_gloo_processes(tmp_path):
    """One launch of 2 processes (spawning is the slow part), then every check on it."""
    launch(fit_worker, 2, CONFIGS, str(tmp_path), timeout_s=120)
    results = torch.load(tmp_path / "fit.pt")

    # 2 processes x k = 1 process x 2k, float64, the uneven last windows included
    for name in ("sgd-uneven", "adam-empty-rank", "mean-loss"):
        cfg, got = CONFIGS[name], results[name]
        ref, history = one_process(cfg, 2 * cfg["k"])
        diff = max_diff(got["params"], ref)
        assert diff < 1e-12, f"{name}: 2 processes x k={cfg['k']} vs 1 x {2 * cfg['k']}: {diff:.3g}"
        assert got["loss"] == pytest.approx(history.loss, rel=1e-12, abs=0), name  # logged loss
        assert got["items"] == history.items and got["lr"] == history.lr, name

    # gradients are all-reduced once per window (no_sync before the last micro-batch)
    got = results["sgd-uneven"]
    assert got["syncs"] == len(got["loss"]) == 2 * 3, (
        f"{got['syncs']} gradient all-reduces for {len(got['loss'])} steps")

    # SyncBatchNorm in DDP, 2 x 1 micro-batch = 1 process on the two concatenated, plain
    # BatchNorm; the last window (one micro-batch, rank 1 empty) included
    cfg = CONFIGS["sync-bn"]
    pairs = [tuple(torch.cat(t) for t in zip(*w)) for w in windows(token_batches(9), 2)]
    ref, history = one_process(cfg, 1, batches=pairs, norm=BatchNorm)
    got = results["sync-bn"]
    assert max_diff(got["params"], ref) < 1e-12, "sync-bn"
    assert got["loss"] == pytest.approx(history.loss, rel=1e-12, abs=0)

    # a non-finite window seen by rank 1 only: skipped (or stopped on) by both ranks alike
    cfg, got = CONFIGS["nonfinite-skip"], results["nonfinite-skip"]
    ref, history = one_process(cfg, 2, batches=token_batches(9, poison=5))
    assert got["skipped"] == history.skipped == [3]
    assert max_diff(got["params"], ref) < 1e-12, "nonfinite-skip"
    assert re.match(r"step 3 \(epoch 1, micro-batches 5\.\.6\): the (loss|gradient norm) is nan",
                    results["nonfinite-raise"]["error"])


def test_deal_is_round_robin_and_pads():
    window = [(torch.full((2, 1), i), torch.full((2,), i)) for i in range(3)]
    r0, r1 = deal(window, 0, 2), deal(window, 1, 2)
    assert [int(b[0][0, 0]) for b in r0] == [0, 2]
    assert int(r1[0][0][0, 0]) == 1 and r1[1][0].shape == (0, 1) and r1[1][1].shape == (0,)
    assert len(deal(window[:1], 1, 2)) == 1 and deal(window[:1], 1, 2)[0][0].numel() == 0
    with pytest.raises(TypeError, match="tensors"):
        empty_like(["a string"])


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


@pytest.mark.slow   # torchrun and two workers (about 5 s on a quiet machine)
def test_torchrun_two_processes(tmp_path):
    """`torchrun --nproc_per_node=2 -m fromscratch train` equals one process with twice
    the accumulation, in float64, the short last window included (100 points / 7)."""
    common = ["--epochs", "2", "--batch-size", "7", "--dtype", "float64", "--no-progress"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                "--standalone", "-m", "fromscratch", "train", *common,
                "--accumulation-steps", "2", "--out", str(tmp_path / "two")]
    run = subprocess.run(torchrun, env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "on 2 process(es)" in run.stdout
    assert train_main([*common, "--accumulation-steps", "4", "--out", str(tmp_path / "one")]) == 0
    two = torch.load(tmp_path / "two" / "model.pt")
    one = torch.load(tmp_path / "one" / "model.pt")
    assert max_diff(two, one) < 1e-12
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert m2["world_size"] == 2 and m2["steps"] == m1["steps"] == 2 * 4
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-12)
