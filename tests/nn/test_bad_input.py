"""The bad-input rows of docs/conventions.md, one by one: each error has the right type and
a message that names the problem (the argument, the shapes, the dtype, the value). Where
torch raises RuntimeError for the same mistake, ours is also a RuntimeError (ShapeError /
DtypeError / DeviceError subclass both)."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import fromscratch.functional as F
from fromscratch.nn import BatchNorm, Dropout, LayerNorm, RMSNorm

# --- LayerNorm / RMSNorm: normalized_shape=(), trailing dims, weight/bias shapes ------------


@pytest.mark.parametrize("make", [lambda: LayerNorm(()), lambda: RMSNorm(()),
                                  lambda: F.layer_norm(torch.ones(3), ()),
                                  lambda: F.rms_norm(torch.ones(3), [])],
                         ids=["LayerNorm", "RMSNorm", "layer_norm", "rms_norm"])
def test_empty_normalized_shape(make):
    with pytest.raises(ValueError, match=r"normalized_shape .*\(\)") as err:
        make()
    assert isinstance(err.value, RuntimeError)             # torch raises RuntimeError here


@pytest.mark.parametrize("call", [
    lambda x: LayerNorm(4)(x), lambda x: RMSNorm(4)(x),
    lambda x: F.layer_norm(x, (4,)), lambda x: F.rms_norm(x, 4)],
    ids=["LayerNorm", "RMSNorm", "layer_norm", "rms_norm"])
def test_trailing_dims_do_not_match(call):
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4,\)") as err:
        call(torch.ones(2, 3))
    assert isinstance(err.value, RuntimeError)


def test_input_of_lower_rank_than_normalized_shape():
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        LayerNorm((2, 3))(torch.ones(3))


@pytest.mark.parametrize("call,name", [
    (lambda x: F.layer_norm(x, (4,), torch.ones(3)), "weight"),
    (lambda x: F.layer_norm(x, (4,), None, torch.ones(2, 2)), "bias"),
    (lambda x: F.rms_norm(x, (4,), torch.ones(5)), "weight"),
    (lambda x: F.batch_norm(x, None, None, torch.ones(3), None, True), "weight"),
    (lambda x: F.batch_norm(x, torch.zeros(5), torch.ones(4), training=True), "running_mean"),
], ids=["ln weight", "ln bias", "rms weight", "bn weight", "bn running_mean"])
def test_parameter_of_the_wrong_shape(call, name):
    with pytest.raises(ValueError, match=rf"{name} has shape \([\d, ]+\), expected \(4,\)") as e:
        call(torch.ones(6, 4))
    assert isinstance(e.value, RuntimeError)


def test_module_weight_replaced_by_a_wrong_shape():
    m = LayerNorm(4)
    m.weight = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"weight has shape \(3,\), expected \(4,\)"):
        m(torch.ones(2, 4))


# --- all: integer tensors --------------------------------------------------------------------

MODULES = {"LayerNorm": lambda: LayerNorm(4), "RMSNorm": lambda: RMSNorm(4),
           "BatchNorm": lambda: BatchNorm(4), "Dropout": lambda: Dropout(0.5)}


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool,
                                   torch.complex64], ids=str)
@pytest.mark.parametrize("make", MODULES.values(), ids=MODULES.keys())
def test_non_floating_tensors(make, dtype):
    x = torch.ones(3, 4, dtype=dtype)
    with pytest.raises(TypeError, match=rf"floating-point.*{dtype}") as err:
        make()(x)
    assert isinstance(err.value, RuntimeError)


@pytest.mark.parametrize("call", [lambda x: F.layer_norm(x, 4), lambda x: F.rms_norm(x, 4),
                                  lambda x: F.batch_norm(x, None, None, training=True),
                                  lambda x: F.dropout(x, 0.5)],
                         ids=["layer_norm", "rms_norm", "batch_norm", "dropout"])
def test_non_floating_tensors_functional(call):
    with pytest.raises(TypeError, match=r"torch\.int64"):
        call(torch.ones(3, 4, dtype=torch.long))


# --- LayerNorm (and RMSNorm): zero-size batch -------------------------------------------------


@pytest.mark.parametrize("make", [lambda: LayerNorm(5), lambda: RMSNorm(5)], ids=["LN", "RMS"])
def test_zero_size_batch_gives_empty_output_and_backward_works(make):
    m = make()
    x = torch.zeros(0, 5, requires_grad=True)
    y = m(x)
    assert y.shape == (0, 5)
    y.sum().backward()
    assert x.grad.shape == (0, 5)
    assert torch.equal(m.weight.grad, torch.zeros(5))


# --- BatchNorm: one value per channel, channels, rank, eps, eval without statistics ----------


@pytest.mark.parametrize("shape", [(1, 4), (1, 1, 4), (1, 1, 1, 4)], ids=str)
def test_batch_norm_one_value_per_channel_in_training(shape):
    for call in (BatchNorm(4), lambda x: F.batch_norm(x, None, None, training=True)):
        with pytest.raises(ValueError, match=r"more than 1 value per channel.*\(1, (1, )*4\)"):
            call(torch.randn(shape))
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # torch agrees
        nn.BatchNorm1d(4)(torch.randn(1, 4))
    assert BatchNorm(4).eval()(torch.randn(shape)).shape == shape           # eval is fine


def test_batch_norm_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\(5, 3\).*3 channels.*num_features=4") as err:
        BatchNorm(4)(torch.randn(5, 3))
    assert isinstance(err.value, RuntimeError)


@pytest.mark.parametrize("shape", [(4,), ()], ids=str)
def test_batch_norm_wrong_rank(shape):
    for call in (BatchNorm(4), lambda x: F.batch_norm(x, None, None, training=True)):
        with pytest.raises(ValueError, match=r"\(N, C\).*got " + re.escape(str(tuple(shape)))):
            call(torch.randn(shape))


@pytest.mark.parametrize("eps", [0.0, -1e-5])
def test_batch_norm_eps_not_positive_in_training(eps):
    with pytest.raises(ValueError, match=rf"eps must be >=? 0.*{eps}"):   # -1e-5: at __init__
        BatchNorm(4, eps=eps)(torch.randn(5, 4))
    with pytest.raises(ValueError, match="eps"):
        F.batch_norm(torch.randn(5, 4), None, None, training=True, eps=eps)
    with pytest.raises(ValueError, match="eps"):                           # torch agrees
        nn.BatchNorm1d(4, eps=eps)(torch.randn(5, 4))


def test_batch_norm_eval_without_running_statistics_uses_the_batch_as_torch():
    ours = BatchNorm(4, track_running_stats=False).eval()
    theirs = nn.BatchNorm1d(4, track_running_stats=False).eval()
    x = torch.randn(6, 4, dtype=torch.float64) * 3 + 2
    ours, theirs = ours.double(), theirs.double()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-7, atol=1e-7)
    assert ours(x).abs().max() < 3          # normalised by the batch, not by mean 0 / var 1


def test_functional_batch_norm_eval_needs_running_statistics():
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        F.batch_norm(torch.randn(5, 4), None, None, training=False)


# --- Dropout: p outside [0, 1] -----------------------------------------------------------------


@pytest.mark.parametrize("p", [-0.1, 1.5, math.nan])
def test_dropout_p_outside_unit_interval(p):
    with pytest.raises(ValueError, match=rf"between 0 and 1.*{p}"):
        Dropout(p)
    with pytest.raises(ValueError, match=rf"between 0 and 1.*{p}"):
        F.dropout(torch.ones(3), p)
    m = Dropout(0.5)
    m.p = p                                   # set after construction: caught at the call
    with pytest.raises(ValueError, match=rf"between 0 and 1.*{p}"):
        m(torch.ones(3))


# --- all: NaN / Inf in a row -------------------------------------------------------------------


def _poisoned(value):
    x = torch.randn(5, 8, dtype=torch.float64)
    bad = x.clone()
    bad[2, 3] = value
    return x, bad


def _run(m, x):
    xl = x.clone().requires_grad_()
    y = m(xl)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype))
    return y.detach(), xl.grad


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("make", [lambda: LayerNorm(8), lambda: RMSNorm(8),
                                  lambda: BatchNorm(8).eval()], ids=["LN", "RMS", "BN eval"])
def test_nan_or_inf_in_a_row_poisons_that_row_only(make, value):
    """That row's output is not finite, every other row (output and dx) is bit-for-bit the
    clean run's, and nothing crashes. RMSNorm with +-Inf gives NaN at the Inf and 0 elsewhere
    in the row (1/sqrt(inf) = 0), exactly as torch.nn.RMSNorm."""
    m = make().double()
    x, bad = _poisoned(value)
    y_clean, dx_clean = _run(m, x)
    y, dx = _run(m, bad)
    others = [0, 1, 3, 4]
    assert torch.equal(y[others], y_clean[others]), "a clean row changed"
    assert torch.equal(dx[others], dx_clean[others]), "a clean row's gradient changed"
    if isinstance(m, BatchNorm):             # eval: elementwise, only (2, 3) is hit
        assert not torch.isfinite(y[2, 3])
        assert torch.equal(y[2, [0, 1, 2, 4, 5, 6, 7]], y_clean[2, [0, 1, 2, 4, 5, 6, 7]])
    elif isinstance(m, RMSNorm) and math.isinf(value):
        assert torch.isnan(y[2, 3]) and (y[2, [0, 1, 2, 4, 5, 6, 7]] == 0).all(), f"{y[2]}"
    else:
        assert torch.isnan(y[2]).all(), f"row 2: {y[2]}"
    twin = {LayerNorm: nn.LayerNorm, RMSNorm: nn.RMSNorm}.get(type(m))
    if twin is not None:                     # the same NaN pattern as torch
        assert torch.equal(torch.isnan(y), torch.isnan(twin(8).double()(bad).detach()))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_batch_norm_training_mixes_rows_by_definition(value):
    """In training BatchNorm's statistics are the batch's: a NaN / Inf in row i, channel j
    makes channel j's mean and variance NaN, hence channel j of *every* row and its running
    statistics non-finite. That is the definition, and torch.nn.BatchNorm1d does the same; the
    other channels are untouched."""
    ours, theirs = BatchNorm(8).double(), nn.BatchNorm1d(8).double()
    x, bad = _poisoned(value)
    y_clean, _ = _run(BatchNorm(8).double(), x)
    y, dx = _run(ours, bad)
    y_t = theirs(bad).detach()
    assert torch.equal(torch.isnan(y), torch.isnan(y_t))
    assert torch.isnan(y[:, 3]).all()
    others = [c for c in range(8) if c != 3]
    assert torch.equal(y[:, others], y_clean[:, others])
    for name in ("running_mean", "running_var"):
        mine, torchs = getattr(ours, name), getattr(theirs, name)
        assert not torch.isfinite(mine[3]) and torch.isfinite(mine[others]).all(), name
        assert torch.equal(torch.isnan(mine), torch.isnan(torchs)), f"{name} vs torch's"
        assert torch.equal(torch.isinf(mine), torch.isinf(torchs)), f"{name} vs torch's"


@pytest.mark.parametrize("p", [0.5, 1.0])
def test_dropout_nan_stays_where_it_was(p):
    """x * keep * scale: a NaN stays NaN (kept or dropped, 0 * NaN = NaN), even with p = 1,
    as torch's dropout; every other element is finite."""
    x = torch.ones(200)
    x[7] = math.nan
    for f in (F.dropout, nn.functional.dropout):
        y = f(x, p)
        assert torch.isnan(y[7]) and torch.isfinite(y[torch.arange(200) != 7]).all()


