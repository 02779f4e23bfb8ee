"""backend="auto" | "triton" | "torch": which implementation runs, and clear errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fromscratch import functional as F
from fromscratch import nn as fnn
from fromscratch.kernels.dispatch import use_kernels
from fromscratch.autograd._calls import everyday
from fromscratch.autograd.dropout import DropoutFn
from fromscratch.autograd.layer_norm import LayerNormFn
from fromscratch.autograd.rms_norm import RMSNormFn

MODULES = [lambda **kw: fnn.LayerNorm(8, **kw), lambda **kw: fnn.RMSNorm(8, **kw),
           lambda **kw: fnn.BatchNorm(8, **kw), lambda **kw: fnn.Dropout(0.1, **kw)]


def first_fn(y: torch.Tensor):
    node = y.grad_fn
    while not hasattr(node, "_forward_cls"):
        node = node.next_functions[0][0]
    return node._forward_cls


def test_unknown_backend_is_refused():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="backend must be one of"):
        F.layer_norm(x, 8, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        F.dropout(x, 0.1, training=False, backend="fast")
    for make in MODULES:
        with pytest.raises(ValueError, match="backend must be one of"):
            make(backend="tirton")


def test_auto_on_cpu_is_the_reference():
    """CPU tensors under "auto" run ops/ through autograd/<op>.py's Functions, even with triton installed."""
    x = torch.randn(3, 8, requires_grad=True)
    assert first_fn(F.layer_norm(x, 8)) is everyday(LayerNormFn, 1)
    assert first_fn(F.rms_norm(x, 8)) is everyday(RMSNormFn, 1)
    assert first_fn(F.dropout(x, 0.5)) is everyday(DropoutFn, 1)
    assert not use_kernels("op", "auto", x)
    assert not use_kernels("op", "torch", x)


def test_backend_is_not_state_and_shows_when_chosen():
    for make in MODULES:
        auto, torch_ = make(), make(backend="torch")
        assert "backend" not in repr(auto)
        assert "backend='torch'" in repr(torch_)
        assert list(auto.state_dict()) == list(torch_.state_dict())
        torch_.load_state_dict(auto.state_dict())


def test_triton_backend_refuses_what_it_cannot_do(device):
    x64 = torch.randn(3, 8, dtype=torch.float64, device=device)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16 input"):
        F.layer_norm(x64, 8, backend="triton")
    x = torch.randn(3, 8, device=device)
    with pytest.raises(ValueError, match="weight is on device meta"):
        F.layer_norm(x, 8, torch.ones(8, device="meta"), backend="triton")
    with pytest.raises(TypeError, match="weight"):
        F.rms_norm(x, 8, torch.ones(8, dtype=torch.float64, device=device), backend="triton")


def test_double_backward_through_kernels_says_so(device):
    x = torch.randn(3, 8, device=device, requires_grad=True)
    y = F.layer_norm(x, 8, backend="triton")
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.autograd.grad(y, x, torch.randn_like(y), create_graph=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU would run the compiled kernels")
def test_cpu_without_interpreter_is_a_clear_error():
    pytest.importorskip("triton")
    code = ("import torch, fromscratch.functional as F\n"
            "try:\n    F.layer_norm(torch.randn(2, 8), 8, backend='triton')\n"
            "except RuntimeError as e:\n    print('ERR', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert "ERR" in out.stdout and "TRITON_INTERPRET=1" in out.stdout, out.stdout + out.stderr


def test_fused_add_reference_path_and_errors():
    """On CPU under "auto" the fused op is the two steps composed; a residual of another
    dtype is refused by the kernels and fine for the reference."""
    x, r = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    w = torch.rand(8, dtype=torch.float64) + 0.5
    s, y = F.fused_add_rms_norm(x, r, 8, w)
    torch.testing.assert_close(s, x + r, rtol=0, atol=0)
    torch.testing.assert_close(y, F.rms_norm(x + r, 8, w, backend="torch"), rtol=0, atol=0)
    s, _ = F.fused_add_rms_norm(x.float(), r.half(), 8)           # promotes, as x + r does
    assert s.dtype == torch.float32
    with pytest.raises(TypeError, match="one dtype for both"):
        F.fused_add_rms_norm(x.float(), r.half(), 8, backend="triton")
    with pytest.raises(ValueError, match="residual has shape"):
        F.fused_add_rms_norm(x, r[:2], 8)
    with pytest.raises(ValueError, match="backend must be one of"):
        F.fused_add_rms_norm(x, r, 8, backend="gpu")


def test_torch_func_transforms(device):
    """Inside vmap/grad the kernels cannot run: "triton" says so, "auto" takes the reference
    (on CUDA) and gives torch.nn's per-sample gradients."""
    from torch.func import grad, vmap
    x = torch.randn(4, 3, 16, device=device)
    w = torch.ones(16, device=device)

    def loss(backend):
        return lambda xi: F.layer_norm(xi, 16, w, None, backend=backend).pow(3).sum()
    with pytest.raises(RuntimeError, match="does not support torch.func"):
        vmap(grad(loss("triton")))(x)
    want = vmap(grad(lambda xi: torch.nn.functional.layer_norm(xi, (16,), w).pow(3).sum()))(x)
    torch.testing.assert_close(vmap(grad(loss("auto")))(x), want)
