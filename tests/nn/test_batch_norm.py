"""fromscratch.nn.BatchNorm (channels-last) against torch.nn.BatchNorm1d on x.reshape(-1, C):
output, dx, dweight, dbias, running_mean, running_var and num_batches_tracked over several
training steps for each momentum, then eval; float64 tight, fp32 / fp16 / bf16 against a
float64 reference built from the rounded inputs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fromscratch.nn import BatchNorm
from fromscratch.autograd.batch_norm import BatchNormFn
from tests._compare import (TOL, WORKING_DTYPES, assert_backward_is, assert_close, randn,
                            skip_unless_torch_batch_norm_takes, tol, upstream)
from tests.nn._run import (assert_float32_compute_rounded_once, float64_twin, forward_backward,
                          randomize_affine, try_forward_backward)

SHAPES = [(16, 5), (4, 3, 7), (2, 3, 2, 6)]


class ChannelsLastBatchNorm1d(nn.BatchNorm1d):
    """torch's BatchNorm1d applied to x.reshape(-1, C): the reference for ours."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def pair(c, dtype, seed=0, **kw):
    theirs = randomize_affine(ChannelsLastBatchNorm1d(c, dtype=dtype, **kw), seed)
    ours = BatchNorm(c, dtype=dtype, **kw)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def batch(shape, step, dtype):
    """A different batch per step, with per-channel means and scales that move."""
    c = shape[-1]
    x = randn(*shape, seed=20 + step) * (1 + torch.arange(c) / c) + (step - 1) * torch.arange(c)
    return x.to(dtype), upstream(shape, dtype, seed=40 + step)


def compare(ours, theirs, x, dy, rtol, atol, what):
    """One forward/backward of both modules (same dtype): outputs, grads and buffers."""
    y, dx, g = forward_backward(ours, x, dy)
    y_t, dx_t, g_t = forward_backward(theirs, x, dy)
    rows = x.numel() // ours.num_features           # values per channel, in either layout
    assert_close(y, y_t, f"{what} y", rtol, atol)
    assert_close(dx, dx_t, f"{what} dx", rtol, atol)
    assert g.keys() == g_t.keys()
    for name in g:
        assert_close(g[name], g_t[name], f"{what} d{name}", rtol, atol * (1 + rows ** 0.5))
    compare_buffers(ours, theirs, rtol, atol, what)


