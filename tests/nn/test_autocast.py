"""Under torch.autocast the layers compute as without it: statistics in float32, the input's
dtype out, as torch.nn's CPU layers; and a backward run inside the autocast region (on the
CPU it runs in the caller's thread) keeps dx's float32 digits, where autocast would have
cast the backward's row dots (a matmul) to bfloat16."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fromscratch import nn as fnn

LAYERS = {
    "LayerNorm": (lambda: fnn.LayerNorm(64), lambda: nn.LayerNorm(64)),
    "RMSNorm": (lambda: fnn.RMSNorm(64), lambda: nn.RMSNorm(64)),
    "BatchNorm": (lambda: fnn.BatchNorm(64), lambda: nn.BatchNorm1d(64)),
}


def inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 64, generator=g) * 3 + 1
    return x.to(dtype).requires_grad_(), torch.randn(32, 64, generator=g)


@pytest.mark.parametrize("name", LAYERS)
def test_backward_inside_autocast_keeps_float32_digits(name):
    ours, theirs = (make() for make in LAYERS[name])
    x, dy = inputs()
    want = torch.autograd.grad(theirs(x), x, dy)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
        got = torch.autograd.grad(y, x, dy)[0]           # backward inside the region
    assert y.dtype == torch.float32
    torch.testing.assert_close(got, want)               # float32 tolerances, not bf16's


@pytest.mark.parametrize("name", [*LAYERS, "Dropout"])
def test_bf16_activations_under_autocast_match_torch(name):
    """A bf16 activation (a Linear's output under autocast) goes through as torch.nn's
    layer takes it: same dtype out, same values to bf16 rounding."""
    if name == "Dropout":
        ours, theirs = fnn.Dropout(0.0), nn.Dropout(0.0)
    else:
        ours, theirs = (make() for make in LAYERS[name])
    linear = nn.Linear(64, 64)
    x, _ = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear(x)
        got, want = ours(h), theirs(h)
    assert h.dtype == got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)
