"""fromscratch.nn.BatchNorm1d/2d/3d (channels-first, torch's layouts) against torch.nn's:
outputs, gradients, running statistics and num_batches_tracked over training steps, eval,
the variants, working dtypes, gradcheck, state dicts, torch.compile; and the layout errors
of both the channels-first classes and the channels-last BatchNorm."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import fromscratch.nn as fnn
from fromscratch.autograd.batch_norm import BatchNormFn
from tests._compare import PLUMBING, TOL, WORKING_DTYPES, assert_close, graph_names, randn, upstream
from tests.nn._run import float64_twin, forward_backward, randomize_affine
from tests.nn.test_batch_norm import compare, compare_buffers, compare_to_float64

C = 5
LAYOUTS = {  # ours, torch's, the shapes each takes
    "1d (N, C)": (fnn.BatchNorm1d, nn.BatchNorm1d, (16, C)),
    "1d (N, C, L)": (fnn.BatchNorm1d, nn.BatchNorm1d, (4, C, 7)),
    "2d": (fnn.BatchNorm2d, nn.BatchNorm2d, (3, C, 4, 2)),
    "3d": (fnn.BatchNorm3d, nn.BatchNorm3d, (2, C, 3, 2, 2)),
}


def pair(layout, dtype, seed=0, **kw):
    ours_cls, torch_cls, shape = LAYOUTS[layout]
    theirs = randomize_affine(torch_cls(C, dtype=dtype, **kw), seed)
    ours = ours_cls(C, dtype=dtype, **kw)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs, shape


def batch(shape, step, dtype):
    """A different batch per step; channel c (dim 1) has its own mean and scale, both moving."""
    c = torch.arange(shape[1], dtype=torch.float64).reshape(1, -1, *[1] * (len(shape) - 2))
    x = randn(*shape, seed=20 + step) * (1 + c / shape[1]) + (step - 1) * c
    return x.to(dtype), upstream(shape, dtype, seed=40 + step)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_float64_training_steps_then_eval_then_train(layout, momentum):
    ours, theirs, shape = pair(layout, torch.float64, momentum=momentum)
    rtol, atol = TOL[torch.float64]
    for step in range(3):
        compare(ours, theirs, *batch(shape, step, torch.float64), rtol, atol,
                f"{layout} momentum={momentum} step {step}")
    ours.eval(), theirs.eval()
    compare(ours, theirs, *batch(shape, 3, torch.float64), rtol, atol, f"{layout} eval")
    ours.train(), theirs.train()
    compare(ours, theirs, *batch(shape, 4, torch.float64), rtol, atol, f"{layout} train again")
    assert int(ours.num_batches_tracked) == 4


VARIANTS = {"affine=False": {"affine": False},
            "track_running_stats=False": {"track_running_stats": False},
            "no affine, no stats": {"affine": False, "track_running_stats": False}}


@pytest.mark.parametrize("kw", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize("layout", ["1d (N, C, L)", "2d", "3d"])
def test_float64_variants_train_and_eval(layout, kw):
    """Without running statistics, eval normalises with the batch's own, as torch."""
    ours, theirs, shape = pair(layout, torch.float64, **kw)
    rtol, atol = TOL[torch.float64]
    for step in range(2):
        compare(ours, theirs, *batch(shape, step, torch.float64), rtol, atol, f"step {step}")
    ours.eval(), theirs.eval()
    compare(ours, theirs, *batch(shape, 2, torch.float64), rtol, atol, "eval")


@pytest.mark.parametrize("dtype", WORKING_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["1d (N, C, L)", "2d"])
def test_working_dtypes_against_float64_reference(layout, dtype):
    ours, theirs, shape = pair(layout, torch.float32)
    reference = float64_twin(theirs)
    for step in range(3):
        if step == 2:
            ours.eval(), theirs.eval(), reference.eval()
        compare_to_float64(ours, theirs, reference, *batch(shape, step, dtype),
                           f"{layout} {dtype} step {step}")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["1d (N, C, L)", "2d", "3d"])
