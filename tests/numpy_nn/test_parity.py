"""Every module and loss of the NumPy engine against torch autograd, float64, to 1e-10:
the same weights in both, random upstream gradients, forward and every gradient."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fromscratch import numpy_nn as nn
from tests._compare import assert_close

from ._torch_twin import TOL, FixedUniforms, compare_module, randomize

D = torch.float64


def x_of(*shape: int, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * 1.5 + shift


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(13, 7), (3, 5, 7), (7,)])
def test_linear(bias, shape):
    compare_module(nn.Linear(7, 11, bias=bias), randomize(torch.nn.Linear(7, 11, bias, dtype=D)),
                   x_of(*shape))


@pytest.mark.parametrize("ours,theirs", [(nn.Sigmoid, torch.nn.Sigmoid), (nn.Tanh, torch.nn.Tanh),
                                         (nn.ReLU, torch.nn.ReLU)])
def test_activations(ours, theirs):
    x = x_of(6, 9) * 4
    x[0, :3] = 0.0                                     # relu's kink: gradient 0 there, as torch
    x[1, :2] = [-800.0, 800.0]                         # sigmoid's exp overflows; no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # NumPy's overflow RuntimeWarning
        compare_module(ours(), theirs(), x)


@pytest.mark.parametrize("shape,affine,bias", [(10, True, True), ((4, 5), True, True),
                                               (10, True, False), (10, False, False)])
def test_layer_norm(shape, affine, bias):
    lead = (3, 6)
    norm = (shape,) if isinstance(shape, int) else shape
    compare_module(nn.LayerNorm(shape, eps=1e-5, elementwise_affine=affine, bias=bias),
                   randomize(torch.nn.LayerNorm(shape, 1e-5, affine, bias, dtype=D)),
                   x_of(*lead, *norm, shift=3.0))


@pytest.mark.parametrize("eps", [None, 1e-6])
@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm(eps, affine):
    compare_module(nn.RMSNorm((3, 5), eps=eps, elementwise_affine=affine),
                   randomize(torch.nn.RMSNorm((3, 5), eps=eps, elementwise_affine=affine, dtype=D)),
                   x_of(4, 3, 5))


def _channels_last(m, t):
    """torch's BatchNorm1d wants (N, C, L); ours is channels-last (N, L, C)."""
    return m(t.transpose(1, 2)).transpose(1, 2) if t.dim() == 3 else m(t)


@pytest.mark.parametrize("shape", [(16, 6), (4, 5, 6)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_train(shape, momentum):
    """Three training passes: outputs, gradients (accumulated) and running statistics."""
    ours = nn.BatchNorm(6, momentum=momentum)
    theirs = randomize(torch.nn.BatchNorm1d(6, momentum=momentum, dtype=D))
    compare_module(ours, theirs, x_of(*shape, shift=2.0), torch_call=_channels_last, passes=3)
    assert int(ours.buffers["num_batches_tracked"]) == int(theirs.num_batches_tracked) == 3


def test_batch_norm_eval():
    theirs = randomize(torch.nn.BatchNorm1d(6, dtype=D))
    ours = nn.BatchNorm(6)
    with torch.no_grad():                              # non-trivial running statistics
        theirs.running_mean.copy_(torch.linspace(-1, 1, 6))
        theirs.running_var.copy_(torch.linspace(0.5, 2, 6))
    compare_module(ours.eval(), theirs.eval(), x_of(16, 6, shift=1.0), passes=2)


def test_batch_norm_eval_without_running_stats():
    """track_running_stats=False: eval normalises with the batch's statistics, as torch."""
    compare_module(nn.BatchNorm(6, track_running_stats=False).eval(),
                   randomize(torch.nn.BatchNorm1d(6, track_running_stats=False, dtype=D)).eval(),
                   x_of(16, 6))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_against_torch_mask(p):
    """torch's own dropout draws a mask; ours, fed the same mask, gives torch's output and
    torch's gradient."""
    x = x_of(40, 30)
    xt = torch.tensor(x, requires_grad=True)
    torch.manual_seed(0)
    yt = F.dropout(xt, p, training=True)
    kept = (yt != 0).detach().numpy()
    ours = nn.Dropout(p)
    ours.rng = FixedUniforms(np.where(kept, 1.0, 0.0))  # u >= p keeps
    y = ours.forward(x)
    assert_close(y, yt, "Dropout: forward", TOL, TOL)
    g = np.random.default_rng(1).standard_normal(y.shape)
    yt.backward(torch.tensor(g))
    assert_close(ours.backward(g), xt.grad, "Dropout: dL/dinput", TOL, TOL)


def _stack():
    ours = nn.Sequential(nn.Linear(5, 12), nn.LayerNorm(12), nn.ReLU(), nn.Linear(12, 9),
                         nn.Tanh(), nn.BatchNorm(9), nn.Linear(9, 8), nn.Sigmoid(),
                         nn.RMSNorm(8), nn.Dropout(0.3), nn.Linear(8, 3))
    theirs = torch.nn.Sequential(
        torch.nn.Linear(5, 12, dtype=D), torch.nn.LayerNorm(12, dtype=D), torch.nn.ReLU(),
        torch.nn.Linear(12, 9, dtype=D), torch.nn.Tanh(), torch.nn.BatchNorm1d(9, dtype=D),
        torch.nn.Linear(9, 8, dtype=D), torch.nn.Sigmoid(), torch.nn.RMSNorm(8, dtype=D),
        torch.nn.Dropout(0.3), torch.nn.Linear(8, 3, dtype=D))
    return ours, randomize(theirs)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_sequential(mode):
    """Every layer at once; torch.nn.Sequential's state_dict keys load as they are.
    Dropout has p=0 in train mode (its random masks are compared with torch's in
    test_dropout_against_torch_mask) and p=0.3 in eval mode, where both sides skip it."""
    ours, theirs = _stack()
    ours.layers[9].p = theirs[9].p = 0.0 if mode == "train" else 0.3
    getattr(ours, mode)()
    getattr(theirs, mode)()
    compare_module(ours, theirs, x_of(20, 5), passes=2)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(20, 1), (4, 3, 5)])
