r"""LayerNorm forward and backward in Triton. The maths is ``ops.layer_norm``'s:

    mu = mean(x)     xc = x - mu     var = mean(xc^2)     r = 1 / sqrt(var + eps)
    xhat = xc * r    y = w * xhat + b

    g = dy * w       dx = r * (g - mean(g) - xhat * mean(g * xhat))
    dw = sum_rows(dy * xhat)          db = sum_rows(dy)

Forward: one program normalises BLOCK_M whole rows held in registers (two-pass mean and
variance, so mean-shifted rows keep their digits). It saves mean and r, 8 bytes a row, for
the backward. Rows longer than ``MAX_FUSED_FWD`` go to a looped kernel that walks the row
in chunks three times (sum, squared deviations, output).

Backward: a persistent grid, as many programs as fit on the GPU at once. Program p of G
takes the tiles of rows p, p + G, p + 2G, ...; for each it recomputes xhat from x, mu and
r, writes dx, and adds dy*xhat and dy into float32 accumulators of length N. The
accumulators take many registers, so few programs fit on a multiprocessor; to keep memory
busy anyway, with ``PREFETCH`` each program loads the next tile into registers before
working on the current one, and with ``STAGES`` > 1 the compiler's software pipeliner
stages the next tiles through shared memory (the tuner picks one on the card). At
the end each program writes its partial dw/db row, and ``_reduce.sum_rows`` adds the G
partial rows. Traffic: read x and dy, write dx, the minimum.
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

#: widest row kept whole in registers by the forward / backward kernels; wider rows loop.
MAX_FUSED_FWD = 16384
MAX_FUSED_BWD = 8192
#: chunk the looped kernels walk a wide row with.
LOOP_BLOCK = 4096


@triton.jit
def _fwd_kernel(X, Y, W, B, MEAN, RSTD, M, N, stride_x, stride_y, eps,
                HAS_W: tl.constexpr, HAS_B: tl.constexpr, EVEN_N: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    mask = rmask[:, None] & cmask[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    xc = x - mean[:, None]
    if not EVEN_N:                                       # padding must not count in var
        xc = tl.where(cmask[None, :], xc, 0.0)
    var = tl.sum(xc * xc, axis=1) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=rmask)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit
def _fwd_looped_kernel(X, Y, W, B, MEAN, RSTD, N, stride_x, stride_y, eps,
                       HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    y_row = Y + row * stride_y
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for off in range(0, N, BLOCK_N):
        cols = off + tl.arange(0, BLOCK_N)
        acc += tl.load(x_row + cols, mask=cols < N, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for off in range(0, N, BLOCK_N):
        cols = off + tl.arange(0, BLOCK_N)
        x = tl.load(x_row + cols, mask=cols < N, other=0.0).to(tl.float32)
        xc = tl.where(cols < N, x - mean, 0.0)
        acc += xc * xc
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
    for off in range(0, N, BLOCK_N):
        cols = off + tl.arange(0, BLOCK_N)
        cmask = cols < N
        x = tl.load(x_row + cols, mask=cmask, other=0.0).to(tl.float32)
        y = (x - mean) * rstd
        if HAS_W:
            y = y * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
        tl.store(y_row + cols, y.to(Y.dtype.element_ty), mask=cmask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _load_tile(X, DY, r0, end, cols, cmask, stride_x, stride_dy, BLOCK_M: tl.constexpr):
    """Rows r0 .. r0 + BLOCK_M (those below ``end``) of x and dy, in storage dtype. Both are
    read exactly once in the whole backward: ``evict_first`` keeps them from pushing the
    weights and the per-row statistics out of L2."""
    rows = (r0 + tl.arange(0, BLOCK_M)).to(tl.int64)
    mask = (rows < end)[:, None] & cmask[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0,
                eviction_policy="evict_first")
    dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0,
                 eviction_policy="evict_first")
    return x, dy


@triton.jit
def _bwd_kernel(X, DY, DX, W, MEAN, RSTD, DW_PART, DB_PART, M, N, stride_x, stride_dy,
                stride_dx,
                HAS_W: tl.constexpr, HAS_B: tl.constexpr, PREFETCH: tl.constexpr,
                STAGES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Program p of G takes the tiles of BLOCK_M rows p, p + G, p + 2G, ...: at any moment
    # the G programs read one contiguous window of rows, as an ordinary grid would (the
    # DRAM sees one stream, not G streams a fixed large stride apart).
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    num_tiles = tl.cdiv(M, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    if HAS_W:
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    if PREFETCH:
        x_next, dy_next = _load_tile(X, DY, pid * BLOCK_M, M, cols, cmask, stride_x,
                                     stride_dy, BLOCK_M)
    # STAGES > 1: the compiler's software pipeliner may stage the loads of later tiles
    # through shared memory (more bytes in flight without more registers)
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
        x = x.to(tl.float32)
        dy = dy.to(tl.float32)
        mean = tl.load(MEAN + rows, mask=rmask, other=0.0)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        # padding holds x = dy = w = 0, so its xhat (finite) meets g = 0 and dy = 0 below
        xhat = (x - mean[:, None]) * rstd[:, None]
        if HAS_W:
            g = dy * w[None, :]
        else:
            g = dy
        c1 = tl.sum(xhat * g, axis=1) / N                # mean(g * xhat)
        c2 = tl.sum(g, axis=1) / N                       # mean(g)
        dx = (g - c2[:, None] - xhat * c1[:, None]) * rstd[:, None]
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty),
                 mask=mask, eviction_policy="evict_first")
        if HAS_W:
            dw_acc += tl.sum(dy * xhat, axis=0)
        if HAS_B:
            db_acc += tl.sum(dy, axis=0)
    if HAS_W:
        tl.store(DW_PART + pid.to(tl.int64) * N + cols, dw_acc, mask=cmask)
    if HAS_B:
        tl.store(DB_PART + pid.to(tl.int64) * N + cols, db_acc, mask=cmask)


@triton.jit
def _bwd_looped_kernel(X, DY, DX, W, MEAN, RSTD, DW_PART, DB_PART, M, N, stride_x, stride_dy,
                       stride_dx, rows_per_program,
                       HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_N: tl.constexpr):
    # Rows too wide for registers: two passes over each row (the two means, then dx), and
    # the dw/db partials of this program accumulate in its own row of DW_PART/DB_PART,
    # which the host zeroed; no other program touches that row.
    pid = tl.program_id(0).to(tl.int64)
    start = pid * rows_per_program
    end = tl.minimum(start + rows_per_program, M)
    for row in range(start, end):
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        a1 = tl.zeros([BLOCK_N], dtype=tl.float32)
        a2 = tl.zeros([BLOCK_N], dtype=tl.float32)
        for off in range(0, N, BLOCK_N):
            cols = off + tl.arange(0, BLOCK_N)
            cmask = cols < N
            x = tl.load(X + row * stride_x + cols, mask=cmask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride_dy + cols, mask=cmask, other=0.0).to(tl.float32)
            xhat = tl.where(cmask, (x - mean) * rstd, 0.0)
            if HAS_W:
                dy = dy * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
            a1 += xhat * dy
            a2 += dy
        c1 = tl.sum(a1, axis=0) / N
        c2 = tl.sum(a2, axis=0) / N
        for off in range(0, N, BLOCK_N):
            cols = off + tl.arange(0, BLOCK_N)
            cmask = cols < N
            x = tl.load(X + row * stride_x + cols, mask=cmask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride_dy + cols, mask=cmask, other=0.0).to(tl.float32)
            xhat = tl.where(cmask, (x - mean) * rstd, 0.0)
            if HAS_W:
                g = dy * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
            else:
                g = dy
            dx = (g - c2 - xhat * c1) * rstd
            tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=cmask)
            if HAS_W:
                p = DW_PART + pid * N + cols
                tl.store(p, tl.load(p, mask=cmask, other=0.0) + dy * xhat, mask=cmask)
            if HAS_B:
                p = DB_PART + pid * N + cols
                tl.store(p, tl.load(p, mask=cmask, other=0.0) + dy, mask=cmask)


def forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
            eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (M, N) -> (y (M, N) in x's dtype, mean (M,) float32, rstd (M,) float32)."""
    x = unit_last_stride(x)
    m, n = x.shape
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    mean = torch.empty(m, dtype=torch.float32, device=x.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x.device)
    if m == 0:
        return y, mean, rstd
    w = weight if weight is not None else x                # placeholder pointer, never read
    b = bias if bias is not None else x
    flags = {"HAS_W": weight is not None, "HAS_B": bias is not None}
    with on_device(x):
        if n > MAX_FUSED_FWD:
            _fwd_looped_kernel[(m,)](x, y, w, b, mean, rstd, n, x.stride(0), y.stride(0), eps,
                                     BLOCK_N=min(next_pow2(n), LOOP_BLOCK), num_warps=8, **flags)
            return y, mean, rstd
        block_n = next_pow2(n)

        def launch(cfg: tuple[int, int]) -> None:
            bm, warps = cfg
            _fwd_kernel[(cdiv(m, bm),)](x, y, w, b, mean, rstd, m, n, x.stride(0),
                                               y.stride(0), eps, EVEN_N=n == block_n,
                                               BLOCK_M=bm, BLOCK_N=block_n, num_warps=warps,
                                               **flags)

        key = ("layer_norm_fwd", n, x.dtype, w.dtype, _tune.rows_bucket(m))
        launch(_tune.choose(key, row_fwd_configs(block_n), launch, x.device))
    return y, mean, rstd


def backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
             has_bias: bool, mean: torch.Tensor, rstd: torch.Tensor,
             bias_dtype: torch.dtype | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dweight, dbias); dweight/dbias in the parameters' dtypes, None when absent."""
    x = unit_last_stride(x)
    dy = unit_last_stride(dy)
    m, n = x.shape
    dx = torch.empty((m, n), dtype=x.dtype, device=x.device)
    has_w = weight is not None
    w = weight if has_w else x
    if m == 0:
        zeros = torch.zeros(n, dtype=torch.float32, device=x.device)
        return (dx, zeros.to(weight.dtype) if has_w else None,
                zeros.to(bias_dtype or x.dtype) if has_bias else None)
    flags = {"HAS_W": has_w, "HAS_B": has_bias}
    sms = num_sms(x.device)
    with on_device(x):
        if n > MAX_FUSED_BWD:
            g, rows = persistent_grid(m, 1, sms * 4)
            dw_p = torch.zeros((g, n) if has_w else (1,), dtype=torch.float32, device=x.device)
            db_p = torch.zeros((g, n) if has_bias else (1,), dtype=torch.float32, device=x.device)
            _bwd_looped_kernel[(g,)](x, dy, dx, w, mean, rstd, dw_p, db_p, m, n, x.stride(0),
                                     dy.stride(0), dx.stride(0), rows,
                                     BLOCK_N=min(next_pow2(n), LOOP_BLOCK), num_warps=8, **flags)
        else:
            block_n = next_pow2(n)
            parts: dict[str, torch.Tensor] = {}

            def launch(cfg: tuple[int, int, int, bool, int]) -> None:
                bm, warps, waves, prefetch, stages = cfg
                variant = ("layer_norm_bwd", block_n, cfg, x.dtype, w.dtype, has_w, has_bias)
                g = interleaved_grid(m, bm, sms * waves * resident_programs(variant))
                parts["dw"] = _partials(parts.get("dw"), (g, n) if has_w else (1,), x.device)
                parts["db"] = _partials(parts.get("db"), (g, n) if has_bias else (1,), x.device)
                k = _bwd_kernel[(g,)](x, dy, dx, w, mean, rstd, parts["dw"], parts["db"], m, n,
                                      x.stride(0), dy.stride(0), dx.stride(0),
                                      PREFETCH=prefetch, STAGES=stages, BLOCK_M=bm,
                                      BLOCK_N=block_n, num_warps=warps, num_stages=stages,
                                      **flags)
                note_resident(variant, k, warps, x.device)

            key = ("layer_norm_bwd", n, x.dtype, w.dtype, _tune.rows_bucket(m))
            launch(_tune.choose(key, row_bwd_configs(block_n), launch, x.device))
            dw_p, db_p = parts["dw"], parts["db"]
    if has_w and has_bias:
        dw, db = sum_rows(dw_p, weight.dtype, db_p, bias_dtype or x.dtype)
    else:
        dw = sum_rows(dw_p, weight.dtype)[0] if has_w else None
        db = sum_rows(db_p, bias_dtype or x.dtype)[0] if has_bias else None
    return dx, dw, db
