"""backend="compile": the ops' own functions through torch.compile give the eager numbers.

Each compile takes a few seconds on a CPU, so the shapes here are few and small. Skipped
where there is no C++ compiler for Inductor.
"""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from fromscratch import functional as F
from fromscratch import nn as fnn
from fromscratch.autograd import compiled as _compile
from tests._compare import assert_close

pytestmark = pytest.mark.skipif(
    not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")),
    reason="torch.compile on a CPU needs a C++ compiler")

MODULES = {"LayerNorm": lambda **kw: fnn.LayerNorm(24, **kw),
           "RMSNorm": lambda **kw: fnn.RMSNorm(24, **kw),
           "BatchNorm": lambda **kw: fnn.BatchNorm(24, **kw)}


def step(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    y = module(x)
    y.backward(dy)
    return [y, x.grad, *(p.grad for p in module.parameters()), *module.buffers()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", MODULES)
def test_compiled_equals_eager(name, dtype):
    """Output, input/weight/bias gradients and running statistics, two training steps and
    one in eval, with mean-shifted rows; bf16 is computed in float32 either way."""
    torch.manual_seed(0)
    eager = MODULES[name](backend="torch")
    compiled = MODULES[name](backend="compile")
    with torch.no_grad():
        for p in eager.parameters():
            p.uniform_(0.5, 1.5)
        compiled.load_state_dict(eager.state_dict())
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0, "atol": 0}
    for mode in ("train", "train", "eval"):
        x = (torch.randn(3, 5, 24) * 2 + 4).to(dtype)
        dy = torch.randn(3, 5, 24).to(dtype)
        for m in (eager, compiled):
            m.train(mode == "train")
            m.zero_grad(set_to_none=True)
        got, want = step(compiled, x, dy), step(eager, x, dy)
        for i, (g, w) in enumerate(zip(got, want)):
            if dtype == torch.bfloat16:    # one rounding to bf16 apart at most
                tol = {"rtol": 2 ** -7, "atol": 1e-2}
            assert g.dtype == w.dtype, f"{name} {mode} tensor {i}: dtype"
            assert_close(g, w, f"{name} {mode} tensor {i}", **tol)


def test_functional_forms_and_fused_add_take_compile():
    torch.manual_seed(1)
    x, r = torch.randn(6, 16), torch.randn(6, 16)
    w, b = torch.rand(16) + 0.5, torch.randn(16)
    pairs = [(F.layer_norm(x, 16, w, b, backend="compile"), F.layer_norm(x, 16, w, b,
                                                                         backend="torch")),
             (F.rms_norm(x, 16, w, backend="compile"), F.rms_norm(x, 16, w, backend="torch"))]
    s, y = F.fused_add_rms_norm(x, r, 16, w, backend="compile")
    s_ref, y_ref = F.fused_add_rms_norm(x, r, 16, w, backend="torch")
    pairs += [(s, s_ref), (y, y_ref)]
    for i, (got, want) in enumerate(pairs):
        assert_close(got, want, f"functional form {i}", rtol=1e-5, atol=1e-6)


def test_dropout_runs_its_eager_passes():
    """Two passes gain nothing from fusion, and a compiled random stream would not be
    torch's generator: under "compile" dropout draws the eager mask, seed for seed."""
    x = torch.randn(50, 40)
    torch.manual_seed(3)
    want = fnn.Dropout(0.3, backend="torch")(x)
    torch.manual_seed(3)
    got = fnn.Dropout(0.3, backend="compile")(x)
    assert torch.equal(got, want)


def test_double_backward_takes_the_eager_path():
    """create_graph=True differentiates the eager ops (the compiled ones carry no graph)."""
    torch.manual_seed(2)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.rand(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda x, w: F.layer_norm(x, 6, w, None, backend="compile"), (x, w))


def test_a_failed_compile_names_the_way_out(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args, **kw):
            raise OSError("no compiler")
        return run
    monkeypatch.setattr(torch, "compile", broken)
    _compile.compiled.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="backend='torch'") as info:
            F.layer_norm(torch.randn(2, 8), 8, backend="compile")
        assert "ops.layer_norm.forward" in str(info.value)
        assert isinstance(info.value.__cause__, OSError)
    finally:
        _compile.compiled.cache_clear()          # the real torch.compile for later tests


def test_what_is_compiled_is_the_ops_own_functions(monkeypatch):
    """One formula: "compile" hands torch.compile the very functions "torch" runs."""
    from fromscratch.ops import layer_norm
    seen = []
    real = torch.compile

    def spy(fn, **kwargs):
        seen.append(fn)
        return real(fn, **kwargs)
    monkeypatch.setattr(torch, "compile", spy)
    _compile.compiled.cache_clear()
    try:
        x = torch.randn(4, 8, requires_grad=True)
        F.layer_norm(x, 8, backend="compile").sum().backward()
    finally:
        _compile.compiled.cache_clear()
    assert seen == [layer_norm.forward, layer_norm.backward]
