r"""Inverted dropout in Triton with a counter-based generator: no mask is stored.

The keep decision of element e (its index in the contiguous tensor) is

    u_e = lane (e mod 4) of Philox4x32-10(key = seed, counter = offset + e div 4), top 24 bits / 2^24
    keep_e = u_e >= p          y_e = x_e * keep_e / (1 - p)          (``ops.dropout``'s rule)

Philox is a pure function of (seed, counter), so the backward recomputes exactly the same
mask from the seed and offset saved by the forward, and moves only dy and dx: no 1-byte
mask is written in the forward nor read in the backward. One Philox call yields four
32-bit words, used by four neighbouring elements. The decisions do not depend on the block
size, the number of programs or the GPU, only on (seed, offset, e).

This generator is not torch's: for the same ``torch.manual_seed`` the triton backend drops
other elements than the torch backend. Both keep each element with probability 1 - p.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _tune
from ._common import flat_contiguous, on_device


@triton.jit
def _uniforms(seed, offset, pid, BLOCK: tl.constexpr):
    """u in [0, 1) for the BLOCK elements pid*BLOCK ... (see the module docstring)."""
    Q: tl.constexpr = BLOCK // 4
    counter = offset + pid * Q + tl.arange(0, Q)          # int64: no wrap past 2^32 elements
    lo = counter.to(tl.uint32)
    hi = (counter >> 32).to(tl.uint32)
    zero = lo * 0
    r0, r1, r2, r3 = tl.philox(seed, lo, hi, zero, zero)
    # interleave so that element 4c + k takes word k of counter c
    r = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), [BLOCK])
    return (r >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _dropout_kernel(X, Y, n, p, scale, seed, offset, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    u = _uniforms(seed, offset, pid, BLOCK)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.where(u >= p, x * scale, 0.0)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _uniform_kernel(U, n, seed, offset, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    tl.store(U + offs, _uniforms(seed, offset, pid, BLOCK), mask=offs < n)


_CONFIGS = [(4096, 8), (2048, 4), (8192, 16), (4096, 4)]   # (elements per program, num_warps)


def apply(x: torch.Tensor, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    """y = x * keep / (1 - p) with keep regenerated from (seed, offset): the forward on x and,
    called again on dy with the same arguments, the backward."""
    x = flat_contiguous(x)
    y = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return y
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0

    def launch(cfg: tuple[int, int]) -> None:
        block, warps = cfg
        _dropout_kernel[(triton.cdiv(n, block),)](x, y, n, p, scale, seed, offset, BLOCK=block,
                                                  num_warps=warps)

    with on_device(x):
        launch(_tune.choose(("dropout", x.dtype, _tune.rows_bucket(n)), _CONFIGS, launch,
                            x.device))
    return y


def uniforms(n: int, seed: int, offset: int = 0, device: torch.device | str = "cpu"
             ) -> torch.Tensor:
    """The n uniforms ``apply`` compares with p, as a float32 tensor (for tests and docs)."""
    u = torch.empty(n, dtype=torch.float32, device=device)
    if n:
        with on_device(u):
            _uniform_kernel[(triton.cdiv(n, 1024),)](u, n, seed, offset, BLOCK=1024)
    return u


def new_seed() -> int:
    """A seed drawn from torch's default (CPU) generator, so ``torch.manual_seed`` makes the
    triton backend's masks reproducible; drawing it needs no GPU synchronisation."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())
