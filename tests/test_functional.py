"""fromscratch.functional against torch.nn.functional: signatures, float64 numbers and
gradients, batch_norm's in-place running-statistics update (channels-last: compared with
torch's on x.reshape(-1, C)), dropout's identity cases, working dtypes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

from fromscratch import functional as F
from tests._compare import TOL, WORKING_DTYPES, assert_close, randn, tol, upstream
from tests.nn.test_drop_in import assert_signature_extends

F64 = TOL[torch.float64]


def grads(fn, *tensors, dy):
    """(out, grads of every tensor argument that is not None) with a random upstream."""
    leaves = [t.clone().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves)
    out.backward(dy)
    return out.detach(), [t.grad for t in leaves if t is not None]


@pytest.mark.parametrize("name", ["layer_norm", "rms_norm", "batch_norm", "dropout"])
def test_signature_is_torchs(name):
    """torch's parameters first, same order, kinds and defaults; ours may add ``backend``."""
    assert_signature_extends(getattr(F, name), getattr(TF, name))


@pytest.mark.parametrize("normalized_shape", [7, (7,), (3, 7), torch.Size([3, 7])], ids=str)
@pytest.mark.parametrize("affine", ["wb", "w", "b", "-"])
def test_layer_norm_float64(normalized_shape, affine):
    shape = (4, 3, 7)
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    x, dy = randn(*shape, shift=1.0), upstream(shape, torch.float64)
    w = randn(*ns, seed=2) if "w" in affine else None
    b = randn(*ns, seed=3) if "b" in affine else None
    mine = grads(lambda x, w, b: F.layer_norm(x, normalized_shape, w, b, 1e-4), x, w, b, dy=dy)
    ref = grads(lambda x, w, b: TF.layer_norm(x, ns, w, b, 1e-4), x, w, b, dy=dy)
    assert_close(mine[0], ref[0], "y", *F64)
    for i, (a, r) in enumerate(zip(mine[1], ref[1])):
        assert_close(a, r, f"grad {i}", *F64)


@pytest.mark.parametrize("eps", [None, 1e-3])
@pytest.mark.parametrize("weight", [True, False])
def test_rms_norm_float64(eps, weight):
    x, dy = randn(5, 2, 9) * 1e-4, upstream((5, 2, 9), torch.float64)  # eps shows at this scale
    w = randn(2, 9, seed=2) if weight else None
    mine = grads(lambda x, w: F.rms_norm(x, (2, 9), w, eps), x, w, dy=dy)
    ref = grads(lambda x, w: TF.rms_norm(x, (2, 9), w, eps), x, w, dy=dy)
    assert_close(mine[0], ref[0], "y", *F64)
    for i, (a, r) in enumerate(zip(mine[1], ref[1])):
        assert_close(a, r, f"grad {i}", *F64)


@pytest.mark.parametrize("momentum", [0.1, 0.0, 1.0, 0.5])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(10, 4), (3, 5, 4)], ids=str)
def test_batch_norm_float64_channels_last(shape, training, momentum):
    x, dy = randn(*shape, scale=2.0, shift=1.0), upstream(shape, torch.float64)
    w, b = randn(4, seed=2), randn(4, seed=3)
    rm_mine, rv_mine = randn(4, seed=4), randn(4, seed=5).abs() + 0.5
    rm_ref, rv_ref = rm_mine.clone(), rv_mine.clone()
    mine = grads(lambda x, w, b: F.batch_norm(x, rm_mine, rv_mine, w, b, training, momentum, 1e-3),
                 x, w, b, dy=dy)
    ref = grads(lambda x, w, b: TF.batch_norm(x.reshape(-1, 4), rm_ref, rv_ref, w, b, training,
                                              momentum, 1e-3).reshape(x.shape), x, w, b, dy=dy)
    assert_close(mine[0], ref[0], "y", *F64)
    for i, (a, r) in enumerate(zip(mine[1], ref[1])):
        assert_close(a, r, f"grad {i}", *F64)
    assert_close(rm_mine, rm_ref, "running_mean (updated in place)", *F64)
    assert_close(rv_mine, rv_ref, "running_var (updated in place)", *F64)


