"""The last step of every column reduction: sum a small (G, N) float32 buffer of per-program
partials over its rows, and cast once to the output dtype.

The backward kernels of the norms and BatchNorm give each program a block of rows and let
it accumulate its share of ``sum_rows(...)`` in float32 registers; they write one partial
row each, and this kernel adds the G rows up. G is a few hundred, so this reads a few
megabytes at most, against gigabytes for the pass that produced the partials.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import on_device


@triton.jit
def _sum_rows_kernel(P, OUT, G, N, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    acc = tl.zeros([BLOCK_G, BLOCK_N], dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        rows = g0 + tl.arange(0, BLOCK_G)
        mask = (rows < G)[:, None] & cmask[None, :]
        acc += tl.load(P + rows[:, None].to(tl.int64) * N + cols[None, :], mask=mask, other=0.0)
    tl.store(OUT + cols, tl.sum(acc, axis=0).to(OUT.dtype.element_ty), mask=cmask)


def sum_rows(partials: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``partials.sum(0)`` (float32 accumulation) cast to ``dtype``; partials is (G, N) contiguous."""
    g, n = partials.shape
    out = torch.empty(n, dtype=dtype, device=partials.device)
    block_n = 32
    with on_device(partials):
        _sum_rows_kernel[(triton.cdiv(n, block_n),)](partials, out, g, n, BLOCK_G=64,
                                                      BLOCK_N=block_n, num_warps=4)
    return out