# --- sizes: normalized_shape, num_features ---------------------------------------------------

NOT_INTS = ["768", 768.0, True, (7.0,), ("7",), None]


@pytest.mark.parametrize("shape", NOT_INTS, ids=repr)
@pytest.mark.parametrize("make", [LayerNorm, RMSNorm, lambda s: F.layer_norm(torch.ones(2, 768), s),
                                  lambda s: F.rms_norm(torch.ones(2, 768), s)],
                         ids=["LayerNorm", "RMSNorm", "layer_norm", "rms_norm"])
def test_normalized_shape_that_is_not_ints(make, shape):
    """'768' is a sequence of characters: it used to become (7, 6, 8). torch refuses these
    with a TypeError that names torch.empty's argument; ours names normalized_shape."""
    with pytest.raises(TypeError, match=r"normalized_shape must be an int or a sequence of ints, "
                                        rf"got {type(shape).__name__} "):
        make(shape)


@pytest.mark.parametrize("shape", [np.int64(4), torch.Size([4]), [4], torch.tensor(4)], ids=repr)
def test_normalized_shape_integers_of_other_types_are_taken(shape):
    assert LayerNorm(shape).normalized_shape == (4,)


@pytest.mark.parametrize("n,error,message", [
    (0, ValueError, "must be >= 1, got 0"), (-3, ValueError, "must be >= 1, got -3"),
    (4.0, TypeError, "must be an int, got float 4.0"),
    (True, TypeError, "must be an int, got bool True"),
    ("4", TypeError, "must be an int, got str '4'")], ids=repr)