def compare_buffers(ours, theirs, rtol, atol, what):
    for name in ("running_mean", "running_var"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype, f"{name}: {a.dtype} vs {b.dtype}"
            assert_close(a, b, f"{what} {name}", rtol, atol)
    a, b = ours.num_batches_tracked, theirs.num_batches_tracked
    assert (a is None) == (b is None)
    if a is not None:
        assert a.dtype == torch.long and int(a) == int(b), f"{what} num_batches_tracked {a} vs {b}"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("momentum", [0.1, None, 0.0, 1.0])
def test_float64_training_steps_then_eval_then_train(momentum, shape):
    ours, theirs = pair(shape[-1], torch.float64, momentum=momentum)
    rtol, atol = TOL[torch.float64]
    for step in range(3):
        compare(ours, theirs, *batch(shape, step, torch.float64), rtol, atol,
                f"momentum={momentum} step {step}")
    ours.eval(), theirs.eval()
    compare(ours, theirs, *batch(shape, 3, torch.float64), rtol, atol, "eval")
    ours.train(), theirs.train()
    compare(ours, theirs, *batch(shape, 4, torch.float64), rtol, atol, "train again")


VARIANTS = {"affine=False": {"affine": False}, "bias=False": {"bias": False},
            "track_running_stats=False": {"track_running_stats": False},
            "no affine, no stats": {"affine": False, "track_running_stats": False},
            "eps=1e-2": {"eps": 1e-2}}


@pytest.mark.parametrize("kw", VARIANTS.values(), ids=VARIANTS.keys())
def test_float64_variants_train_and_eval(kw):
    """Without running statistics, eval normalises with the batch's own, as torch."""
    skip_unless_torch_batch_norm_takes(kw)
    ours, theirs = pair(7, torch.float64, **kw)
    rtol, atol = TOL[torch.float64]
    for step in range(2):
        compare(ours, theirs, *batch((5, 4, 7), step, torch.float64), rtol, atol, f"step {step}")
    ours.eval(), theirs.eval()
    compare(ours, theirs, *batch((5, 4, 7), 2, torch.float64), rtol, atol, "eval")


def compare_to_float64(ours, theirs, reference, x, dy, what):
    """One step of ours in x's working dtype against ``reference``, the float64 twin of
    ``theirs`` (torch's own answer only quoted): outputs, grads and running buffers, with
    docs/conventions.md's tolerance; dtypes kept (the input's, the parameters')."""
    dtype, pdtype = x.dtype, ours.weight.dtype
    y, dx, g = forward_backward(ours, x, dy)
    y_r, dx_r, g_r = forward_backward(reference, x.double(), dy.double())
    t = try_forward_backward(theirs, x, dy)
    assert y.dtype == dx.dtype == dtype and all(v.dtype == pdtype for v in g.values())
    assert_close(y, y_r, f"{what} y", *tol(dtype), theirs=t and t[0])
    assert_close(dx, dx_r, f"{what} dx", *tol(dtype), theirs=t and t[1])
    rows = x.numel() // ours.num_features
    for name in g:
        assert_close(g[name], g_r[name], f"{what} d{name}", *tol(dtype, reduced_over=rows),
                     theirs=t and t[2][name])
    for name in ("running_mean", "running_var"):
        assert getattr(ours, name).dtype == pdtype
        assert_close(getattr(ours, name), getattr(reference, name), f"{what} {name}",
                     *tol(dtype))
    assert int(ours.num_batches_tracked) == int(reference.num_batches_tracked)


@pytest.mark.parametrize("param_dtype", ["same", "float32"])
@pytest.mark.parametrize("dtype", WORKING_DTYPES, ids=str)
def test_working_dtypes_against_float64_reference(dtype, param_dtype):
    pdtype = dtype if param_dtype == "same" else torch.float32
    ours, theirs = pair(11, pdtype)
    reference = float64_twin(theirs)
    for step in range(3):
        if step == 2:
            ours.eval(), theirs.eval(), reference.eval()
        compare_to_float64(ours, theirs, reference, *batch((6, 5, 11), step, dtype),
                           f"{dtype} params {pdtype} step {step}")


def test_momentum_semantics_explicitly():
    """momentum=None: cumulative average of the batch statistics; 1: the last batch's; 0:
    unchanged. running_var stores the unbiased variance, the output uses the biased one."""
    shape = (9, 4)
    batches = [batch(shape, s, torch.float64)[0] for s in range(3)]
    means = torch.stack([b.mean(0) for b in batches])
    unbiased = torch.stack([b.var(0, unbiased=True) for b in batches])
    for momentum, mean, var in ((None, means.mean(0), unbiased.mean(0)),
                                (1.0, means[-1], unbiased[-1]),
                                (0.0, torch.zeros(4), torch.ones(4))):
        m = BatchNorm(4, momentum=momentum, dtype=torch.float64)
        for b in batches:
            y = m(b)
        assert_close(m.running_mean, mean, f"momentum={momentum} running_mean", 1e-12, 1e-12)
        assert_close(m.running_var, var, f"momentum={momentum} running_var", 1e-12, 1e-12)
        assert int(m.num_batches_tracked) == 3
        biased = batches[-1].var(0, unbiased=False)
        assert_close(y, (batches[-1] - batches[-1].mean(0)) / torch.sqrt(biased + 1e-5),
                     "output uses the biased variance", 1e-12, 1e-12)


def test_channels_last_is_torchs_channels_first_transposed():
    """Ours on (N, L, C) equals torch's BatchNorm1d on the (N, C, L) layout it expects."""
    ours, theirs = pair(6, torch.float64)
    x = randn(4, 5, 6)
    assert_close(ours(x), nn.BatchNorm1d.forward(theirs, x.permute(0, 2, 1)).permute(0, 2, 1),
                 "(N, L, C) vs torch (N, C, L)", *TOL[torch.float64])
    assert_close(ours.running_var, theirs.running_var, "running_var", *TOL[torch.float64])


def test_buffers_stay_out_of_autograd_and_are_updated_in_place():
    m = BatchNorm(5)
    mean_ptr, var_ptr = m.running_mean.data_ptr(), m.running_var.data_ptr()
    x = torch.randn(8, 5, requires_grad=True)
    w = torch.randn(5, requires_grad=True)
    (m(x * w) ** 2).sum().backward()
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        b = getattr(m, name)
        assert b.grad_fn is None and not b.requires_grad, f"{name} is part of the graph"
    assert m.running_mean.data_ptr() == mean_ptr and m.running_var.data_ptr() == var_ptr
    assert not torch.equal(m.running_mean, torch.zeros(5))
    m.eval()
    y = m(x)
    assert m.running_mean.grad_fn is None and y.grad_fn is not None


def test_legacy_state_dict_without_num_batches_tracked():
    """A version-1 state dict (before num_batches_tracked) loads, as into torch's."""
    ours, theirs = pair(3, torch.float32)
    legacy = ChannelsLastBatchNorm1d(3).state_dict()
    del legacy["num_batches_tracked"]
    legacy._metadata = {"": {"version": 1}}
    ours.load_state_dict(legacy)
    theirs.load_state_dict(legacy)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 0


def test_empty_batch_in_training_as_torch():
    """(0, C) in training: empty output, running statistics untouched, batch counted."""
    ours, theirs = pair(4, torch.float64)
    x = torch.zeros(0, 4, dtype=torch.float64)
    y, dx, g = forward_backward(ours, x, x)
    y_t, _, g_t = forward_backward(theirs, x, x)
    assert y.shape == dx.shape == (0, 4)
    compare_buffers(ours, theirs, 0, 0, "empty batch")
    for name in g:
        assert torch.equal(g[name], g_t[name]), name


def test_backward_is_ours_not_autograd_over_the_forward():
    m = BatchNorm(6)
    assert_backward_is(m(torch.randn(4, 3, 6, requires_grad=True)), BatchNormFn)
    m.eval()
    assert_backward_is(m(torch.randn(4, 3, 6, requires_grad=True)), BatchNormFn)


@pytest.mark.parametrize("kw", [{}, {"affine": False}])
def test_in_place_op_on_the_output_keeps_the_backward_right(kw):
    ours, theirs = pair(5, torch.float64, **kw)
    x, dy = batch((6, 5), 0, torch.float64)
    grads = []
    for m in (ours, theirs):
        xl = x.clone().requires_grad_()
        nn.ReLU(inplace=True)(m(xl * 1.0)).backward(dy)
        grads.append(xl.grad)
    assert_close(grads[0], grads[1], "dx through an in-place ReLU", *TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_is_float32_compute_rounded_once(dtype):
    x = randn(*(6, 5, 24), dtype=dtype, seed=8, shift=0.5)
    assert_float32_compute_rounded_once(lambda: randomize_affine(BatchNorm(24), 1), x,
                                        upstream((6, 5, 24), dtype))
