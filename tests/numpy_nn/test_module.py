"""The Module contract: train/eval, gradient accumulation, state dicts shared with torch,
initialisations, dtypes, and clear errors for bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fromscratch import numpy_nn as nn
from tests._compare import assert_close


def test_dropout_train_and_eval():
    d = nn.Dropout(0.3, rng=0)
    x = np.ones((400, 500))
    y = d.forward(x)
    kept = np.mean(y != 0)
    # 200 000 Bernoulli(0.7) draws: standard deviation of the fraction ~1e-3
    assert abs(kept - 0.7) < 5e-3, f"keeps {kept:.2%} of units, expected 70%"
    assert np.allclose(y[y != 0], 1 / 0.7)             # inverted dropout: E[y] = x
    g = np.random.default_rng(1).standard_normal(x.shape)
    assert np.array_equal(d.backward(g) != 0, y != 0)  # the same mask backwards
    d.eval()
    assert d.forward(x) is x and d.backward(g) is g
    d.train()
    assert not np.array_equal(d.forward(x), y)         # a fresh mask each call


def test_dropout_p_edges():
    x = np.random.default_rng(0).standard_normal((5, 5))
    assert np.array_equal(nn.Dropout(0.0).forward(x), x)
    d = nn.Dropout(1.0, rng=0)
    assert np.all(d.forward(x) == 0) and np.all(d.backward(np.ones_like(x)) == 0)
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            nn.Dropout(p)


def test_batch_norm_modes():
    bn = nn.BatchNorm(3)
    x = np.random.default_rng(0).standard_normal((50, 3)) * 2 + 5
    y_train = bn.forward(x)
    assert_close(y_train.mean(axis=0), np.zeros(3), "train: batch mean", 0, 1e-12)
    assert_close(bn.buffers["running_mean"], 0.1 * x.mean(axis=0), "running_mean", 1e-12, 1e-12)
    assert_close(bn.buffers["running_var"], 0.9 + 0.1 * x.var(axis=0, ddof=1),
                 "running_var (unbiased)", 1e-12, 1e-12)
    model = nn.Sequential(nn.Linear(3, 3), bn).eval()  # eval reaches every layer
    assert not bn.training
    y_eval = bn.forward(x)
    expected = (x - bn.buffers["running_mean"]) / np.sqrt(bn.buffers["running_var"] + 1e-5)
    assert_close(y_eval, expected, "eval uses running statistics", 1e-12, 1e-12)
    model.train()
    assert bn.training and model.layers[0].training
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.forward(x[:1])
    bn.eval().forward(x[:1])                           # fine in eval


def test_gradients_accumulate_until_zero_grad():
    model = nn.Sequential(nn.Linear(3, 4, rng=0), nn.Tanh(), nn.Linear(4, 2, rng=1))
    x = np.random.default_rng(0).standard_normal((5, 3))
    g = np.random.default_rng(1).standard_normal((5, 2))
    model.forward(x)
    model.backward(g)
    once = {k: v.copy() for k, v in model.grads.items()}
    model.forward(x)
    model.backward(g)
    for k, v in model.grads.items():
        assert_close(v, 2 * once[k], f"accumulated {k}", 1e-14, 1e-14)
    model.zero_grad()
    assert all(v is None for v in model.grads.values())


def test_state_dict_round_trip_with_torch():
    ours = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.BatchNorm(6), nn.RMSNorm(6),
                         nn.Linear(6, 2, bias=False))
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6),
                                 torch.nn.BatchNorm1d(6), torch.nn.RMSNorm(6),
                                 torch.nn.Linear(6, 2, bias=False)).double()
    ours.forward(np.random.default_rng(0).standard_normal((8, 4)))   # move running stats
    state = ours.state_dict()
    assert list(state) == list(theirs.state_dict())
    theirs.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    back = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.BatchNorm(6), nn.RMSNorm(6),
                         nn.Linear(6, 2, bias=False))
    back.load_state_dict(theirs.state_dict())
    for k, v in back.state_dict().items():
        assert np.array_equal(v, state[k]), k
    with pytest.raises(KeyError, match="missing keys"):
        back.load_state_dict({"0.weight": state["0.weight"]})
    with pytest.raises(ValueError, match="shape"):
        back.load_state_dict({**state, "0.weight": np.zeros((2, 2))})


def test_params_are_keyed_like_torch():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert list(model.params) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert model.layers[0].params["weight"].shape == (3, 2)        # (out, in)
    assert model.num_parameters() == 3 * 2 + 3 + 3 + 1


def test_inits():
    big = 400
    torch_default = nn.Linear(big, 300, init="torch", rng=0)
    bound = 1 / np.sqrt(big)
    w, b = torch_default.params["weight"], torch_default.params["bias"]
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert np.abs(b).max() <= bound
    xavier = nn.Linear(big, 300, init="xavier", rng=0)
    limit = np.sqrt(6 / (big + 300))
    assert np.abs(xavier.params["weight"]).max() <= limit
    assert np.all(xavier.params["bias"] == 0)
    he = nn.Linear(big, 300, init="he", rng=0)
    assert he.params["weight"].std() == pytest.approx(np.sqrt(2 / big), rel=0.02)
    # the notebook's stream: np.random.seed(s); np.random.uniform(-l, l, (out, in))
    np.random.seed(7)
    expected = np.random.uniform(-np.sqrt(6 / 26), np.sqrt(6 / 26), (25, 1))
    got = nn.Linear(1, 25, init="xavier", rng=np.random.RandomState(7)).params["weight"]
    assert np.array_equal(got, expected)
    with pytest.raises(ValueError, match="init must be one of"):
        nn.Linear(2, 2, init="lecun")


def test_manual_seed_makes_models_reproducible():
    nn.manual_seed(3)
    a = nn.Linear(3, 3).params["weight"].copy()
    nn.manual_seed(3)
    assert np.array_equal(nn.Linear(3, 3).params["weight"], a)


def test_float32_model_matches_float64_reference():
    model = nn.Sequential(nn.Linear(8, 16, rng=0), nn.LayerNorm(16), nn.ReLU(),
                          nn.Linear(16, 4, rng=1))
    ref = model.copy()
    model.to(np.float32)
    assert all(p.dtype == np.float32 for p in model.params.values())
    x = np.random.default_rng(0).standard_normal((32, 8))
    g = np.random.default_rng(1).standard_normal((32, 4))
    y32 = model.forward(x.astype(np.float32))
    dx32 = model.backward(g.astype(np.float32))
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    y64, dx64 = ref.forward(x), ref.backward(g)
    assert_close(y32, y64, "float32 forward", 1.3e-6, 1e-5)
    assert_close(dx32, dx64, "float32 dx", 1.3e-6, 1e-5)
    for k in ref.grads:
        assert_close(model.grads[k], ref.grads[k], f"float32 d{k}", 1.3e-6, 1e-5 * 6)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="in_features=3"):
        nn.Linear(3, 2).forward(np.ones((4, 5)))
    with pytest.raises(TypeError, match="dtype int64"):
        nn.Linear(3, 2).forward(np.ones((4, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="normalized_shape"):
        nn.LayerNorm(4).forward(np.ones((2, 5)))
    with pytest.raises(ValueError, match="expected num_features=4"):
        nn.BatchNorm(4).forward(np.ones((3, 5)))
    ce = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="out of bounds"):
        ce.forward(np.zeros((3, 4)), np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="out of bounds"):
        ce.forward(np.zeros((3, 4)), np.array([0, -1, 1]))       # -1 would wrap around
    with pytest.raises(TypeError, match="integer class indices"):
        ce.forward(np.zeros((3, 4)), np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="need targets of shape"):
        ce.forward(np.zeros((3, 4)), np.array([0, 1]))
    with pytest.raises(ValueError, match="differ"):
        nn.MSELoss().forward(np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(ValueError, match="reduction"):
        nn.MSELoss("avg")
    with pytest.raises(RuntimeError, match="before forward"):
        nn.MSELoss().backward()


def test_cross_entropy_all_ignored_is_nan_as_torch():
    z = np.zeros((2, 3))
    t = np.array([-100, -100])
    loss = nn.CrossEntropyLoss().forward(z, t)
    expected = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(t))
    assert np.isnan(loss) and torch.isnan(expected)


def test_repr():
    text = repr(nn.Sequential(nn.Linear(1, 25, init="xavier"), nn.Sigmoid(), nn.Linear(25, 1)))
    assert "(0): Linear(in_features=1, out_features=25, bias=True, init='xavier')" in text
    assert "(1): Sigmoid()" in text


def test_input_grad_off_skips_dx_only():
    """model.input_grad = False: backward returns None (no dL/dinput matmul), parameter
    gradients unchanged."""
    model = nn.Sequential(nn.Linear(3, 4, rng=0), nn.Tanh(), nn.Linear(4, 2, rng=1))
    x = np.random.default_rng(0).standard_normal((5, 3))
    g = np.random.default_rng(1).standard_normal((5, 2))
    model.forward(x)
    assert model.backward(g) is not None
    full = {k: v.copy() for k, v in model.grads.items()}
    model.zero_grad()
    model.input_grad = False
    assert not model.layers[0].input_grad and model.layers[2].input_grad
    model.forward(x)
    assert model.backward(g) is None
    for k, v in model.grads.items():
        assert np.array_equal(v, full[k]), k
    assert nn.gradcheck(model, x).ok(1e-6)             # gradcheck turns it back on, on a copy


def test_batch_norm_empty_batch_in_training_leaves_running_statistics_as_torch():
    """An empty batch has no statistics (0/0): torch.nn.BatchNorm1d returns an empty output,
    leaves running_mean / running_var as they were and counts the batch. Ours used to write
    NaN into them, for good: every later eval output was NaN."""
    ours, theirs = nn.BatchNorm(3), torch.nn.BatchNorm1d(3, dtype=torch.float64)
    rng = np.random.default_rng(0)
    for x in (rng.standard_normal((6, 3)), np.zeros((0, 3)), rng.standard_normal((4, 3))):
        with np.errstate(invalid="ignore", divide="ignore"):   # the empty batch's 0/0
            y = ours.forward(x)
            dx = ours.backward(np.ones_like(x))
        assert y.shape == dx.shape == x.shape
        theirs(torch.tensor(x))
        for name, value in theirs.named_buffers():
            assert_close(ours.buffers[name], value, f"{name} after a batch of {len(x)}",
                         1e-12, 1e-12)
    assert ours.buffers["num_batches_tracked"] == 3
    assert np.isfinite(ours.eval().forward(rng.standard_normal((2, 3)))).all()


MODULES = {"Linear": lambda: nn.Linear(3, 3), "ReLU": nn.ReLU, "Sigmoid": nn.Sigmoid,
           "Tanh": nn.Tanh, "Dropout": lambda: nn.Dropout(0.5), "LayerNorm": lambda: nn.LayerNorm(3),
           "RMSNorm": lambda: nn.RMSNorm(3), "BatchNorm": lambda: nn.BatchNorm(3),
           "Sequential": lambda: nn.Sequential(nn.Linear(3, 3), nn.Tanh())}


@pytest.mark.parametrize("make", MODULES.values(), ids=MODULES.keys())
def test_backward_before_forward_says_to_call_forward(make):
    """It used to be "AttributeError: ... has no attribute '_cache'". The error names the
    module (the last layer of a Sequential, where backward starts) and what to do."""
    m = make()
    with pytest.raises(RuntimeError, match=r"\w+: backward\(\) called before forward\(\); call "
                                           r"forward\(x\) first"):
        m.backward(np.ones((2, 3)))
    assert not hasattr(m, "_cache")               # hasattr still answers, as before
    m.forward(np.ones((2, 3)))
    m.backward(np.ones((2, 3)))


@pytest.mark.parametrize("make,error,message", [
    (lambda: nn.LayerNorm("768"), TypeError,
     r"LayerNorm: normalized_shape must be an int or a sequence of ints, got str '768'"),
    (lambda: nn.RMSNorm(768.0), TypeError, r"RMSNorm: normalized_shape .* got float 768\.0"),
    (lambda: nn.BatchNorm(0), ValueError, r"BatchNorm: num_features must be >= 1, got 0"),
    (lambda: nn.BatchNorm(True), TypeError, r"BatchNorm: num_features must be an int"),
    (lambda: nn.BatchNorm(3, momentum=1.5), ValueError, r"BatchNorm: momentum .* 1\.5"),
    (lambda: nn.BatchNorm(3, eps=-1e-5), ValueError, r"BatchNorm: eps must be >= 0"),
    (lambda: nn.LayerNorm(3, eps=math.nan), ValueError, r"LayerNorm: eps must be >= 0, got nan"),
    (lambda: nn.RMSNorm(3, eps=-1.0), ValueError, r"RMSNorm: eps must be >= 0"),
    (lambda: nn.Linear(3.0, 2), TypeError, r"Linear: in_features must be an int, got float"),
    (lambda: nn.Linear(3, -1), ValueError, r"Linear: out_features must be >= 0, got -1"),
    (lambda: nn.Dropout(True), TypeError, r"Dropout: p \(the dropout probability\) must be"),
], ids=["LN str", "RMS float", "BN 0", "BN bool", "BN momentum", "BN eps", "LN eps nan",
        "RMS eps", "Linear float", "Linear negative", "Dropout bool"])
def test_bad_constructor_arguments(make, error, message):
    """The same checks as fromscratch.nn's (shared in fromscratch._checks)."""
    with pytest.raises(error, match=message):
        make()


def test_empty_linear_is_allowed_as_torch():
    assert nn.Linear(0, 2).forward(np.ones((4, 0))).shape == (4, 2)