def test_batch_norm_training_without_running_statistics():
    x, dy = randn(6, 3, 5), upstream((6, 3, 5), torch.float64)
    mine = grads(lambda x: F.batch_norm(x, None, None, training=True), x, dy=dy)
    ref = grads(lambda x: TF.batch_norm(x.reshape(-1, 5), None, None, training=True)
                .reshape(x.shape), x, dy=dy)
    assert_close(mine[0], ref[0], "y", *F64)
    assert_close(mine[1][0], ref[1][0], "dx", *F64)


def test_dropout_identity_cases_return_the_input_as_torch():
    x = randn(4, 4)
    assert F.dropout(x, 0.5, training=False) is x and TF.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x and TF.dropout(x, 0.0) is x


def test_dropout_training():
    torch.manual_seed(0)
    x = randn(100, 50) + 3.0
    y = F.dropout(x, 0.2)
    keep = y != 0
    assert 0.75 < keep.double().mean() < 0.85
    assert_close(y[keep], x[keep] / 0.8, "kept values", 1e-15, 0)
    z = x.clone()
    assert F.dropout(z, 0.2, inplace=True) is z and (z == 0).any()


@pytest.mark.parametrize("dtype", WORKING_DTYPES, ids=str)
def test_working_dtypes_return_input_dtype_and_are_accurate(dtype):
    x = randn(8, 3, 24, dtype=dtype, shift=0.5)
    w, b = randn(24, seed=2, dtype=dtype), randn(24, seed=3, dtype=dtype)
    x64, w64, b64 = x.double(), w.double(), b.double()
    eps32 = torch.finfo(torch.float32).eps
    cases = {
        "layer_norm": (F.layer_norm(x, 24, w, b), TF.layer_norm(x64, (24,), w64, b64)),
        "rms_norm": (F.rms_norm(x, 24, w), TF.rms_norm(x64, (24,), w64, eps32)),
        "batch_norm": (F.batch_norm(x, None, None, w, b, True),
                       TF.batch_norm(x64.reshape(-1, 24), None, None, w64, b64, True)
                       .reshape(x.shape)),
    }
    for name, (mine, ref) in cases.items():
        assert mine.dtype == dtype, f"{name} returned {mine.dtype}"
        assert_close(mine, ref, f"{name} {dtype}", *tol(dtype))
    assert F.dropout(x, 0.5).dtype == dtype


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_two_d_inputs_add_no_reshape_nodes(backend):
    """A 2-D input with 1-D parameters goes to the op as it is: the output's grad_fn is the
    op's own node and its inputs' are the leaves' AccumulateGrad, no ViewBackward between
    (each such node is work for autograd; on CUDA on its worker thread). A 3-D input still
    flattens, and its gradient still arrives."""
    from fromscratch.kernels._common import interpreting
    if backend == "triton" and not interpreting():
        pytest.skip("backend='triton' on CPU tensors needs TRITON_INTERPRET=1")
    x = torch.randn(4, 6, requires_grad=True)
    w, b = torch.randn(6, requires_grad=True), torch.randn(6, requires_grad=True)
    outs = {"layer_norm": F.layer_norm(x, 6, w, b, backend=backend),
            "rms_norm": F.rms_norm(x, 6, w, backend=backend),
            "batch_norm": F.batch_norm(x, None, None, w, b, True, backend=backend)}
    for name, y in outs.items():
        node = y.grad_fn
        assert "View" not in node.name(), f"{name}: {node.name()}"
        leaves = [f for f, _ in node.next_functions if f is not None]
        assert leaves and all(f.name().endswith("AccumulateGrad") for f in leaves), \
            f"{name}: {[f.name() for f in leaves]}"
    x3 = torch.randn(2, 2, 6, requires_grad=True)
    y3 = F.layer_norm(x3, 6, w, b, backend=backend)
    assert y3.shape == x3.shape
    (g,) = torch.autograd.grad(y3.sum() + (y3 * y3).sum(), x3)
    assert g.shape == x3.shape and torch.isfinite(g).all()