def test_batch_norm_num_features_not_a_positive_int(n, error, message):
    """torch builds BatchNorm1d(0), which fails at its first call with an IndexError."""
    with pytest.raises(error, match=rf"BatchNorm: num_features {message}"):
        BatchNorm(n)


# --- weights, biases, running buffers: kind, dtype, device ------------------------------------


@pytest.mark.parametrize("call,name", [
    (lambda x: F.layer_norm(x, 4, np.ones(4, np.float32)), "weight"),
    (lambda x: F.layer_norm(x, 4, None, [0.0] * 4), "bias"),
    (lambda x: F.rms_norm(x, 4, np.ones(4)), "weight"),
    (lambda x: F.batch_norm(x, np.zeros(4), np.ones(4), training=True), "running_mean"),
    (lambda x: F.batch_norm(x, None, None, np.ones(4), training=True), "weight"),
], ids=["ln weight", "ln bias", "rms weight", "bn running_mean", "bn weight"])
def test_parameter_that_is_not_a_tensor(call, name):
    """A NumPy weight used to fail with "'numpy.ndarray' object has no attribute 'dim'"
    (layer_norm) or be taken silently (batch_norm). torch raises TypeError too."""
    with pytest.raises(TypeError, match=rf"{name} must be a torch.Tensor like the input, got "):
        call(torch.ones(3, 4))


