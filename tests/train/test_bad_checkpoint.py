"""An unreadable checkpoint is one CheckpointError that names the file and says what is
wrong with it: no bare EOFError, no OSError, no advice to unpickle with weights_only=False."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from fromscratch.train import fit, load
from fromscratch.train.checkpoint import CHECKPOINT, CheckpointError

from .helpers import TINY, train_cli


class Stranger:
    """A class the weights-only unpickler does not know."""


def _good(path: Path) -> None:
    model = nn.Linear(2, 1)
    fit(model, [(torch.randn(3, 2), torch.randn(3, 1))] * 2, nn.functional.mse_loss,
        torch.optim.SGD(model.parameters(), lr=0.1), checkpoint_dir=path.parent,
        progress=False)


def _truncated(path: Path) -> None:
    _good(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD = {   # name: (how the file is made, what the error must say)
    "empty": (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    "truncated": (_truncated, "is truncated: "),
    "garbage": (lambda p: p.write_bytes(b"hello, I am not a checkpoint" * 20),
                "is not a torch checkpoint: 560 bytes that are not a zip archive "
                "(they start with b'hello, I am not ')"),
    "raw-pickle": (lambda p: p.write_bytes(pickle.dumps({"model": 1})),
                   "is not a torch checkpoint"),
    "foreign-object": (lambda p: torch.save({"model": Stranger()}, p),
                       "holds objects other than tensors and plain Python"),
    "missing-keys": (lambda p: torch.save({"model": {}, "epoch": 1}, p),
                     "was not written by fromscratch.train: missing keys optimizer, scheduler"),
    "not-a-dict": (lambda p: torch.save([1, 2, 3], p),
                   "was not written by fromscratch.train: it holds a list"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_resume_from_a_bad_checkpoint_says_what_is_wrong(tmp_path, name):
    make, says = BAD[name]
    path = tmp_path / CHECKPOINT
    make(path)
    model = nn.Linear(2, 1)
    with pytest.raises(CheckpointError) as e:
        fit(model, [(torch.randn(3, 2), torch.randn(3, 1))], nn.functional.mse_loss,
            torch.optim.SGD(model.parameters(), lr=0.1), checkpoint_dir=tmp_path, resume=True,
            progress=False)
    message = str(e.value)
    assert message.startswith(f"checkpoint {path} ") and says in message, message
    assert "weights_only" not in message and "\n" not in message


def test_load_names_a_missing_file_and_reads_a_good_one(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load(tmp_path)
    _good(tmp_path / CHECKPOINT)
    assert load(tmp_path / CHECKPOINT)["epoch"] == 1


def test_cli_reports_a_bad_checkpoint(tmp_path, capsys):
    (tmp_path / CHECKPOINT).write_bytes(b"")
    status, _, err = train_cli([*TINY, "--out", str(tmp_path / "out"), "--resume",
                                "--checkpoint-dir", str(tmp_path)], capsys)
    assert status == 1
    assert err.strip() == (f"fromscratch train: error: checkpoint {tmp_path / CHECKPOINT} "
                           f"is empty (0 bytes)")
