"""Per-feature parameters that are strided views (``weight[::2]``, a column of a packed
tensor): the kernels read ``W + cols``, so a strided weight, bias or running statistic must
be copied first, never read with the wrong stride. Each case against backend='torch',
gradients included; BatchNorm's strided running buffers must still be updated in place."""
from __future__ import annotations

import pytest
import torch

from fromscratch import functional as F
from tests.kernels._helpers import close, f64, param, rows


def strided(n: int, device: torch.device, seed: int, shift: float = 0.0, step: int = 3
            ) -> torch.Tensor:
    """A length-n float32 view with stride ``step`` into a wider tensor."""
    wide = param(n * step, torch.float32, device, seed, shift)
    view = wide[::step]
    assert view.stride() == (step,)
    return view


def grads(fn, inputs: list[torch.Tensor], dy: torch.Tensor) -> list[torch.Tensor]:
    leaves = [t.detach().requires_grad_() for t in inputs]
    y = fn(*leaves)
    return [y, *torch.autograd.grad(y, leaves, dy)]


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "fused_add_rms_norm"])
def test_row_norms_with_strided_weight_and_bias(device, op):
    m, n = 6, 37
    x = rows(m, n, torch.float32, device)
    dy = rows(m, n, torch.float32, device, seed=3, shifted=False)
    w, b = strided(n, device, 1, 1.0), strided(n, device, 2)
    r = rows(m, n, torch.float32, device, seed=4, shifted=False)
    out = {}
    for backend in ("torch", "triton"):
        if op == "layer_norm":
            out[backend] = grads(lambda x, w, b: F.layer_norm(x, n, w, b, backend=backend),
                                 [x, w, b], dy)
        elif op == "rms_norm":
            out[backend] = grads(lambda x, w: F.rms_norm(x, n, w, 1e-6, backend=backend),
                                 [x, w], dy)
        else:
            out[backend] = grads(
                lambda x, r, w: F.fused_add_rms_norm(x, r, n, w, 1e-6, backend=backend)[1],
                [x, r, w], dy)
    for i, (mine, ref) in enumerate(zip(out["triton"], out["torch"])):
        close(mine, f64(ref), f"{op} output {i}", torch.float32, reduced_over=m,
              cond=1e-4 * float(ref.detach().abs().max()))


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_with_strided_parameters_and_buffers(device, training):
    m, c = 20, 13
    x = rows(m, c, torch.float32, device)
    dy = rows(m, c, torch.float32, device, seed=3, shifted=False)
    w, b = strided(c, device, 1, 1.0), strided(c, device, 2)
    buffers, out = {}, {}
    for backend in ("torch", "triton"):
        wide_m = torch.zeros(2 * c, device=device)
        wide_v = torch.ones(2 * c, device=device)
        rm, rv = wide_m[::2], wide_v[::2]                  # strided running buffers
        if not training:
            rm.copy_(torch.linspace(-1, 1, c))
            rv.copy_(torch.linspace(0.5, 2, c))
        out[backend] = grads(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5,
                                                          backend=backend), [x, w, b], dy)
        buffers[backend] = (wide_m.clone(), wide_v.clone())
    for i, (mine, ref) in enumerate(zip(out["triton"], out["torch"])):
        close(mine, f64(ref), f"batch_norm output {i}", torch.float32, reduced_over=m,
              cond=1e-4 * float(ref.detach().abs().max()))
    for mine, ref, name in zip(buffers["triton"], buffers["torch"], ("mean", "var")):
        close(mine, f64(ref), f"running_{name} (and the values between its elements)",
              torch.float32)
