r"""RMSNorm forward and backward in Triton, optionally fused with a residual add.
The maths is ``ops.rms_norm``'s:

    r = 1 / sqrt(mean(x^2) + eps)      xhat = x * r      y = w * xhat
    g = dy * w      dx = r * (g - xhat * mean(g * xhat))      dw = sum_rows(dy * xhat)

With a residual (``HAS_RES``), the forward first forms s = x + residual, rounds it to the
storage dtype, writes it out (the transformer block's new residual stream) and normalises
that rounded s, so the result equals ``rms_norm(x + residual)`` computed in two steps. Its
backward adds the gradient that reached s directly (``HAS_DRES``):

    ds = r * (g - shat * mean(g * shat)) + ds_direct,     dx = dresidual = ds

The layout of the work is LayerNorm's (see ``layer_norm.py``): forward rows in registers,
a looped kernel for rows wider than ``MAX_FUSED_FWD``; backward on a persistent grid with
float32 dw partials reduced by ``_reduce.sum_rows``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _tune
from ._common import (cdiv, interleaved_grid, next_pow2, note_resident, num_sms, on_device,
                      partials as _partials, persistent_grid, resident_programs,
                      row_bwd_configs, row_fwd_configs, unit_last_stride)
from ._reduce import sum_rows
from .layer_norm import _load_tile

MAX_FUSED_FWD = 16384
MAX_FUSED_BWD = 8192
LOOP_BLOCK = 4096


@triton.jit
def _fwd_kernel(X, R, S, Y, W, RSTD, M, N, stride_x, stride_r, stride_s, stride_y, eps,
                HAS_W: tl.constexpr, HAS_RES: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    mask = rmask[:, None] & cmask[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
        s = (x + r.to(tl.float32)).to(S.dtype.element_ty)   # the stored, rounded sum
        tl.store(S + rows[:, None] * stride_s + cols[None, :], s, mask=mask)
        x = s.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / N + eps)
    y = x * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit
def _load_sum(X, R, S, row, stride_x, stride_r, cols, cmask, HAS_RES: tl.constexpr):
    """x (or the rounded x + residual) for one chunk of a row, in float32."""
    x = tl.load(X + row * stride_x + cols, mask=cmask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(R + row * stride_r + cols, mask=cmask, other=0.0).to(tl.float32)
        x = (x + r).to(S.dtype.element_ty).to(tl.float32)
    return x


@triton.jit
def _fwd_looped_kernel(X, R, S, Y, W, RSTD, N, stride_x, stride_r, stride_s, stride_y, eps,
                       HAS_W: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for off in range(0, N, BLOCK_N):
        cols = off + tl.arange(0, BLOCK_N)
        x = _load_sum(X, R, S, row, stride_x, stride_r, cols, cols < N, HAS_RES)
        acc += x * x
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
    for off in range(0, N, BLOCK_N):
        cols = off + tl.arange(0, BLOCK_N)
        cmask = cols < N
        x = _load_sum(X, R, S, row, stride_x, stride_r, cols, cmask, HAS_RES)
        if HAS_RES:
            tl.store(S + row * stride_s + cols, x.to(S.dtype.element_ty), mask=cmask)
        y = x * rstd
        if HAS_W:
            y = y * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=cmask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _bwd_kernel(X, DY, DS, DX, W, RSTD, DW_PART, M, N, stride_x, stride_dy, stride_ds, stride_dx,
                HAS_W: tl.constexpr, HAS_DRES: tl.constexpr, PREFETCH: tl.constexpr,
                STAGES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # program p of G takes the tiles p, p + G, p + 2G, ... (see layer_norm._bwd_kernel)
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    num_tiles = tl.cdiv(M, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    if HAS_W:
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    if PREFETCH:
        x_next, dy_next = _load_tile(X, DY, pid * BLOCK_M, M, cols, cmask, stride_x,
                                     stride_dy, BLOCK_M)
    for t in tl.range(pid, num_tiles, G, num_stages=STAGES):
        rows = (t * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)    # t * BLOCK_M < M + G
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        if PREFETCH:          # issue the next tile's loads before this tile's arithmetic
            x, dy = x_next, dy_next
            x_next, dy_next = _load_tile(X, DY, (t + G) * BLOCK_M, M, cols, cmask, stride_x,
                                         stride_dy, BLOCK_M)
        else:
            x, dy = _load_tile(X, DY, t * BLOCK_M, M, cols, cmask, stride_x, stride_dy,
                               BLOCK_M)
        if HAS_DRES:          # issued with x and dy, before the arithmetic that needs them
            ds = tl.load(DS + rows[:, None] * stride_ds + cols[None, :], mask=mask, other=0.0,
                         eviction_policy="evict_first")
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        xhat = x.to(tl.float32) * rstd[:, None]
        dy = dy.to(tl.float32)
        if HAS_W:
            g = dy * w[None, :]
        else:
            g = dy
        c = tl.sum(xhat * g, axis=1) / N                 # mean(g * xhat)
        dx = (g - xhat * c[:, None]) * rstd[:, None]
        if HAS_DRES:
            dx += ds.to(tl.float32)
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty),
                 mask=mask, eviction_policy="evict_first")
        if HAS_W:
            dw_acc += tl.sum(dy * xhat, axis=0)
    if HAS_W:
        tl.store(DW_PART + pid.to(tl.int64) * N + cols, dw_acc, mask=cmask)


@triton.jit
def _bwd_looped_kernel(X, DY, DS, DX, W, RSTD, DW_PART, M, N, stride_x, stride_dy, stride_ds,
                       stride_dx, rows_per_program, HAS_W: tl.constexpr, HAS_DRES: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    # Two passes per row; this program's dw partial row (zeroed by the host) accumulates
    # in memory. See layer_norm._bwd_looped_kernel.
    pid = tl.program_id(0).to(tl.int64)
    start = pid * rows_per_program
    end = tl.minimum(start + rows_per_program, M)
    for row in range(start, end):
        rstd = tl.load(RSTD + row)
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for off in range(0, N, BLOCK_N):
            cols = off + tl.arange(0, BLOCK_N)
            cmask = cols < N
            xhat = tl.load(X + row * stride_x + cols, mask=cmask, other=0.0).to(tl.float32) * rstd
            g = tl.load(DY + row * stride_dy + cols, mask=cmask, other=0.0).to(tl.float32)
            if HAS_W:
                g = g * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
            acc += xhat * g
        c = tl.sum(acc, axis=0) / N
        for off in range(0, N, BLOCK_N):
            cols = off + tl.arange(0, BLOCK_N)
            cmask = cols < N
            xhat = tl.load(X + row * stride_x + cols, mask=cmask, other=0.0).to(tl.float32) * rstd
            dy = tl.load(DY + row * stride_dy + cols, mask=cmask, other=0.0).to(tl.float32)
            if HAS_W:
                g = dy * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
            else:
                g = dy
            dx = (g - xhat * c) * rstd
            if HAS_DRES:
                dx += tl.load(DS + row * stride_ds + cols, mask=cmask, other=0.0).to(tl.float32)
            tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=cmask)
            if HAS_W:
                p = DW_PART + pid * N + cols
                tl.store(p, tl.load(p, mask=cmask, other=0.0) + dy * xhat, mask=cmask)


def forward(x: torch.Tensor, weight: torch.Tensor | None, eps: float,
            residual: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x (M, N) -> (y, rstd (M,) float32, s); with ``residual``, s = x + residual (x's dtype)
    is what was normalised, else s is None."""
    x = unit_last_stride(x)
    m, n = x.shape
    has_res = residual is not None
    r = unit_last_stride(residual) if has_res else x
    s = torch.empty((m, n), dtype=x.dtype, device=x.device) if has_res else x
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x.device)
    if m == 0:
        return y, rstd, s if has_res else None
    w = weight if weight is not None else x
    flags = {"HAS_W": weight is not None, "HAS_RES": has_res}
    strides = (x.stride(0), r.stride(0), s.stride(0), y.stride(0))
    with on_device(x):
        if n > MAX_FUSED_FWD:
            _fwd_looped_kernel[(m,)](x, r, s, y, w, rstd, n, *strides, eps,
                                     BLOCK_N=min(next_pow2(n), LOOP_BLOCK), num_warps=8, **flags)
        else:
            block_n = next_pow2(n)

            def launch(cfg: tuple[int, int]) -> None:
                bm, warps = cfg
                _fwd_kernel[(cdiv(m, bm),)](x, r, s, y, w, rstd, m, n, *strides, eps,
                                                   BLOCK_M=bm, BLOCK_N=block_n,
                                                   num_warps=warps, **flags)

            key = ("rms_norm_fwd", has_res, n, x.dtype, w.dtype, _tune.rows_bucket(m))
            launch(_tune.choose(key, row_fwd_configs(block_n), launch, x.device))
    return y, rstd, s if has_res else None


def backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor,
             ds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dx, dweight). ``x`` is what was normalised (s for the fused residual form) and ``ds``,
    if given, the gradient that reached it directly; it is added to dx."""
    x = unit_last_stride(x)
    dy = unit_last_stride(dy)
    m, n = x.shape
    has_w, has_ds = weight is not None, ds is not None
    ds = unit_last_stride(ds) if has_ds else x
    dx = torch.empty((m, n), dtype=x.dtype, device=x.device)
    w = weight if has_w else x
    if m == 0:
        return dx, torch.zeros(n, dtype=weight.dtype, device=x.device) if has_w else None
    flags = {"HAS_W": has_w, "HAS_DRES": has_ds}
    strides = (x.stride(0), dy.stride(0), ds.stride(0), dx.stride(0))
    sms = num_sms(x.device)
    with on_device(x):
        if n > MAX_FUSED_BWD:
            g, rows = persistent_grid(m, 1, sms * 4)
            dw_p = torch.zeros((g, n) if has_w else (1,), dtype=torch.float32, device=x.device)
            _bwd_looped_kernel[(g,)](x, dy, ds, dx, w, rstd, dw_p, m, n, *strides, rows,
                                     BLOCK_N=min(next_pow2(n), LOOP_BLOCK), num_warps=8, **flags)
        else:
            block_n = next_pow2(n)
            parts: dict[str, torch.Tensor] = {}

            def launch(cfg: tuple[int, int, int, bool, int]) -> None:
                bm, warps, waves, prefetch, stages = cfg
                variant = ("rms_norm_bwd", block_n, cfg, x.dtype, w.dtype, has_w, has_ds)
                g = interleaved_grid(m, bm, sms * waves * resident_programs(variant))
                parts["dw"] = _partials(parts.get("dw"), (g, n) if has_w else (1,), x.device)
                k = _bwd_kernel[(g,)](x, dy, ds, dx, w, rstd, parts["dw"], m, n, *strides,
                                      PREFETCH=prefetch, STAGES=stages, BLOCK_M=bm,
                                      BLOCK_N=block_n, num_warps=warps, num_stages=stages,
                                      **flags)
                note_resident(variant, k, warps, x.device)

            key = ("rms_norm_bwd", has_ds, n, x.dtype, w.dtype, _tune.rows_bucket(m))
            launch(_tune.choose(key, row_bwd_configs(block_n), launch, x.device))
            dw_p = parts["dw"]
    return dx, sum_rows(dw_p, weight.dtype)[0] if has_w else None
