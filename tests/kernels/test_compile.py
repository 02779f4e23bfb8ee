"""A model compiled with torch.compile runs the Triton kernels as it would eagerly (they are
left out of the graph): same outputs and gradients as the uncompiled calls. ``aot_eager``
traces with Dynamo and AOTAutograd without generating code, so no C++ compiler is needed."""
from __future__ import annotations

import torch

from fromscratch import functional as FS


def test_compiled_callers_of_the_kernels_equal_eager(device):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 37, generator=g) * 2 + 1).to(device).requires_grad_()
    r = torch.randn(6, 37, generator=g).to(device).requires_grad_()
    w = (1 + 0.1 * torch.randn(37, generator=g)).to(device).requires_grad_()
    b = (0.1 * torch.randn(37, generator=g)).to(device).requires_grad_()
    rm, rv = torch.zeros(37, device=device), torch.ones(37, device=device)

    def block(x, r, w, b):
        h = FS.layer_norm(x, 37, w, b, backend="triton") * 2
        s, y = FS.fused_add_rms_norm(h, r, 37, w, backend="triton")
        z = FS.rms_norm(y + s, 37, w, backend="triton")
        z = FS.batch_norm(z, rm, rv, w, b, training=True, backend="triton")
        return FS.dropout(z, 0.0, backend="triton").sum(-1)

    eager = block(x, r, w, b)
    want = torch.autograd.grad(eager.pow(2).sum(), (x, r, w, b))
    compiled = torch.compile(block, backend="aot_eager")(x, r, w, b)
    got = torch.autograd.grad(compiled.pow(2).sum(), (x, r, w, b))
    torch.testing.assert_close(compiled, eager)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)


def test_compiled_dropout_draws_a_new_mask_every_call(device):
    torch._dynamo.reset()
    f = torch.compile(lambda t: FS.dropout(t, 0.5, backend="triton"), backend="aot_eager")
    x = torch.ones(4096, device=device)
    first, second = f(x), f(x)
    assert set(first.unique().tolist()) <= {0.0, 2.0}
    assert not torch.equal(first, second)
