"""A resume continues the same run or refuses: every setting that shapes the trajectory is
stored in the checkpoint, and each one that differs is listed as `name: old -> new`."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fromscratch.train import fit, load
from fromscratch.train.checkpoint import CHECKPOINT
from fromscratch.train.runconfig import ResumeError

from .helpers import TINY, train_cli


def test_resume_lists_every_changed_setting(tmp_path, capsys):
    ck = ["--checkpoint-dir", str(tmp_path / "ck")]
    assert train_cli([*TINY, *ck, "--out", str(tmp_path / "a")], capsys)[0] == 0
    stored = load(tmp_path / "ck" / CHECKPOINT)["config"]
    assert {k: stored[k] for k in ("seed", "batch_size", "points", "schedule", "dtype")} == {
        "seed": 0, "batch_size": 5, "points": 20, "schedule": "cosine", "dtype": "float32"}
    assert stored["optimizer.lr"] == 0.1 and stored["optimizer.momentum"] == 0.9

    status, out, err = train_cli([*TINY, *ck, "--out", str(tmp_path / "b"), "--resume",
                                  "--seed", "1", "--batch-size", "4", "--points", "24",
                                  "--lr", "0.2", "--momentum", "0.5", "--max-grad-norm", "1",
                                  "--dtype", "float64", "--accumulation-steps", "2"], capsys)
    assert status == 2 and out == ""
    for line in ("seed: 0 -> 1", "batch_size: 5 -> 4", "points: 20 -> 24",
                 "optimizer.lr: 0.1 -> 0.2", "optimizer.momentum: 0.9 -> 0.5",
                 "max_grad_norm: None -> 1.0", "dtype: 'float32' -> 'float64'",
                 "accumulation_steps: 1 -> 2", "micro_batches_per_epoch: 4 -> 6"):
        assert f"\n  {line}\n" in err + "\n", f"{line!r} missing from:\n{err}"
    assert str(tmp_path / "ck" / CHECKPOINT) in err
    assert not (tmp_path / "b" / "model.pt").exists()

    status, _, err = train_cli([*TINY, *ck, "--out", str(tmp_path / "b"), "--resume",
                                "--schedule", "constant"], capsys)
    assert status == 2 and "  schedule: 'cosine' -> 'constant'" in err
    assert "  scheduler: 'CosineAnnealingLR' -> None" in err


def test_safe_settings_may_change(tmp_path, capsys):
    """--out, --checkpoint-every, --throttle, --device and --skip-nonfinite are not part of
    the run: a resume with other values continues it, to the same parameters."""
    ck = ["--checkpoint-dir", str(tmp_path / "ck")]
    assert train_cli([*TINY, "--out", str(tmp_path / "whole")], capsys)[0] == 0
    assert train_cli([*TINY, *ck, "--out", str(tmp_path / "a"), "--epochs", "2"], capsys)[0] == 0
    status, out, err = train_cli([*TINY, *ck, "--out", str(tmp_path / "b"), "--resume",
                                  "--checkpoint-every", "3", "--throttle", "0.001",
                                  "--device", "cpu", "--skip-nonfinite"], capsys)
    assert status == 0, err
    assert "resumed at step 8" in out
    whole, resumed = (torch.load(tmp_path / d / "model.pt") for d in ("whole", "b"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_longer_epochs_with_cosine_is_refused(tmp_path, capsys):
    """Past T_max cosine climbs back up: a longer run on a schedule sized for the shorter
    one would train with a rising rate. The refusal says why."""
    ck = ["--checkpoint-dir", str(tmp_path / "ck")]
    assert train_cli([*TINY, *ck, "--out", str(tmp_path / "a")], capsys)[0] == 0
    status, _, err = train_cli([*TINY, *ck, "--out", str(tmp_path / "a"), "--resume",
                                "--epochs", "4"], capsys)
    assert status == 2
    assert "  epochs: 2 -> 4\n" in err and "  scheduler.T_max: 8 -> 16\n" in err
    assert "epochs may change only in a run without a scheduler" in err


def test_longer_epochs_with_a_constant_rate_is_one_longer_run(tmp_path, capsys):
    """--schedule constant: 2 epochs, then resumed to 4, equals 4 epochs at once, bit for
    bit; resuming to fewer epochs than the checkpoint has done is refused."""
    common = [*TINY, "--schedule", "constant"]
    ck = ["--checkpoint-dir", str(tmp_path / "ck")]
    assert train_cli([*common, "--epochs", "4", "--out", str(tmp_path / "whole")], capsys)[0] == 0
    assert train_cli([*common, *ck, "--out", str(tmp_path / "a")], capsys)[0] == 0
    status, out, err = train_cli([*common, *ck, "--out", str(tmp_path / "b"), "--resume",
                                  "--epochs", "4"], capsys)
    assert status == 0, err
    assert out.startswith("16 steps") and "resumed at step 8" in out
    whole, longer = (torch.load(tmp_path / d / "model.pt") for d in ("whole", "b"))
    assert all(torch.equal(whole[k], longer[k]) for k in whole)

    status, _, err = train_cli([*common, *ck, "--out", str(tmp_path / "c"), "--resume",
                                "--epochs", "3"], capsys)
    assert status == 2 and "finished 4 epochs, more than epochs=3" in err


def _fit(ck, *, lr=0.1, epochs=1, config=None, **kwargs):
    torch.manual_seed(0)
    model = nn.Linear(2, 1).double()
    data = [(torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64))
            for _ in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return fit(model, data, nn.functional.mse_loss, opt, epochs=epochs, checkpoint_dir=ck,
               resume=True, config=config, progress=False, **kwargs)


def test_fit_compares_its_own_settings_and_the_callers_config(tmp_path):
    _fit(tmp_path, config={"seed": 0, "data": "v1"})
    with pytest.raises(ResumeError) as e:
        _fit(tmp_path, lr=0.5, config={"seed": 1, "data": "v1", "extra": [1, 2]})
    message = str(e.value)
    assert "  optimizer.lr: 0.1 -> 0.5\n" in message and "  seed: 0 -> 1\n" in message
    assert "  extra: (not recorded) -> [1, 2]\n" in message and "data:" not in message
    assert _fit(tmp_path, epochs=2, config={"seed": 0, "data": "v1"}).resumed_from == 3


def test_fit_checks_the_config_it_is_given(tmp_path):
    with pytest.raises(TypeError, match=r"config\['model'\]"):
        _fit(tmp_path, config={"model": nn.Linear(1, 1)})    # would not load back
    with pytest.raises(ValueError, match=r"config\['epochs'\] = 5, but fit was called with "
                                         r"epochs=1"):
        _fit(tmp_path, config={"epochs": 5})
    with pytest.raises(ValueError, match="resume=True needs the checkpoint_dir"):
        _fit(None)