def test_gradcheck_and_gradgradcheck(layout, training):
    ours_cls, _, shape = LAYOUTS[layout]
    m = randomize_affine(ours_cls(C, dtype=torch.float64), 1).train(training)
    if not training:
        with torch.no_grad():
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    x = batch(shape, 0, torch.float64)[0].requires_grad_()
    w, b = m.weight.detach().requires_grad_(), m.bias.detach().requires_grad_()

    def f(x, w, b):
        return torch.func.functional_call(m, {"weight": w, "bias": b}, (x,))
    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_backward_is_ours_around_the_moves():
    """The graph holds our Function and the channel moves, nothing autograd derived itself."""
    x = torch.randn(2, C, 3, 3, requires_grad=True)
    names = graph_names(fnn.BatchNorm2d(C)(x))
    assert f"{BatchNormFn.__name__}Backward" in names
    assert not names - PLUMBING - {f"{BatchNormFn.__name__}Backward", "PermuteBackward0"}, names


def test_momentum_none_is_the_cumulative_average():
    m = fnn.BatchNorm2d(C, momentum=None, dtype=torch.float64)
    batches = [batch((3, C, 2, 2), s, torch.float64)[0] for s in range(3)]
    for x in batches:
        m(x)
    dims = (0, 2, 3)
    mean = torch.stack([x.mean(dims) for x in batches]).mean(0)
    var = torch.stack([x.var(dims, unbiased=True) for x in batches]).mean(0)
    assert_close(m.running_mean, mean, "running_mean", 1e-12, 1e-12)
    assert_close(m.running_var, var, "running_var (unbiased)", 1e-12, 1e-12)
    assert int(m.num_batches_tracked) == 3


def test_memory_format_as_torch():
    """A contiguous input gives a contiguous output; a channels_last one keeps its strides."""
    ours, theirs, shape = pair("2d", torch.float64)
    x = batch(shape, 0, torch.float64)[0]
    for memory_format in (torch.contiguous_format, torch.channels_last):
        xm = x.contiguous(memory_format=memory_format)
        y, y_t = ours(xm), theirs(xm)
        assert y.stride() == y_t.stride(), memory_format
        assert_close(y, y_t, f"{memory_format} y", *TOL[torch.float64])


def test_empty_batch_in_training_as_torch():
    ours, theirs, _ = pair("2d", torch.float64)
    x = torch.zeros(0, C, 2, 2, dtype=torch.float64)
    y, dx, _ = forward_backward(ours, x, x)
    forward_backward(theirs, x, x)
    assert y.shape == dx.shape == x.shape
    compare_buffers(ours, theirs, 0, 0, "empty batch")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_trained_state_dict_loads_into_torch_and_back(layout):
    """Trained on ours, evaluated by torch's (and the reverse): the same outputs."""
    ours, theirs, shape = pair(layout, torch.float64)
    for step in range(2):
        ours(batch(shape, step, torch.float64)[0])
    theirs.load_state_dict(ours.state_dict())
    x = batch(shape, 5, torch.float64)[0]
    assert_close(ours.eval()(x), theirs.eval()(x), "torch's with our state", *TOL[torch.float64])
    theirs.train()(batch(shape, 6, torch.float64)[0])
    ours.load_state_dict(theirs.state_dict())
    assert_close(ours(x), theirs.eval()(x), "ours with torch's state", *TOL[torch.float64])


def test_compiled_without_a_graph_break_equals_eager():
    """fullgraph=True: Dynamo takes the channel moves and our Function in one graph."""
    torch._dynamo.reset()
    eager, compiled = (randomize_affine(fnn.BatchNorm2d(C, backend="torch"), 2) for _ in "ab")
    step = torch.compile(compiled, backend="aot_eager", fullgraph=True)
    for train in (True, True, False):
        eager.train(train), compiled.train(train)
        x, dy = batch((3, C, 2, 2), int(train), torch.float32)
        y, dx, g = forward_backward(eager, x, dy)
        y_c, dx_c, _ = forward_backward(step, x, dy)
        g_c = {n: p.grad for n, p in compiled.named_parameters()}
        for name, a, b in [("y", y_c, y), ("dx", dx_c, dx), *((n, g_c[n], g[n]) for n in g)]:
            assert_close(a, b, f"train={train} {name}", *TOL[torch.float32])
    compare_buffers(compiled, eager, *TOL[torch.float32], "compiled")
    torch._dynamo.reset()


