"""The last step of every column reduction: sum small (G, N) float32 buffers of per-program
partials over their rows, and cast once to the output dtype.

The backward kernels of the norms and BatchNorm give each program a block of rows and let
it accumulate its share of ``sum_rows(...)`` in float32 registers; they write one partial
row each, and this kernel adds the G rows up. G is a few hundred, so this reads a few
megabytes, against the gigabytes of the pass that produced them; but it runs after that
pass, alone on the GPU, so it must not be latency-bound: each program takes a narrow strip
of 16 columns and all G rows at once (one wave of loads), and one launch serves both
partial buffers of LayerNorm (dweight and dbias) or of BatchNorm (the two sums).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _fast_path
from ._common import cdiv, next_pow2, on_device


@triton.jit
def _sum_rows_kernel(P, OUT, Q, OUT_Q, G, N, HAS_Q: tl.constexpr,
                     BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    acc = tl.zeros([BLOCK_G, BLOCK_N], dtype=tl.float32)
    acc_q = tl.zeros([BLOCK_G, BLOCK_N], dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        rows = g0 + tl.arange(0, BLOCK_G)
        mask = (rows < G)[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * N + cols[None, :]
        acc += tl.load(P + offs, mask=mask, other=0.0)
        if HAS_Q:
            acc_q += tl.load(Q + offs, mask=mask, other=0.0)
    tl.store(OUT + cols, tl.sum(acc, axis=0).to(OUT.dtype.element_ty), mask=cmask)
    if HAS_Q:
        tl.store(OUT_Q + cols, tl.sum(acc_q, axis=0).to(OUT_Q.dtype.element_ty), mask=cmask)


def sum_rows(p: torch.Tensor, dtype: torch.dtype, q: torch.Tensor | None = None,
             dtype_q: torch.dtype | None = None, recorder: list | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(p.sum(0) as ``dtype``, q.sum(0) as ``dtype_q``), float32 accumulation; p and q are
    contiguous (G, N) float32 buffers of the same shape, q optional. The kernel's arguments
    are (p, out, q, out_q, G, N), with p and out passed again for q and out_q when there is
    no q (``recorder``: see ``_fast_path.launch``)."""
    g, n = p.shape
    out = torch.empty(n, dtype=dtype, device=p.device)
    out_q = torch.empty(n, dtype=dtype_q or dtype, device=p.device) if q is not None else None
    block_n = 16
    block_g = min(512, next_pow2(g))
    with on_device(p):
        _fast_path.launch(_sum_rows_kernel, (cdiv(n, block_n),),
            p, out, q if q is not None else p, out_q if out_q is not None else out, g, n,
            HAS_Q=q is not None, BLOCK_G=block_g, BLOCK_N=block_n,
            num_warps=8 if block_g >= 256 else 4, recorder=recorder)
    return out, out_q
