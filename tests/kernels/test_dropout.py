"""Dropout kernel: the mask comes from Philox(seed, offset) and is regenerated, not stored."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fromscratch import functional as F
from fromscratch.ops import dropout as dr
from tests.kernels._helpers import close, f64, rows

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def kernels():
    from fromscratch.kernels import dropout as K
    return K


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_ops_with_the_kernel_uniforms(device, dtype):
    """y equals ops.dropout.forward fed with the very uniforms the kernel compared with p."""
    K = kernels()
    x = rows(7, 130, dtype, device, shifted=False)
    seed = 1234
    u = K.uniforms(x.numel(), seed, device=device).reshape(x.shape)
    for p in (0.3, 0.1, float(u.flatten()[5])):          # the last: a tie, u == p keeps
        y = K.apply(x, p, seed)
        ref, cache = dr.forward(f64(x), p, f64(u))
        close(y, ref, "y", dtype)
        assert torch.equal((y != 0).cpu(), cache.keep), "kept elements differ from u >= p"


def philox4x32_10(counter: np.ndarray, seed: int) -> np.ndarray:
    """Salmon et al.'s Philox4x32-10 in NumPy: counter (c0, c1) = (low, high) 32-bit words of
    ``counter``, c2 = c3 = 0, key = (seed low, seed high). Returns (len, 4) uint32 words."""
    m32 = np.uint64(0xFFFFFFFF)
    c = [counter.astype(np.uint64) & m32, counter.astype(np.uint64) >> np.uint64(32),
         np.zeros_like(counter, dtype=np.uint64), np.zeros_like(counter, dtype=np.uint64)]
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    a, b = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    for _ in range(10):
        p0, p2 = a * c[0], b * c[2]                      # 64-bit products of 32-bit words
        c = [(p2 >> np.uint64(32)) ^ c[1] ^ k0, p2 & m32, (p0 >> np.uint64(32)) ^ c[3] ^ k1,
             p0 & m32]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & m32, (k1 + np.uint64(0xBB67AE85)) & m32
    return np.stack(c, axis=-1).astype(np.uint32)


@pytest.mark.parametrize("offset", [0, 2**32 - 3])
def test_uniforms_are_the_documented_philox_stream(device, offset):
    """u_e = half (e mod 2) of word ((e mod 8) div 2) of Philox4x32-10(seed, offset + e div 8),
    as a multiple of 2^-16."""
    K = kernels()
    n, seed = 37, 987654
    u = K.uniforms(n, seed, offset=offset, device=device).cpu().numpy()
    e = np.arange(n)
    words = philox4x32_10(offset + e // 8, seed)[e, (e % 8) // 2]
    halves = np.where(e % 2 == 0, words & 0xFFFF, words >> 16)
    np.testing.assert_array_equal(u, halves.astype(np.float32) / np.float32(2**16))


def test_keep_rate_and_mean(device):
    K = kernels()
    n, p = 40_000, 0.1
    y = K.apply(torch.ones(n, device=device), p, seed=7)
    keep = (y != 0).double().mean().item()
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(keep - (1 - p)) < 5 * sd, f"keeps {keep:.4f} of units, expected {1 - p}"
    assert torch.all((y == 0) | ((y - 1 / (1 - p)).abs() < 1e-6)), "kept units scale by 1/(1-p)"
    mean_sd = math.sqrt(p / (1 - p) / n)                 # sd of mean(y) for x = 1
    assert abs(y.double().mean().item() - 1.0) < 5 * mean_sd, "E[y] must be x"


def test_backward_regenerates_the_mask(device):
    x = rows(9, 37, torch.float32, device, shifted=False).requires_grad_(True)
    torch.manual_seed(3)
    y = F.dropout(x, 0.4, backend="triton")
    g = rows(9, 37, torch.float32, device, seed=2, shifted=False)
    y.backward(g)
    keep = y.detach() != 0            # valid only because x has no zeros: see the test below
    close(x.grad, f64(g * keep / 0.6), "dx = dy * keep / (1 - p)", torch.float32)
    close(y, f64(x.detach() * keep / 0.6), "y = x * keep / (1 - p)", torch.float32)


@pytest.mark.parametrize("offset", [0, 2**31 - 3, 2**32 - 5])
def test_backward_mask_with_zeros_in_x_other_launch_and_large_offsets(device, monkeypatch,
                                                                      offset):
    """dx = dy * (u >= p) / (1 - p) with u the kernel's uniforms, also where x == 0 (a kept
    zero has y == 0, so ``y != 0`` is no reference for the mask: the GPU benchmark's check
    once failed for that reason), when the backward launches with another block size and
    num_warps than the forward, and for counters past 2^31 and across 2^32."""
    K = kernels()
    from fromscratch.kernels.autograd import DropoutFn
    x = rows(9, 130, torch.bfloat16, device, shifted=False)
    x.view(-1)[::7] = 0                                   # a ReLU output has exact zeros
    x.requires_grad_(True)
    p, seed = 0.3, 2024
    monkeypatch.setattr(K, "_CONFIGS", [(256, 2)])
    y = DropoutFn.apply(x, p, seed, offset)
    monkeypatch.setattr(K, "_CONFIGS", [(2048, 4)])
    g = rows(9, 130, torch.bfloat16, device, seed=2, shifted=False)
    (dx,) = torch.autograd.grad(y, [x], [g])
    keep = (K.uniforms(x.numel(), seed, offset, device=device) >= p).view(x.shape)
    assert bool(((x == 0) & keep).any()), "the test needs kept zeros"
    close(dx, f64(g) * f64(keep) / (1 - p), "dx = dy * keep / (1 - p)", torch.bfloat16)
    close(y, f64(x) * f64(keep) / (1 - p), "y = x * keep / (1 - p)", torch.bfloat16)
    e = np.arange(x.numel())                              # and u is the documented stream
    words = philox4x32_10(offset + e // 8, seed)[e, (e % 8) // 2]
    halves = np.where(e % 2 == 0, words & 0xFFFF, words >> 16)
    np.testing.assert_array_equal(keep.flatten().cpu().numpy(), halves >= K.threshold16(p))


def test_same_seed_same_mask_whatever_the_launch(device, monkeypatch):
    K = kernels()
    x = rows(5, 130, torch.float32, device, shifted=False)
    monkeypatch.setattr(K, "_CONFIGS", [(256, 2)])
    a = K.apply(x, 0.5, seed=11)
    monkeypatch.setattr(K, "_CONFIGS", [(2048, 4)])
    b = K.apply(x, 0.5, seed=11)
    c = K.apply(x, 0.5, seed=12)
    assert torch.equal(a, b), "the mask must not depend on the block size"
    assert not torch.equal(a != 0, c != 0), "another seed must give another mask"


def test_counters_are_64_bit(device):
    """Element e uses counter offset + e // 8: a run crossing 2^32 continues the same stream
    (the high word carries), and offset 2^32 is not offset 0 again."""
    K = kernels()
    a = K.uniforms(32, 5, offset=2**32 - 2, device=device)
    b = K.uniforms(16, 5, offset=2**32, device=device)
    assert torch.equal(a[16:], b)
    assert not torch.equal(b, K.uniforms(8, 5, offset=0, device=device))
    assert 0.0 <= a.min() and a.max() < 1.0


def test_edges(device):
    x = rows(4, 37, torch.bfloat16, device, shifted=False).requires_grad_(True)
    y = F.dropout(x, 1.0, backend="triton")
    y.backward(torch.ones_like(y))
    assert torch.equal(y, torch.zeros_like(y)) and torch.equal(x.grad, torch.zeros_like(x))
    assert F.dropout(x, 0.0, backend="triton") is x
    assert F.dropout(x, 0.5, training=False, backend="triton") is x
    from fromscratch.nn import Dropout
    mod = Dropout(0.5, backend="triton").eval()
    assert mod(x) is x
    assert F.dropout(x[:0], 0.5, backend="triton").shape == (0, 37)


def test_non_contiguous_input(device):
    xt = rows(37, 6, torch.float16, device, shifted=False).t()
    torch.manual_seed(0)
    a = F.dropout(xt, 0.3, backend="triton")
    torch.manual_seed(0)
    b = F.dropout(xt.contiguous(), 0.3, backend="triton")
    assert a.shape == xt.shape and torch.equal(a, b)


def test_activation_checkpointing_recomputes_the_same_mask(device):
    """torch.utils.checkpoint reruns the forward in the backward with torch's RNG state
    restored: the seed, drawn from torch's CPU generator, and so the mask, are the same."""
    from torch.utils.checkpoint import checkpoint
    x = rows(8, 130, torch.float32, device).requires_grad_()

    def f(t):
        return F.dropout(t, 0.3, backend="triton").sin()
    torch.manual_seed(5)
    y1 = f(x)
    g1 = torch.autograd.grad(y1.sum(), x)[0]
    torch.manual_seed(5)
    y2 = checkpoint(f, x, use_reentrant=False)
    g2 = torch.autograd.grad(y2.sum(), x)[0]
    assert torch.equal(y1, y2) and torch.equal(g1, g2)


def test_cuda_graph_capture_is_refused(device):
    """A captured launch would replay its host-drawn seed: the same mask every replay."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    x = torch.ones(4096, device=device)
    F.dropout(x, 0.5, backend="triton")                   # compile and tune outside the graph
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph.capture_begin()
        try:
            with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph"):
                F.dropout(x, 0.5, backend="triton")
        finally:
            graph.capture_end()
