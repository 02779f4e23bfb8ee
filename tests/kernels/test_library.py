"""The kernels' custom ops (``kernels.library``) as torch.library requires them:
``torch.library.opcheck`` tests each one's schema, that its fake outputs match the real ones,
its autograd registration, and AOTAutograd with dynamic shapes. How a compiled model uses
them: test_compile.py."""
from __future__ import annotations

import pytest
import torch

from tests.kernels._helpers import block_inputs


def op_cases(device):
    from fromscratch.kernels import library as L
    x, r, w, b = block_inputs(device)
    dy = torch.randn(6, 37, device=device)
    stats = (torch.zeros(6, device=device), torch.ones(6, device=device))
    rm, rv = torch.zeros(37, device=device), torch.ones(37, device=device)
    d = [t.detach() for t in (x, w, b)]
    return {
        "layer_norm": (L.layer_norm_op, (x, w, b, 1e-5)),
        "layer_norm, no parameters": (L.layer_norm_op, (x, None, None, 1e-5)),
        "layer_norm, bf16 input, float32 weight": (
            L.layer_norm_op, (x.detach().bfloat16().requires_grad_(), w, b.bfloat16(), 1e-5)),
        "layer_norm_backward": (L.layer_norm_backward_op, (dy, *d, *stats)),
        "rms_norm": (L.rms_norm_op, (x, w, 1e-6, False, None)),
        "rms_norm, bf16 input, xhat rounded, float32 out": (
            L.rms_norm_op, (x.detach().bfloat16().requires_grad_(), w, 1e-6, True,
                            torch.float32)),
        "fused_add_rms_norm": (L.fused_add_rms_norm_op, (x, r, w, 1e-6, False, None)),
        "rms_norm_backward with ds": (L.rms_norm_backward_op, (dy, d[0], d[1], stats[1], dy)),
        "batch_norm, training": (L.batch_norm_op, (x, w, b, None, None, True, 1e-5)),
        "batch_norm, eval": (L.batch_norm_op, (x, w, b, rm, rv, False, 1e-5)),
        "batch_norm, fp16 input": (L.batch_norm_op, (x.detach().half().requires_grad_(), w, b,
                                                     None, None, True, 1e-5)),
        "batch_norm, empty batch": (L.batch_norm_op, (x[:0], w, b, None, None, True, 1e-5)),
    }


@pytest.mark.parametrize("case", list(op_cases("cpu")))
def test_custom_ops_pass_opcheck(device, case):
    """torch.library.opcheck: schema, fake (meta) outputs equal to the real ones, autograd
    registration, AOTAutograd with dynamic shapes."""
    op, args = op_cases(device)[case]
    utils = ["test_schema", "test_autograd_registration", "test_faketensor",
             "test_aot_dispatch_dynamic"]
    if "empty" in case:       # NaN statistics, which the AOT test's comparison calls different
        utils.pop()
    torch.library.opcheck(op, args, test_utils=utils)


def test_double_backward_through_the_ops_raises(device):
    from fromscratch.kernels import library as L
    x, _, w, b = block_inputs(device)
    y = L.layer_norm(x, w, b, 1e-5)
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
