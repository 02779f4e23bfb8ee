"""torch.compile and the Triton kernels: a compiled model holds them as single custom ops
(``kernels.library``), so its graph does not break around them, and its outputs, gradients
and BatchNorm running statistics equal the uncompiled calls'. ``aot_eager`` traces with Dynamo
and AOTAutograd (the backward too) without generating code, so no C++ compiler is needed."""
from __future__ import annotations

import pytest
import torch

from fromscratch import functional as FS
from fromscratch import nn as fnn
from tests.kernels._helpers import block_inputs


def aot_eager_noting(ops: list[str]):
    """aot_eager, noting the ops of every graph Dynamo hands it."""
    from torch._dynamo.backends.registry import lookup_backend
    aot_eager = lookup_backend("aot_eager")

    def backend(gm, example_inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return aot_eager(gm, example_inputs)
    return backend


def test_compiled_model_holds_the_kernels_as_ops_and_equals_eager(device):
    torch._dynamo.reset()
    x, r, w, b = block_inputs(device)
    buffers = {k: (torch.zeros(37, device=device), torch.ones(37, device=device))
               for k in ("eager", "compiled")}

    def block(x, r, w, b, rm, rv):
        h = FS.layer_norm(x, 37, w, b, backend="triton") * 2
        s, y = FS.fused_add_rms_norm(h, r, 37, w, backend="triton")
        z = FS.rms_norm(y + s, 37, w, backend="triton")
        return FS.batch_norm(z, rm, rv, w, b, training=True, momentum=0.3,
                             backend="triton").sum(-1)

    eager = block(x, r, w, b, *buffers["eager"])
    want = torch.autograd.grad(eager.pow(2).sum(), (x, r, w, b))
    ops: list[str] = []
    compiled_block = torch.compile(block, backend=aot_eager_noting(ops), fullgraph=True)
    compiled = compiled_block(x, r, w, b, *buffers["compiled"])   # fullgraph: no graph break
    got = torch.autograd.grad(compiled.pow(2).sum(), (x, r, w, b))
    assert {f"fromscratch.{op}.default" for op in
            ("layer_norm", "fused_add_rms_norm", "rms_norm", "batch_norm")} <= set(ops), ops
    torch.testing.assert_close(compiled, eager)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)
    for a, e in zip(buffers["compiled"], buffers["eager"]):       # running statistics
        torch.testing.assert_close(a, e)


def test_without_the_custom_ops_the_kernels_run_outside_the_graph(device, monkeypatch):
    """If kernels.library did not load (a torch without its API), a compiled model still
    gets the kernels, eagerly between graphs, and the same numbers."""
    from fromscratch.kernels import autograd
    monkeypatch.setattr(autograd, "library", None)
    torch._dynamo.reset()
    x, r, w, b = block_inputs(device)

    def block(x, w, b):
        return FS.rms_norm(FS.layer_norm(x, 37, w, b, backend="triton") * 2, 37, w,
                           backend="triton").sum(-1)

    ops: list[str] = []
    got = torch.compile(block, backend=aot_eager_noting(ops))(x, w, b)
    torch.testing.assert_close(got, block(x, w, b))
    assert not [op for op in ops if op.startswith("fromscratch")], ops
    torch._dynamo.reset()


def test_compiled_modules_equal_eager_in_training_and_eval(device):
    torch._dynamo.reset()
    x, _, _, _ = block_inputs(device)
    for train in (True, False):
        twins = []
        for _ in range(2):                      # one run eagerly, one compiled
            torch.manual_seed(0)
            model = torch.nn.Sequential(fnn.LayerNorm(37, backend="triton"),
                                        fnn.RMSNorm(37, backend="triton"),
                                        fnn.BatchNorm(37, backend="triton")).to(device)
            model[2].running_mean.uniform_(-1, 1)
            twins.append(model.train(train))
        compiled = torch.compile(twins[1], backend="aot_eager", fullgraph=True)
        for step in range(2):
            torch.testing.assert_close(compiled(x + step), twins[0](x + step))
        for a, e in zip(twins[1].buffers(), twins[0].buffers()):   # running statistics
            torch.testing.assert_close(a, e)


def test_compiled_dropout_draws_a_new_mask_every_call(device):
    torch._dynamo.reset()
    f = torch.compile(lambda t: FS.dropout(t, 0.5, backend="triton"), backend="aot_eager")
    x = torch.ones(4096, device=device)
    first, second = f(x), f(x)
    assert set(first.unique().tolist()) <= {0.0, 2.0}
    assert not torch.equal(first, second)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_reduce_overhead_captures_the_kernels_in_cuda_graphs():
    """mode="reduce-overhead" (Inductor, CUDA graphs of the forward and the backward): the
    first steps warm up and record, later ones replay; every step equals eager, outputs and
    gradients, with new inputs each time."""
    torch._dynamo.reset()

    def block(x, r, w, b):
        h = FS.layer_norm(x, 37, w, b)                       # "auto": the kernels on CUDA
        s, y = FS.fused_add_rms_norm(h, r, 37, w)
        return FS.rms_norm(y + s, 37, w)

    compiled = torch.compile(block, mode="reduce-overhead", fullgraph=True)
    for step in range(4):
        args = [t.detach().cuda().add(step).requires_grad_() for t in block_inputs("cpu")]
        want = block(*args)
        want_grads = torch.autograd.grad(want.pow(2).sum(), args)
        got = compiled(*args)
        got_grads = torch.autograd.grad(got.pow(2).sum(), args)
        torch.testing.assert_close(got, want)
        for a, e in zip(got_grads, want_grads):
            torch.testing.assert_close(a, e)
