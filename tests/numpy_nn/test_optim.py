"""SGD and Adam against torch.optim, step for step, on the same network and data."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fromscratch import numpy_nn as nn
from tests._compare import assert_close

from ._torch_twin import randomize

D = torch.float64
STEPS = 6


def _twins():
    ours = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    theirs = randomize(torch.nn.Sequential(torch.nn.Linear(4, 8, dtype=D), torch.nn.Tanh(),
                                           torch.nn.Linear(8, 3, dtype=D)))
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _run(make_ours, make_theirs, steps: int = STEPS, what: str = ""):
    ours, theirs = _twins()
    opt, topt = make_ours(ours), make_theirs(theirs.parameters())
    rng = np.random.default_rng(0)
    loss_fn = nn.CrossEntropyLoss()
    for step in range(steps):
        x, t = rng.standard_normal((10, 4)), rng.integers(0, 3, 10)
        loss_fn.forward(ours.forward(x), t)
        ours.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
        topt.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(t)).backward()
        topt.step()
        for name, p in theirs.named_parameters():
            assert_close(ours.params[name], p, f"{what}: {name} after step {step + 1}",
                         1e-12, 1e-12)
        assert all(g is None for g in ours.grads.values())


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9), dict(momentum=0.9, weight_decay=0.01),
                                dict(momentum=0.8, dampening=0.3),
                                dict(momentum=0.9, nesterov=True, weight_decay=1e-3)])
def test_sgd(kw):
    _run(lambda m: nn.SGD(m, lr=0.1, **kw), lambda p: torch.optim.SGD(p, lr=0.1, **kw),
         what=f"SGD({kw})")


@pytest.mark.parametrize("kw", [dict(), dict(betas=(0.8, 0.99), eps=1e-6),
                                dict(weight_decay=0.05)])
def test_adam(kw):
    _run(lambda m: nn.Adam(m, lr=0.01, **kw), lambda p: torch.optim.Adam(p, lr=0.01, **kw),
         what=f"Adam({kw})")


def test_cosine_schedule_matches_torch():
    ours, theirs = _twins()
    opt, topt = nn.SGD(ours, lr=0.3), torch.optim.SGD(theirs.parameters(), lr=0.3)
    sched = nn.CosineAnnealingLR(opt, T_max=10, eta_min=0.01)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=10, eta_min=0.01)
    for _ in range(10):
        topt.step()
        sched.step()
        tsched.step()
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)


def test_parameters_without_gradient_are_skipped():
    """As torch: a parameter whose grad is None does not move, even with weight decay."""
    model = nn.Sequential(nn.Linear(2, 2, rng=0), nn.Linear(2, 1, rng=1))
    opt = nn.Adam(model, lr=0.1, weight_decay=0.1)
    before = model.state_dict()
    model.layers[1].grads["weight"] = np.ones((1, 2))
    opt.step()
    after = model.state_dict()
    assert np.array_equal(after["0.weight"], before["0.weight"])
    assert not np.array_equal(after["1.weight"], before["1.weight"])


def test_bad_arguments():
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="learning rate"):
        nn.SGD(model, lr=-1)
    with pytest.raises(ValueError, match="nesterov"):
        nn.SGD(model, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        nn.Adam(model, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="no parameters"):
        nn.SGD(nn.ReLU(), lr=0.1)


BAD = [  # (optimizer, keyword arguments, the name the message gives)
    ("Adam", dict(eps=-1e-8), "eps"),
    ("Adam", dict(weight_decay=-0.1), "weight_decay"),
    ("Adam", dict(lr=math.nan), "lr"),
    ("Adam", dict(betas=(0.9, 1.0)), r"betas\[1\]"),
    ("Adam", dict(betas=(-0.1, 0.9)), r"betas\[0\]"),
    ("SGD", dict(momentum=-0.9), "momentum"),
    ("SGD", dict(weight_decay=-0.1), "weight_decay"),
]


@pytest.mark.parametrize("name,kw,arg", BAD, ids=[f"{n} {k}" for n, k, _ in BAD])
def test_arguments_torch_refuses_are_refused_by_name(name, kw, arg):
    """Each is a ValueError for torch.optim as well. Adam's eps < 0 used to be taken: where
    sqrt(v) = -eps the step divides by zero. A NaN lr slipped through `lr < 0`."""
    kw = {"lr": 0.1, **kw}
    with pytest.raises(ValueError):
        getattr(torch.optim, name)([torch.zeros(1, requires_grad=True)], **kw)
    with pytest.raises(ValueError, match=rf"{name}: {arg}"):
        getattr(nn, name)(nn.Linear(2, 1), **kw)


@pytest.mark.parametrize("kw,message", [
    (dict(lr="0.1"), r"lr \(the learning rate\) must be a real number, got str"),
    (dict(eps=True), r"eps must be a real number, got bool"),
    (dict(betas=0.9), r"betas must be a pair"),
], ids=["lr str", "eps bool", "betas float"])
def test_arguments_that_are_not_numbers(kw, message):
    with pytest.raises(TypeError, match=rf"Adam: {message}"):
        nn.Adam(nn.Linear(2, 1), **kw)


def test_sgd_nan_lr_is_refused_as_adams():
    """torch.optim.SGD takes lr=nan (it checks lr < 0), which makes every parameter NaN at
    the first step; torch.optim.Adam refuses it, and ours refuse it for both."""
    with pytest.raises(ValueError, match=r"SGD: lr \(the learning rate\) must be >= 0, got nan"):
        nn.SGD(nn.Linear(2, 1), lr=math.nan)