@pytest.mark.parametrize("call", [lambda x: F.layer_norm(x, 4), lambda x: F.rms_norm(x, 4),
                                  lambda x: F.batch_norm(x, None, None, training=True),
                                  lambda x: F.dropout(x, 0.5)],
                         ids=["layer_norm", "rms_norm", "batch_norm", "dropout"])
def test_input_that_is_not_a_tensor(call):
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got ndarray"):
        call(np.ones((3, 4)))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["running_mean", "running_var"])
def test_batch_norm_integer_running_buffers(name, training):
    """They used to be updated in place and truncated: a running_var of 0.9 became 0.
    torch refuses them too (a RuntimeError, which ours also is)."""
    buffers = {"running_mean": torch.zeros(4), "running_var": torch.ones(4)}
    buffers[name] = buffers[name].long()
    before = buffers[name].clone()
    with pytest.raises(TypeError, match=rf"{name} must be a floating-point tensor, got dtype "
                                        r"torch\.int64") as err:
        F.batch_norm(torch.randn(5, 4), buffers["running_mean"], buffers["running_var"],
                     training=training)
    assert isinstance(err.value, RuntimeError)
    assert torch.equal(buffers[name], before)


@pytest.mark.parametrize("call,name", [
    (lambda x, p: F.layer_norm(x, 4, p), "weight"),
    (lambda x, p: F.layer_norm(x, 4, None, p), "bias"),
    (lambda x, p: F.batch_norm(x, None, None, p, training=True), "weight"),
    (lambda x, p: F.batch_norm(x, None, None, None, p, training=True), "bias"),
], ids=["ln weight", "ln bias", "bn weight", "bn bias"])
def test_integer_weight_or_bias(call, name):
    """torch refuses them (RuntimeError: mixed dtype); ours names the argument and dtype."""
    with pytest.raises(TypeError, match=rf"{name} must be a floating-point tensor.*int64") as e:
        call(torch.ones(3, 4), torch.ones(4, dtype=torch.long))
    assert isinstance(e.value, RuntimeError)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")   # torch's
def test_rms_norm_integer_weight_is_taken_as_torch():
    """torch.nn.functional.rms_norm takes an integer weight (it can have no gradient)."""
    x, w = torch.randn(3, 4, dtype=torch.float64), torch.tensor([1, 2, 3, 4])
    torch.testing.assert_close(F.rms_norm(x, 4, w), nn.functional.rms_norm(x, (4,), w))


@pytest.mark.parametrize("call,name", [
    (lambda x, p: F.layer_norm(x, 4, p), "weight"),
    (lambda x, p: F.rms_norm(x, 4, p), "weight"),
    (lambda x, p: F.batch_norm(x, p, torch.ones(4), training=True), "running_mean"),
], ids=["ln weight", "rms weight", "bn running_mean"])
def test_parameter_on_another_device(call, name):
    """On a CPU-only machine the meta device stands for a GPU: the error names the argument
    and both devices, and is a RuntimeError as torch's."""
    with pytest.raises(ValueError, match=rf"{name} is on device meta, the input on cpu") as e:
        call(torch.ones(3, 4), torch.ones(4, device="meta"))
    assert isinstance(e.value, RuntimeError)


