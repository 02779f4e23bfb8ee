"""Running a module forward and backward, ours and torch's, on the same data."""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def forward_backward(module: nn.Module, x: torch.Tensor, dy: torch.Tensor):
    """(y, dx, {parameter name: grad}) after y.backward(dy); x is a fresh leaf."""
    x = x.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(dy)
    return y.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


def assert_same_as_torch(ours: nn.Module, theirs: nn.Module, x: torch.Tensor,
                         dy: torch.Tensor, rtol: float, atol: float) -> None:
    """Output, dx and every parameter gradient of ours equal torch's to (rtol, atol)."""
    from tests._compare import assert_close
    y, dx, g = forward_backward(ours, x, dy)
    y_t, dx_t, g_t = forward_backward(theirs, x, dy)
    assert_close(y, y_t, "y", rtol, atol)
    assert_close(dx, dx_t, "dx", rtol, atol)
    assert g.keys() == g_t.keys()
    for name in g:
        assert_close(g[name], g_t[name], f"d{name}", rtol, atol)


def try_forward_backward(module: nn.Module, x: torch.Tensor, dy: torch.Tensor):
    """torch.nn's own answer in a low-precision dtype, or None where torch's CPU kernels
    refuse the combination (only quoted in failure messages)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # "Mismatch dtype between input and weight"
            return forward_backward(module, x, dy)
    except RuntimeError:
        return None


def float64_twin(module: nn.Module) -> nn.Module:
    """A float64 copy with the same (already rounded) parameters and buffers."""
    return copy.deepcopy(module).double()


def randomize_affine(module: nn.Module, seed: int) -> nn.Module:
    """weight ~ 1 + N(0, 0.3), bias ~ N(0, 0.5): not the identity, so mistakes show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if getattr(module, "weight", None) is not None:
            module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=g))
        if getattr(module, "bias", None) is not None:
            module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=g))
    return module


def assert_float32_compute_rounded_once(make, x: torch.Tensor, dy: torch.Tensor) -> None:
    """fp16/bf16 input: the output and dx are the float32 computation on the same (exactly
    representable) numbers, rounded once to the input dtype, bit for bit; dweight is the
    float32 one (parameters in fp32)."""
    low, high = make(), make()
    high.load_state_dict(low.state_dict())
    y, dx, g = forward_backward(low, x, dy)
    y32, dx32, g32 = forward_backward(high, x.float(), dy.float())
    assert torch.equal(y, y32.to(x.dtype)), "output is not the float32 result rounded once"
    assert torch.equal(dx, dx32.to(x.dtype)), "dx is not the float32 result rounded once"
    for name in g:
        assert torch.equal(g[name], g32[name]), f"d{name} differs from the float32 computation"
