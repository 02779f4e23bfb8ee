"""Each module is a drop-in for its torch.nn twin: constructor signature, attributes,
parameters, buffers, state_dict (keys, values, loading both ways), extra_repr,
reset_parameters and .to(dtype) all as torch.nn's. BatchNorm's twin is BatchNorm1d
(ours is channels-last; the parameters and buffers are the same); BatchNorm1d/2d/3d's are
torch's namesakes."""
from __future__ import annotations

import inspect
import re

import pytest
import torch
from torch import nn

import fromscratch.nn as fnn

from tests._compare import TORCH_BATCH_NORM_TAKES_BIAS, skip_unless_torch_batch_norm_takes

CASES = [
    (fnn.LayerNorm, nn.LayerNorm, (8,), {}),
    (fnn.LayerNorm, nn.LayerNorm, ((3, 4),), {"eps": 1e-3}),
    (fnn.LayerNorm, nn.LayerNorm, (8,), {"elementwise_affine": False}),
    (fnn.LayerNorm, nn.LayerNorm, (8,), {"bias": False}),
    (fnn.LayerNorm, nn.LayerNorm, (8,), {"elementwise_affine": False, "bias": False}),
    (fnn.RMSNorm, nn.RMSNorm, (8,), {}),
    (fnn.RMSNorm, nn.RMSNorm, ((3, 4),), {"eps": 1e-6}),
    (fnn.RMSNorm, nn.RMSNorm, (8,), {"elementwise_affine": False}),
    (fnn.BatchNorm, nn.BatchNorm1d, (6,), {}),
    (fnn.BatchNorm, nn.BatchNorm1d, (6,), {"eps": 1e-3, "momentum": None}),
    (fnn.BatchNorm, nn.BatchNorm1d, (6,), {"affine": False}),
    (fnn.BatchNorm, nn.BatchNorm1d, (6,), {"bias": False}),
    (fnn.BatchNorm, nn.BatchNorm1d, (6,), {"track_running_stats": False}),
    (fnn.BatchNorm, nn.BatchNorm1d, (6,), {"affine": False, "track_running_stats": False}),
    (fnn.BatchNorm1d, nn.BatchNorm1d, (6,), {"momentum": None}),
    (fnn.BatchNorm2d, nn.BatchNorm2d, (6,), {"affine": False}),
    (fnn.BatchNorm3d, nn.BatchNorm3d, (6,), {"track_running_stats": False}),
    (fnn.Dropout, nn.Dropout, (), {}),
    (fnn.Dropout, nn.Dropout, (0.2,), {"inplace": True}),
]
IDS = [f"{o.__name__}{a}{k}" for o, _, a, k in CASES]


def build(case):
    ours_cls, torch_cls, args, kwargs = case
    if torch_cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        skip_unless_torch_batch_norm_takes(kwargs)
    return ours_cls(*args, **kwargs), torch_cls(*args, **kwargs)


# what ours adds to torch's interface: the kernel choice, RMSNorm's offset and cast (plain
# attributes, keyword-only constructor arguments with defaults, not in the state_dict); and
# on a torch older than BatchNorm's bias argument, that argument
EXTENSIONS = {"backend", "offset", "cast"} | (set() if TORCH_BATCH_NORM_TAKES_BIAS else {"bias"})


def as_this_torch_prints(ours: str, theirs: str) -> str:
    """Our extra_repr as the installed torch words it: LayerNorm's and BatchNorm's
    ``bias=`` is newer than torch 2.11, whose repr has none."""
    return ours if "bias=" in theirs else re.sub(r", bias=\w+", "", ours)


def public_attributes(m: nn.Module) -> dict:
    return {k: v for k, v in vars(m).items() if not k.startswith("_") and k not in EXTENSIONS}


def assert_signature_extends(ours, theirs) -> None:
    """torch's parameters, in order, with the same kinds and defaults; anything ours adds
    comes after them, is one of EXTENSIONS, and has a default (so torch code runs unchanged)."""
    def params(f):
        return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]
    a, b = params(ours), params(theirs)
    assert a[:len(b)] == b, f"ours {a}\ntorch {b}"
    for name, kind, default in a[len(b):]:
        assert name in EXTENSIONS and default is not inspect.Parameter.empty, name


