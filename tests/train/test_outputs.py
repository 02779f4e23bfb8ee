"""Output places are checked before training, and every file is written atomically: a
failed write leaves the previous file whole, never a 0-byte or partial one."""
from __future__ import annotations

import errno
import os
import tempfile

import pytest
import torch
from torch import nn

from fromscratch import atomic
from fromscratch.atomic import OutputError, atomic_write_text, check_writable
from fromscratch.train import cli as train_cli_module
from fromscratch.train import fit

from .helpers import TINY, train_cli


def _fail_with(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


def _never_trains(*args, **kwargs):
    raise AssertionError("training started before the output folder was checked")


# Each way an output folder can be unusable. A read-only folder and a full disk are
# simulated (a chmod does not stop root, and no test should fill a disk).
def _file_in_the_way(tmp_path, monkeypatch):
    (tmp_path / "out").write_text("not a folder")
    return tmp_path / "out", "is a file, not a folder"


def _under_a_file(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    return tmp_path / "file" / "out", f"{tmp_path / 'file'} is a file, not a folder"


def _read_only(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "mkstemp", _fail_with(errno.EROFS))
    return tmp_path / "out", "Read-only file system"


def _disk_full(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", _fail_with(errno.ENOSPC))
    return tmp_path / "out", "No space left on device"


UNUSABLE = [_file_in_the_way, _under_a_file, _read_only, _disk_full]


@pytest.mark.parametrize("unusable", UNUSABLE, ids=lambda f: f.__name__.strip("_"))
def test_train_checks_out_before_training(tmp_path, monkeypatch, capsys, unusable):
    out, reason = unusable(tmp_path, monkeypatch)
    monkeypatch.setattr(train_cli_module, "fit", _never_trains)
    status, _, err = train_cli([*TINY, "--out", str(out)], capsys)
    assert status == 2 and f"--out {out}" in err and reason in err, err
    assert not list(tmp_path.glob("**/.write-probe.*"))


@pytest.mark.parametrize("unusable", UNUSABLE, ids=lambda f: f.__name__.strip("_"))
def test_train_checks_the_checkpoint_dir_before_training(tmp_path, monkeypatch, capsys,
                                                         unusable):
    folder, reason = unusable(tmp_path, monkeypatch)
    out = tmp_path / "fine"
    out.mkdir()
    monkeypatch.setattr(atomic, "check_writable", _passes_for(out))
    monkeypatch.setattr(train_cli_module, "fit", _never_trains)
    status, _, err = train_cli([*TINY, "--out", str(out), "--checkpoint-dir", str(folder)],
                               capsys)
    assert status == 2 and f"--checkpoint-dir {folder}" in err and reason in err, err


def _passes_for(good):
    """check_writable, except that ``good`` passes without writing (the simulated faults
    would otherwise hit it too)."""
    real = check_writable

    def check(folder, what="output folder"):
        return folder if str(folder) == str(good) else real(folder, what)
    return check


def test_fit_checks_checkpoint_dir_before_the_first_step(tmp_path):
    (tmp_path / "ck").write_text("a file")
    steps = []
    model = nn.Linear(2, 1)
    with pytest.raises(OutputError, match=f"checkpoint_dir {tmp_path / 'ck'} is a file"):
        fit(model, [(torch.randn(3, 2), torch.randn(3, 1))], nn.functional.mse_loss,
            torch.optim.SGD(model.parameters(), lr=0.1), checkpoint_dir=tmp_path / "ck",
            callback=lambda *a: steps.append(a), progress=False)
    assert steps == []


def test_check_writable_creates_the_folder_and_leaves_nothing(tmp_path):
    assert check_writable(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list((tmp_path / "a" / "b").iterdir()) == []


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, '{"old": true}')
    monkeypatch.setattr(os, "fsync", _fail_with(errno.ENOSPC))   # the data never reached disk
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, '{"new": true}')
    assert path.read_text() == '{"old": true}' and os.listdir(tmp_path) == ["metrics.json"]


def test_disk_full_at_the_end_keeps_the_previous_model_and_metrics(tmp_path, monkeypatch,
                                                                   capsys):
    """The disk fills up while training: model.pt and metrics.json from the previous run
    stay whole, no partial or 0-byte file appears, and the error says which folder."""
    out = tmp_path / "out"
    assert train_cli([*TINY, "--out", str(out)], capsys)[0] == 0
    before = {name: (out / name).read_bytes() for name in ("model.pt", "metrics.json")}

    def half_then_full(obj, f, *args, **kwargs):      # torch.save on a filling disk
        f = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
        f.write(b"PK\x03\x04 half a file")
        f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", half_then_full)
    status, _, err = train_cli([*TINY, "--out", str(out), "--seed", "1"], capsys)
    assert status == 1 and f"cannot write to --out {out}: No space left on device" in err
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(out)) == ["metrics.json", "model.pt"]
