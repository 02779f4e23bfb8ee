"""Checkpoints: atomic writes that survive SIGKILL, and resuming bit for bit."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fromscratch.train import atomic_save, fit, load
from fromscratch.train.checkpoint import CHECKPOINT

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "OMP_NUM_THREADS": "1"}


def test_atomic_save_round_trip_and_stale_temporaries(tmp_path):
    path = tmp_path / "ck" / "checkpoint.pt"
    atomic_save({"a": torch.arange(3), "b": [1.5, None]}, path)
    stale = path.parent / ".checkpoint.pt.dead.tmp"
    stale.write_bytes(b"half a checkpoint")
    atomic_save({"a": torch.arange(4)}, path)
    assert torch.equal(load(path)["a"], torch.arange(4))
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]


KILL_DURING_SAVE = """
import os, signal, sys, torch
from fromscratch.train import checkpoint
path = sys.argv[1]
checkpoint.atomic_save({"step": torch.tensor(1)}, path)
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[2] == "write":           # killed half-way through writing the new file
    def save(obj, f):
        f.write(b"PK\\x03\\x04 partial")
        f.flush()
        die()
    torch.save = save
else:                                # killed after writing, before the rename
    os.replace = die
checkpoint.atomic_save({"step": torch.tensor(2)}, path)
"""


@pytest.mark.parametrize("when", ["write", "rename"])
def test_kill_during_save_leaves_the_previous_checkpoint(tmp_path, when):
    path = tmp_path / "checkpoint.pt"
    run = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(path), when], env=ENV,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert int(load(path)["step"]) == 1                  # the old one, whole
    assert len(list(tmp_path.glob(".checkpoint.pt.*.tmp.pt"))) == 1   # the dead writer's file
    atomic_save({"step": torch.tensor(3)}, path)         # the next save cleans it up
    assert int(load(path)["step"]) == 3 and not list(tmp_path.glob(".*.tmp*"))


class Noisy(Dataset):
    """Draws from Python's, NumPy's and torch's global generators in __getitem__, as data
    augmentation does: a resume that restores any of them wrongly changes the result."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g, dtype=torch.float64)
        self.y = torch.randn(n, 1, generator=g, dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        noise = random.random() * 1e-2 + float(np.random.normal()) * 1e-2
        return self.x[i] + noise + 1e-2 * torch.randn(3, dtype=torch.float64), self.y[i]


class Crash(Exception):
    pass


def train(checkpoint_dir, resume=False, crash_at=None):
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.3), nn.Tanh(), nn.Linear(8, 1)).double()
    loader = DataLoader(Noisy(23), batch_size=4, shuffle=True)   # 6 micro-batches, last of 3
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.7)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)

    def callback(step, net, loss):
        if step == crash_at:
            raise Crash

    history = fit(model, loader, nn.functional.mse_loss, opt, epochs=3, accumulation_steps=4,
                  scheduler=sched, scaler=scaler, max_grad_norm=1.0,
                  checkpoint_dir=checkpoint_dir, checkpoint_every=1, resume=resume,
                  callback=callback, progress=False)
    return model, history


def test_resume_is_bit_identical_in_process(tmp_path):
    """Crash mid-epoch (step 5 of 6: epoch 3's first window), resume, compare bits:
    shuffling, dropout and the dataset's own random draws all continue where they were."""
    whole, h_whole = train(None)
    with pytest.raises(Crash):
        train(tmp_path, crash_at=5)
    state = load(tmp_path / CHECKPOINT)
    assert (state["epoch"], state["micro_batch"], len(state["history"]["loss"])) == (2, 0, 4)
    resumed, h_resumed = train(tmp_path, resume=True)
    assert h_resumed.resumed_from == 4 and h_resumed.loss == h_whole.loss
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume by {float((a - b).abs().max()):.3g}"


def test_resume_mid_epoch_replays_the_loader(tmp_path):
    """A checkpoint inside an epoch (after window 1 of 2): the loader is re-iterated from
    the epoch's start with that epoch's random state, then the saved state is put back."""
    whole, _ = train(None)
    with pytest.raises(Crash):
        train(tmp_path, crash_at=4)
    state = load(tmp_path / CHECKPOINT)
    assert (state["epoch"], state["micro_batch"]) == (1, 4)
    resumed, _ = train(tmp_path, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))


def test_resume_refuses_another_configuration(tmp_path):
    train(tmp_path, crash_at=None)
    model = nn.Linear(3, 1).double()
    with pytest.raises(ValueError, match="accumulation_steps"):
        fit(nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.3), nn.Tanh(), nn.Linear(8, 1)).double(),
            [], nn.functional.mse_loss, torch.optim.SGD(model.parameters(), lr=0.1),
            accumulation_steps=2, checkpoint_dir=tmp_path, resume=True)


@pytest.mark.slow   # three fresh Python processes (about 6 s on a quiet machine)
def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path):
    """`fromscratch train` killed with SIGKILL between steps, resumed in a new process:
    the final parameters equal an uninterrupted run's, bit for bit."""
    common = [sys.executable, "-m", "fromscratch", "train", "--epochs", "2", "--batch-size", "10",
              "--accumulation-steps", "2", "--no-progress"]
    ck = tmp_path / "ck"
    whole = subprocess.Popen([*common, "--out", str(tmp_path / "whole")], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    victim = subprocess.Popen([*common, "--out", str(tmp_path / "killed"), "--checkpoint-dir",
                               str(ck), "--throttle", "0.1"], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not (ck / CHECKPOINT).exists():
        assert victim.poll() is None, victim.stdout.read().decode()
        assert time.monotonic() < deadline, "no checkpoint after 60 s"
        time.sleep(0.02)
    time.sleep(0.15)                       # a step or two more, then kill it
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model.pt").exists()
    at = len(load(ck / CHECKPOINT)["history"]["loss"])
    assert 0 < at < 10, f"the kill landed after step {at} of 10"

    resumed = subprocess.run([*common, "--out", str(tmp_path / "killed"), "--checkpoint-dir",
                              str(ck), "--resume"], env=ENV, capture_output=True, text=True,
                             timeout=60)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed at step {at}" in resumed.stdout
    assert whole.wait(timeout=60) == 0, whole.stdout.read().decode()
    a = torch.load(tmp_path / "whole" / "model.pt")
    b = torch.load(tmp_path / "killed" / "model.pt")
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name}: {float((a[name] - b[name]).abs().max()):.3g}"
    m_whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    m_resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert m_resumed["loss"] == m_whole["loss"] and m_resumed["resumed_from_step"] == at