def test_mse_loss(reduction, shape):
    x, t = x_of(*shape), x_of(*shape, seed=5)
    xt = torch.tensor(x, requires_grad=True)
    lt = F.mse_loss(xt, torch.tensor(t), reduction=reduction)
    loss_fn = nn.MSELoss(reduction)
    loss = loss_fn.forward(x, t)
    assert_close(loss, lt, f"MSELoss({reduction}): loss", TOL, TOL)
    g = np.random.default_rng(2).standard_normal(np.shape(loss))
    lt.backward(torch.tensor(g))
    assert_close(loss_fn.backward(g), xt.grad, f"MSELoss({reduction}): dL/dinput", TOL, TOL)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("lead", [(17,), (3, 6)])
def test_cross_entropy(reduction, ignore, lead):
    """Channels-last logits (..., C); torch wants (N, C, d...), so we move the axis for it."""
    c = 7
    rng = np.random.default_rng(3)
    z = x_of(*lead, c) * 3 + 50.0                      # large logits: the max-shift matters
    t = rng.integers(0, c, lead)
    if ignore:
        t.reshape(-1)[::3] = -100
    zt = torch.tensor(z, requires_grad=True)
    zt_torch = zt if len(lead) == 1 else zt.movedim(-1, 1)
    lt = F.cross_entropy(zt_torch, torch.tensor(t), ignore_index=-100, reduction=reduction)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100, reduction=reduction)
    loss = loss_fn.forward(z, t)
    what = f"CrossEntropyLoss({reduction}, ignore={ignore}, lead={lead})"
    assert_close(loss, lt, f"{what}: loss", TOL, TOL)
    g = rng.standard_normal(np.shape(loss))
    lt.backward(torch.tensor(g))
    assert_close(loss_fn.backward(g), zt.grad, f"{what}: dL/dlogits", TOL, TOL)


def test_cross_entropy_custom_ignore_index():
    z, t = x_of(10, 4), np.array([0, 1, 2, 3, 7, 7, 1, 2, 3, 0])
    zt = torch.tensor(z, requires_grad=True)
    lt = F.cross_entropy(zt, torch.tensor(t), ignore_index=7)
    loss_fn = nn.CrossEntropyLoss(ignore_index=7)
    assert_close(loss_fn.forward(z, t), lt, "CE ignore_index=7: loss", TOL, TOL)
    lt.backward()
    assert_close(loss_fn.backward(), zt.grad, "CE ignore_index=7: dL/dlogits", TOL, TOL)
    assert np.all(loss_fn.backward()[4:6] == 0.0)
