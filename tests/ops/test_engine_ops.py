"""The NumPy engine's ops (linear, sigmoid, tanh, relu, mse_loss, cross_entropy) run on
torch tensors too (array API): their hand-written backward equals torch autograd, and
the NumPy and torch runs of the same op agree."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fromscratch.ops import cross_entropy, linear, mse_loss, relu, sigmoid, tanh
from tests._compare import assert_close, randn

TOL = 1e-10


def _upstream(shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _both(op_forward, op_backward, ref, *args, what=""):
    """Run the op on torch tensors and on their NumPy copies; compare with autograd."""
    req = [a.clone().requires_grad_(a.is_floating_point()) for a in args]
    out_ref = ref(*req)
    g = _upstream(tuple(out_ref.shape))                # random, never all ones
    out_ref.backward(g)
    out_t, cache_t = op_forward(*args)                 # ours on torch tensors
    grads_t = op_backward(g, cache_t)
    out_n, cache_n = op_forward(*[a.numpy() for a in args])   # ours on NumPy arrays
    grads_n = op_backward(g.numpy() if g.dim() else float(g), cache_n)
    assert isinstance(out_t, torch.Tensor) and isinstance(out_n, (np.ndarray, np.floating))
    assert_close(out_t, out_ref, f"{what}: forward (torch)", TOL, TOL)
    assert_close(out_n, out_ref, f"{what}: forward (NumPy)", TOL, TOL)
    grads_t = grads_t if isinstance(grads_t, tuple) else (grads_t,)
    grads_n = grads_n if isinstance(grads_n, tuple) else (grads_n,)
    floats = [r for r in req if r.is_floating_point()]
    for i, (mine_t, mine_n, r) in enumerate(zip(grads_t, grads_n, floats)):
        assert_close(mine_t, r.grad, f"{what}: gradient {i} (torch)", TOL, TOL)
        assert_close(mine_n, r.grad, f"{what}: gradient {i} (NumPy)", TOL, TOL)
    return req


@pytest.mark.parametrize("shape", [(9, 5), (2, 3, 5)])
def test_linear(shape):
    _both(linear.forward, linear.backward, F.linear, randn(*shape), randn(4, 5, seed=1),
          randn(4, seed=2), what="linear")


@pytest.mark.parametrize("op,ref", [(sigmoid, torch.sigmoid), (tanh, torch.tanh),
                                    (relu, torch.relu)])
def test_activation(op, ref):
    x = randn(7, 6, scale=4.0)
    x[0, :2] = torch.tensor([-800.0, 800.0], dtype=torch.float64)
    _both(op.forward, op.backward, ref, x, what=op.__name__)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse(reduction):
    """Only dL/dinput is returned; torch's dL/dtarget is its negative."""
    inp, target = _both(lambda a, b: mse_loss.forward(a, b, reduction), mse_loss.backward,
          lambda a, b: F.mse_loss(a, b, reduction=reduction), randn(6, 3), randn(6, 3, seed=1),
          what=f"mse_loss({reduction})")
    assert_close(-inp.grad, target.grad, "mse_loss: dL/dtarget = -dL/dinput", TOL, TOL)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(reduction):
    target = torch.tensor([0, 3, -100, 2, 2, 1])
    _both(lambda z, t: cross_entropy.forward(z, t, -100, reduction), cross_entropy.backward,
          lambda z, t: F.cross_entropy(z, t, ignore_index=-100, reduction=reduction),
          randn(6, 4, scale=3.0, shift=20.0), target, what=f"cross_entropy({reduction})")


def test_sigmoid_extremes_without_warnings():
    x = np.array([-1000.0, -745.0, -40.0, 0.0, 40.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y, _ = sigmoid.forward(x)
    expected = torch.sigmoid(torch.tensor(x)).numpy()
    assert_close(y, expected, "sigmoid at extremes", 1e-15, 0)
    y32, _ = sigmoid.forward(x.astype(np.float32))
    assert y32.dtype == np.float32 and y32[0] == 0.0 and y32[-1] == 1.0


def _hand_backward(op, *extra, **kw):
    """x -> op's hand-written backward at x (a fixed upstream gradient): torch's gradcheck
    of this function is the gradgradcheck of the op."""
    def f(x, *params):
        out, cache = op.forward(x, *params, *extra, **kw)
        g = _upstream(tuple(out.shape))
        grads = op.backward(g if g.dim() else g.item(), cache)
        return tuple(t for t in (grads if isinstance(grads, tuple) else (grads,))
                     if t is not None)
    return f


@pytest.mark.parametrize("name", ["linear", "sigmoid", "tanh", "mse_loss", "cross_entropy"])
def test_second_derivatives(name):
    """The backward is written without in-place updates on saved tensors, so torch can
    differentiate it again (double backward); its derivatives match finite differences."""
    x = randn(4, 3).requires_grad_()
    if name == "linear":
        args = (x, randn(2, 3, seed=1).requires_grad_(), randn(2, seed=2).requires_grad_())
        f = _hand_backward(linear)
    elif name == "mse_loss":
        args, f = (x,), _hand_backward(mse_loss, randn(4, 3, seed=1))
    elif name == "cross_entropy":
        args, f = (x,), _hand_backward(cross_entropy, torch.tensor([0, 2, -100, 1]))
    else:
        args, f = (x,), _hand_backward({"sigmoid": sigmoid, "tanh": tanh}[name])
    assert torch.autograd.gradcheck(f, args)