def randomize(m: nn.Module, seed: int) -> None:
    """Distinct values in every floating parameter and buffer, and a batch count."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*m.parameters(), *m.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.fill_(seed)


def assert_states_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb), f"state_dict keys: ours {list(sa)}, torch {list(sb)}"
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, f"{k}: dtype {sa[k].dtype} vs {sb[k].dtype}"
        assert sa[k].shape == sb[k].shape, f"{k}: shape {sa[k].shape} vs {sb[k].shape}"
        assert torch.equal(sa[k], sb[k]), f"{k}: ours {sa[k]}, torch {sb[k]}"


@pytest.mark.parametrize("ours_cls,torch_cls", [(fnn.LayerNorm, nn.LayerNorm),
                                                (fnn.RMSNorm, nn.RMSNorm),
                                                (fnn.BatchNorm, nn.BatchNorm1d),
                                                (fnn.BatchNorm1d, nn.BatchNorm1d),
                                                (fnn.BatchNorm2d, nn.BatchNorm2d),
                                                (fnn.BatchNorm3d, nn.BatchNorm3d),
                                                (fnn.Dropout, nn.Dropout)])
def test_constructor_signature_is_torchs(ours_cls, torch_cls):
    assert_signature_extends(ours_cls.__init__, torch_cls.__init__)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_attributes_parameters_buffers_state_dict_extra_repr(case):
    ours, theirs = build(case)
    assert public_attributes(ours) == public_attributes(theirs)
    assert as_this_torch_prints(ours.extra_repr(), theirs.extra_repr()) == theirs.extra_repr()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert hasattr(ours, name) == hasattr(theirs, name), name
        if hasattr(theirs, name):
            assert (getattr(ours, name) is None) == (getattr(theirs, name) is None), name
    assert_states_equal(ours, theirs)          # fresh modules: same initial values too


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_dict_loads_both_ways(case):
    ours, theirs = build(case)
    randomize(theirs, seed=3)
    ours.load_state_dict(theirs.state_dict())                  # strict
    assert_states_equal(ours, theirs)
    randomize(ours, seed=5)
    theirs.load_state_dict(ours.state_dict())
    assert_states_equal(ours, theirs)
    # nested, as in a real model
    a, b = nn.Sequential(nn.Identity(), ours), nn.Sequential(nn.Identity(), theirs)
    randomize(b, seed=7)
    a.load_state_dict(b.state_dict())
    assert_states_equal(ours, theirs)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reset_parameters(case):
    ours, theirs = build(case)
    if not hasattr(theirs, "reset_parameters"):
        assert not hasattr(ours, "reset_parameters")
        return
    randomize(ours, seed=3)
    randomize(theirs, seed=4)
    ours.reset_parameters()
    theirs.reset_parameters()
    assert_states_equal(ours, theirs)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_to_dtype_moves_parameters_and_buffers(case, dtype):
    ours, theirs = build(case)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    assert_states_equal(ours, theirs)          # num_batches_tracked stays torch.long
    ours_cls, torch_cls, args, kwargs = case
    if "device" in inspect.signature(torch_cls.__init__).parameters:
        assert_states_equal(ours_cls(*args, **kwargs, dtype=dtype),
                            torch_cls(*args, **kwargs, dtype=dtype))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_train_eval_flags(case):
    ours, _ = build(case)
    assert ours.training
    assert not ours.eval().training
    assert ours.train().training


def test_a_model_of_them_compiles_and_exports():
    """torch.compile (Dynamo and AOTAutograd through the Functions; aot_eager needs no C++
    compiler) and torch.export give the eager model's outputs and gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), fnn.LayerNorm(8), nn.GELU(), fnn.RMSNorm(8),
                          fnn.BatchNorm(8), fnn.Dropout(0.0), nn.Linear(8, 1))
    x = torch.randn(16, 8)
    want = model(x)
    want_grads = torch.autograd.grad(want.sum(), list(model.parameters()))
    torch._dynamo.reset()
    got = torch.compile(model, backend="aot_eager")(x)
    got_grads = torch.autograd.grad(got.sum(), list(model.parameters()))
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
    model.eval()
    exported = torch.export.export(model, (x,)).module()
    torch.testing.assert_close(exported(x), model(x))