# --- layout errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls,torch_cls,shape,expected", [
    (fnn.BatchNorm1d, nn.BatchNorm1d, (2, C, 3, 3), "2D or 3D"),
    (fnn.BatchNorm1d, nn.BatchNorm1d, (C,), "2D or 3D"),
    (fnn.BatchNorm2d, nn.BatchNorm2d, (2, C, 3), "4D"),
    (fnn.BatchNorm3d, nn.BatchNorm3d, (2, C, 3, 3), "5D")], ids=str)
def test_wrong_rank_in_torchs_words(cls, torch_cls, shape, expected):
    words = rf"expected {expected} input \(got {len(shape)}D input"
    with pytest.raises(ValueError, match=words):
        torch_cls(C)(torch.randn(shape))
    with pytest.raises(ValueError, match=words + re.escape(f" of shape {shape}")):
        cls(C)(torch.randn(shape))


def test_channels_first_nchw_into_channels_last_names_the_layout_and_the_fix():
    for shape, fix in (((2, C, 3, 4), "BatchNorm2d"), ((2, C, 3, 4, 6), "BatchNorm3d"),
                       ((2, C, 3), "BatchNorm1d")):
        with pytest.raises(ValueError, match=rf"channels-first .*use fromscratch\.nn\.{fix}, "
                                             r"or move the channels last: input\.movedim\(1, "
                                             r"-1\)") as err:
            fnn.BatchNorm(C)(torch.randn(shape))
        assert isinstance(err.value, RuntimeError) and str(shape) in str(err.value)


def test_channels_last_into_channels_first_names_the_layout_and_the_fix():
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 5\) has 3 channels in dimension 1, "
                                         r"expected num_features=5.*channels-last.*"
                                         r"fromscratch\.nn\.BatchNorm.*movedim\(-1, 1\)"):
        fnn.BatchNorm2d(C)(torch.randn(2, 3, 4, C))
    with pytest.raises(ValueError, match=r"has 3 channels in dimension 1, expected "
                                         r"num_features=5$"):
        fnn.BatchNorm2d(C)(torch.randn(2, 3, 4, 4))


def test_square_n_c_l_input_channels_last_normalises_the_last_dim_channels_first_dim_1():
    """(N, C, L) with L == C: the channels-last BatchNorm cannot tell it from (N, L, C) and
    normalises the last dim (its docstring says so); BatchNorm1d, the replacement for
    torch.nn.BatchNorm1d, normalises dim 1 as torch's."""
    x = batch((4, C, C), 0, torch.float64)[0]
    last = fnn.BatchNorm(C, dtype=torch.float64)(x)
    first = fnn.BatchNorm1d(C, dtype=torch.float64)(x)
    torch_first = nn.BatchNorm1d(C, dtype=torch.float64)(x)
    assert_close(first, torch_first, "BatchNorm1d on (N, C, C)", *TOL[torch.float64])
    torch_last = nn.BatchNorm1d(C, dtype=torch.float64)(x.movedim(-1, 1)).movedim(1, -1)
    assert_close(last, torch_last, "BatchNorm on (N, C, C): the last dim", *TOL[torch.float64])


def test_one_value_per_channel_in_training_names_the_shape():
    with pytest.raises(ValueError, match=r"more than 1 value per channel.*\(1, 5, 1, 1\)"):
        fnn.BatchNorm2d(C)(torch.randn(1, C, 1, 1))
    with pytest.raises(ValueError, match="more than 1 value per channel"):    # torch agrees
        nn.BatchNorm2d(C)(torch.randn(1, C, 1, 1))
    assert fnn.BatchNorm2d(C).eval()(torch.randn(1, C, 1, 1)).shape == (1, C, 1, 1)
