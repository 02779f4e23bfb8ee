r"""Inverted dropout in Triton with a counter-based generator: no mask is stored.

The keep decision of element e (its index in the contiguous tensor) is

    w = word ((e mod 8) div 2) of Philox4x32-10(key = seed, counter = offset + e div 8)
    u_e = (low 16 bits of w if e is even, high 16 bits if odd) / 2^16
    keep_e = u_e >= p          y_e = x_e * keep_e / (1 - p)          (``ops.dropout``'s rule)

Philox is a pure function of (seed, counter), so the backward recomputes exactly the same
mask from the seed and offset saved by the forward, and moves only dy and dx: no 1-byte
mask is written in the forward nor read in the backward. The decisions do not depend on
the block size, the number of programs or the GPU, only on (seed, offset, e).

Why 16-bit uniforms: at copy bandwidth an H100/H200 streams about 10^12 bf16 elements a
second through this kernel, and Philox4x32-10 costs ~40 integer multiply-adds per call.
With one call per 4 elements (32-bit uniforms) the kernel compiles to 27.5 instructions per
element, by estimate ~85 % of the instruction issue at that rate; with one per 8, to 19
(~60 %). See docs/kernels.md. The cost is resolution: the keep probability is a multiple
of 2^-16, 1 - ceil(p 2^16) / 2^16, at most 1.5e-5 from 1 - p (torch's float32 uniforms have
2^-24; FlashAttention's dropout uses 8 bits). The scale stays 1 / (1 - p).

This generator is not torch's: for the same ``torch.manual_seed`` the triton backend drops
other elements than the torch backend. Both keep each element with probability ~1 - p.

This file holds the kernels, their launcher ``apply`` (forward and backward alike; its
launches are never replayed, the seed changes every call) and ``DropoutFn``, the autograd
Function over it.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

from ..ops.dropout import scale as keep_scale
from . import _fast_path, _tune
from ._common import cdiv, flat_contiguous, on_device, once_differentiable


@triton.jit
def _uniforms16(seed, offset, pid, BLOCK: tl.constexpr):
    """The 16-bit uniforms (as integers 0 .. 65535) of elements pid*BLOCK ... + BLOCK."""
    Q: tl.constexpr = BLOCK // 8
    counter = offset + pid * Q + tl.arange(0, Q)          # int64: no wrap past 2^32 calls
    lo = counter.to(tl.uint32)
    hi = (counter >> 32).to(tl.uint32)
    zero = lo * 0
    r0, r1, r2, r3 = tl.philox(seed, lo, hi, zero, zero)
    # element 8c + 2k + h takes half h (0: low, 1: high) of word k of counter c
    low = tl.join(tl.join(r0 & 0xFFFF, r2 & 0xFFFF), tl.join(r1 & 0xFFFF, r3 & 0xFFFF))
    high = tl.join(tl.join(r0 >> 16, r2 >> 16), tl.join(r1 >> 16, r3 >> 16))
    return tl.reshape(tl.join(low, high), [BLOCK])


@triton.jit
def _dropout_kernel(X, Y, n, threshold, scale, seed, offset, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    keep = _uniforms16(seed, offset, pid, BLOCK) >= threshold     # unsigned compare
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, tl.where(keep, x * scale, 0.0).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _uniform_kernel(U, n, seed, offset, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    u = _uniforms16(seed, offset, pid, BLOCK).to(tl.float32) * (1.0 / 65536.0)
    tl.store(U + offs, u, mask=offs < n)


def threshold16(p: float) -> int:
    """The integer t with u >= p  <=>  65536 u >= t for every u in {0, 1/65536, ...}."""
    return min(65536, math.ceil(p * 65536))


_CONFIGS = [(4096, 8), (2048, 4), (8192, 16), (4096, 4)]   # (elements per program, num_warps)


def apply(x: torch.Tensor, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    """y = x * keep / (1 - p) with keep regenerated from (seed, offset): the forward on x and,
    called again on dy with the same arguments, the backward."""
    x = flat_contiguous(x)
    y = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return y
    scale = keep_scale(p)
    t = threshold16(p)

    def launch(cfg: tuple[int, int]) -> None:
        block, warps = cfg
        _fast_path.launch(_dropout_kernel, (cdiv(n, block),), x, y, n, t, scale, seed,
                          offset, BLOCK=block, num_warps=warps)

    with on_device(x):
        launch(_tune.choose(("dropout", x.dtype, _tune.rows_bucket(n)), _CONFIGS, launch,
                            x.device))
    return y


def uniforms(n: int, seed: int, offset: int = 0, device: torch.device | str = "cpu"
             ) -> torch.Tensor:
    """The n uniforms ``apply`` compares with p (multiples of 2^-16), as float32."""
    u = torch.empty(n, dtype=torch.float32, device=device)
    if n:
        with on_device(u):
            _fast_path.launch(_uniform_kernel, (cdiv(n, 1024),), u, n, seed, offset,
                              BLOCK=1024)
    return u


def new_seed() -> int:
    """A seed drawn from torch's default (CPU) generator, so ``torch.manual_seed`` makes the
    triton backend's masks reproducible; drawing it needs no GPU synchronisation."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


class DropoutFn(torch.autograd.Function):
    """(x, p, seed, offset) -> ``apply(x, p, seed, offset)``; the backward regenerates the
    forward's mask from the same seed and offset."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float, seed: int, offset: int) -> torch.Tensor:
        ctx.p, ctx.seed, ctx.offset = p, seed, offset
        return apply(x, p, seed, offset)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor):
        return apply(dy, ctx.p, ctx.seed, ctx.offset), None, None, None