# --- eps, momentum -------------------------------------------------------------------------

EPS_USERS = {
    "LayerNorm": lambda eps: LayerNorm(4, eps=eps),
    "RMSNorm": lambda eps: RMSNorm(4, eps=eps),
    "BatchNorm": lambda eps: BatchNorm(4, eps=eps),
    "layer_norm": lambda eps: F.layer_norm(torch.ones(3, 4), 4, eps=eps),
    "rms_norm": lambda eps: F.rms_norm(torch.ones(3, 4), 4, eps=eps),
    "batch_norm eval": lambda eps: F.batch_norm(torch.ones(3, 4), torch.zeros(4), torch.ones(4),
                                                eps=eps),
}


@pytest.mark.parametrize("eps,message", [(-1e-5, "eps must be >= 0, got -1e-05"),
                                         (math.nan, "eps must be >= 0, got nan"),
                                         (math.inf, "eps must be finite, got inf")], ids=repr)
@pytest.mark.parametrize("make", EPS_USERS.values(), ids=EPS_USERS.keys())
def test_eps_negative_or_not_finite(make, eps, message):
    """torch's LayerNorm and RMSNorm take these and compute 1 / sqrt(var + eps): NaN where
    var < -eps, a quietly wrong scale elsewhere, 0 everywhere for inf. (torch's BatchNorm
    refuses a negative eps too.) eps = 0 stays allowed, as in torch."""
    with pytest.raises(ValueError, match=message):
        make(eps)


@pytest.mark.parametrize("make", EPS_USERS.values(), ids=EPS_USERS.keys())
def test_eps_that_is_not_a_number(make):
    """float() used to turn eps='1e-5' into 1e-05 (layer_norm) silently; torch raises
    TypeError."""
    with pytest.raises(TypeError, match=r"eps must be a real number, got str '1e-5'"):
        make("1e-5")


def test_eps_zero_is_taken_outside_batch_norm_training():
    x = torch.randn(3, 4)
    LayerNorm(4, eps=0.0)(x)
    RMSNorm(4, eps=0)(x)
    BatchNorm(4, eps=0.0).eval()(x)


@pytest.mark.parametrize("momentum", [1.5, -0.1, math.nan], ids=repr)
def test_batch_norm_momentum_outside_unit_interval(momentum):
    """momentum is the new batch's weight in the running average; torch takes 1.5 or -0.1,
    which push the running statistics away from every batch. Refused at __init__, at the
    call when set afterwards (before num_batches_tracked moves), and in F.batch_norm."""
    message = rf"momentum has to be between 0 and 1, but got {momentum}"
    with pytest.raises(ValueError, match=rf"BatchNorm: {message}"):
        BatchNorm(4, momentum=momentum)
    m = BatchNorm(4)
    m.momentum = momentum
    with pytest.raises(ValueError, match=message):
        m(torch.randn(5, 4))
    assert m.num_batches_tracked == 0 and torch.equal(m.running_mean, torch.zeros(4))
    with pytest.raises(ValueError, match=rf"batch_norm: {message}"):
        F.batch_norm(torch.randn(5, 4), torch.zeros(4), torch.ones(4), training=True,
                     momentum=momentum)


@pytest.mark.parametrize("momentum", [None, 0, 0.0, 1, 1.0])
def test_batch_norm_momentum_edges_are_taken(momentum):
    BatchNorm(4, momentum=momentum)(torch.randn(5, 4))


# --- Dropout: p that is not a number ----------------------------------------------------------


@pytest.mark.parametrize("p", ["0.5", True, None, torch.tensor([0.5, 0.5]),
                               torch.tensor(0.5, requires_grad=True)], ids=repr)
def test_dropout_p_that_is_not_a_number(p):
    """F.dropout(x, True) meant training=True and used to drop everything (p = 1); a tensor
    that requires grad would be cut from the graph (torch refuses it too)."""
    with pytest.raises(TypeError, match=r"p \(the dropout probability\) must be a real number"):
        F.dropout(torch.ones(3), p)
    with pytest.raises(TypeError, match=r"Dropout: p \(the dropout probability\)"):
        Dropout(p)


@pytest.mark.parametrize("p", [torch.tensor(0.25), np.float32(0.25), 0, 1], ids=repr)
def test_dropout_p_numbers_of_other_types_are_taken(p):
    """As torch: a 0-d tensor, a NumPy number, an int."""
    assert Dropout(p).p == float(p)
    F.dropout(torch.ones(3), p)
