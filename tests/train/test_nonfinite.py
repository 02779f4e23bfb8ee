"""A non-finite loss or gradient is never stepped on: fit stops with an error naming the
step and the last good checkpoint stays, or (on_nonfinite="skip") drops that window."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fromscratch.train import fit, load
from fromscratch.train.checkpoint import CHECKPOINT
from fromscratch.train.fit import NonFiniteError

from .helpers import TINY, train_cli


def data(poison: int | None = None, n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` micro-batches; micro-batch ``poison`` has a NaN input (a bad record)."""
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, generator=g, dtype=torch.float64),
                torch.randn(4, 1, generator=g, dtype=torch.float64)) for _ in range(n)]
    if poison is not None:
        batches[poison][0][1, 2] = float("nan")
    return batches


def run(batches, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    history = fit(model, batches, nn.functional.mse_loss, opt, scheduler=sched,
                  progress=False, **kwargs)
    return model, history, sched


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteError) as e:
        run(data(poison=4), accumulation_steps=2, checkpoint_dir=tmp_path, checkpoint_every=1)
    message = str(e.value)
    assert message.startswith("step 3 (epoch 1, micro-batches 5..6): the loss is nan")
    assert f"{tmp_path / CHECKPOINT} still holds step 2, the last good one" in message
    state = load(tmp_path / CHECKPOINT)
    assert len(state["history"]["loss"]) == 2 and (state["epoch"], state["micro_batch"]) == (0, 4)
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_inf_gradient_with_a_finite_loss_stops(tmp_path):
    """An overflowing backward (the loss itself finite) is caught on the gradient norm, with
    or without clipping (max_grad_norm would otherwise scale the gradient to NaN)."""
    for clip in (None, 1.0):
        torch.manual_seed(0)
        model = nn.Linear(3, 1).double()
        calls = {"n": 0}

        def overflow(grad):
            calls["n"] += 1
            return grad * math.inf if calls["n"] == 2 else grad
        model.weight.register_hook(overflow)
        with pytest.raises(NonFiniteError, match=r"^step 2 .*the gradient norm is (inf|nan)"):
            fit(model, data(), nn.functional.mse_loss, torch.optim.SGD(model.parameters(), lr=0.1),
                max_grad_norm=clip, progress=False)
        assert torch.isfinite(model.weight).all(), "the bad gradient was stepped on"


def test_skip_drops_the_window_as_if_it_were_not_there():
    """With on_nonfinite="skip" the poisoned window takes no step, moves no momentum and no
    scheduler: the parameters equal a run without that window, bit for bit."""
    skipped, h, sched = run(data(poison=3), on_nonfinite="skip")
    assert h.skipped == [4] and h.steps == 6 and math.isnan(h.loss[3])
    assert sched.last_epoch == 5
    without = data()
    del without[3]
    reference, h_ref, _ = run(without)
    assert all(torch.equal(a, b) for a, b in zip(skipped.parameters(), reference.parameters()))
    assert [x for i, x in enumerate(h.loss) if i != 3] == h_ref.loss


def test_cli_stops_on_divergence_and_can_skip(tmp_path, capsys):
    """A rate of 1e30 overflows float32 at step 2: `fromscratch train` stops with exit 1,
    naming the step, and the checkpoint holds step 1; --skip-nonfinite runs to the end."""
    args = [*TINY, "--lr", "1e30", "--schedule", "constant"]
    status, _, err = train_cli([*args, "--out", str(tmp_path / "a"), "--checkpoint-dir",
                                str(tmp_path / "ck")], capsys)
    assert status == 1 and "error: step 2 (epoch 1, micro-batch 2): the loss is inf" in err
    assert len(load(tmp_path / "ck" / CHECKPOINT)["history"]["loss"]) == 1
    assert not (tmp_path / "a" / "model.pt").exists()
    status, out, err = train_cli([*args, "--out", str(tmp_path / "b"), "--skip-nonfinite"],
                                 capsys)
    assert status == 0 and out.startswith("8 steps"), err


@pytest.mark.parametrize("kwargs, name", [
    ({"max_grad_norm": math.nan}, "max_grad_norm"), ({"max_grad_norm": math.inf}, "max_grad_norm"),
    ({"max_grad_norm": 0.0}, "max_grad_norm"), ({"max_grad_norm": True}, "max_grad_norm"),
    ({"accumulation_steps": 1.5}, "accumulation_steps"),
    ({"accumulation_steps": 2.0}, "accumulation_steps"),
    ({"accumulation_steps": True}, "accumulation_steps"),
    ({"accumulation_steps": 0}, "accumulation_steps"),
    ({"epochs": 0}, "epochs"), ({"epochs": 1.5}, "epochs"),
    ({"checkpoint_every": 0}, "checkpoint_every"), ({"on_nonfinite": "ignore"}, "on_nonfinite"),
])
def test_bad_arguments_are_errors_naming_them(kwargs, name):
    model = nn.Linear(3, 1).double()
    with pytest.raises(ValueError, match=f"^{name} must be"):
        fit(model, data(), nn.functional.mse_loss, torch.optim.SGD(model.parameters(), lr=0.1),
            progress=False, **kwargs)
