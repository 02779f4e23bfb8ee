"""`fromscratch train`'s command line: impossible values are usage errors (exit 2) before
anything runs."""
from __future__ import annotations

import pytest

from fromscratch.train import cli as train_cli_module

from .helpers import train_cli


@pytest.mark.parametrize("argv, says", [
    (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["--accumulation-steps", "0"], "argument --accumulation-steps: must be at least 1"),
    (["--accumulation-steps", "1.5"], "argument --accumulation-steps: '1.5' is not a whole"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["--points", "-5"], "argument --points: must be at least 1"),
    (["--checkpoint-every", "0"], "argument --checkpoint-every: must be at least 1"),
    (["--max-grad-norm", "nan"], "argument --max-grad-norm: must be a finite number, got nan"),
    (["--max-grad-norm", "0"], "argument --max-grad-norm: must be > 0"),
    (["--lr", "-0.1"], "argument --lr: must be > 0"),
    (["--momentum", "-1"], "argument --momentum: must be >= 0"),
    (["--throttle", "inf"], "argument --throttle: must be a finite number"),
    (["--resume"], "--resume needs --checkpoint-dir"),
])
def test_bad_values_are_usage_errors(argv, says, tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(train_cli_module, "fit", never)
    status, out, err = train_cli([*argv, "--out", str(tmp_path)], capsys)
    assert status == 2 and says in err and "usage: fromscratch train" in err, err
    assert out == ""
