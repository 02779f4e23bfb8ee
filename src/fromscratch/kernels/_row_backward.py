r"""The backward of a row norm, LayerNorm's or RMSNorm's: one kernel, ``CENTRE`` tells which.

With xhat the normalised input, g = dy * w and N the row length:

    LayerNorm (CENTRE):  xhat = (x - mu) r     dx = r (g - mean(g) - xhat mean(g xhat))
    RMSNorm:             xhat = x r            dx = r (g - xhat mean(g xhat))
    both:                dw = sum_rows(dy xhat)      LayerNorm: db = sum_rows(dy)
    HAS_DRES:            dx += ds  (the gradient that reached a fused residual sum directly)

(the derivations are the ``ops`` modules' docstrings). LayerNorm's xhat is rebuilt from the
saved, rounded mu as ``ops`` does: xhat = (x - mu) r - mean((x - mu) r), the second term
taking mu's rounding error out again (0 in exact arithmetic; one more row sum of values
already in registers). Rows up to ``max_fused`` long are held
in registers by a persistent grid: G programs, as many as fit on the GPU at once, program p
taking the row tiles p, p + G, p + 2G, ...; each recomputes xhat from x and the saved per-row
statistics, writes dx, and adds its share of dw (and db) into float32 accumulators of length
N. The accumulators take many registers, so few programs fit on a multiprocessor; to keep
memory busy anyway, with ``PREFETCH`` each program loads the next tile into registers before
working on the current one, and with ``STAGES`` > 1 the compiler's software pipeliner stages
the next tiles through shared memory (the tuner picks one on the card). At the end each
program writes its partial dw/db row, and ``_reduce.sum_rows`` adds the G partial rows.
Traffic: read x and dy (and ds), write dx, the minimum. Wider rows go to a looped kernel that
walks each row twice (the means, then dx).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import _fast_path, _tune
from ._fast_path import RecordedLaunch, Replayable
from ._common import (interleaved_grid, next_pow2, note_resident, num_sms, on_device,
                      partials, persistent_grid, resident_programs, row_bwd_configs,
                      unit_last_stride, vector)
from ._reduce import sum_rows


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
def _bwd_kernel(X, DY, DS, DX, W, MEAN, RSTD, DW_PART, DB_PART, M, N, stride_x, stride_dy,
                stride_ds, stride_dx,
                CENTRE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                HAS_DRES: tl.constexpr, PREFETCH: tl.constexpr, STAGES: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
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
        if HAS_DRES:          # issued with x and dy, before the arithmetic that needs them
            ds = tl.load(DS + rows[:, None] * stride_ds + cols[None, :], mask=mask, other=0.0,
                         eviction_policy="evict_first")
        # padding holds x = dy = w = 0, so its xhat (finite) meets g = 0 and dy = 0 below
        if CENTRE:
            x = x.to(tl.float32)
            dy = dy.to(tl.float32)
            mean = tl.load(MEAN + rows, mask=rmask, other=0.0)
            rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
            xhat = tl.where(cmask[None, :], (x - mean[:, None]) * rstd[:, None], 0.0)
            xhat -= (tl.sum(xhat, axis=1) / N)[:, None]  # less mean(xhat): mu's rounding
        else:
            rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
            xhat = x.to(tl.float32) * rstd[:, None]
            dy = dy.to(tl.float32)
        if HAS_W:
            g = dy * w[None, :]
        else:
            g = dy
        c1 = tl.sum(xhat * g, axis=1) / N                # mean(g * xhat)
        if CENTRE:
            c2 = tl.sum(g, axis=1) / N                   # mean(g)
            dx = (g - c2[:, None] - xhat * c1[:, None]) * rstd[:, None]
        else:
            dx = (g - xhat * c1[:, None]) * rstd[:, None]
        if HAS_DRES:
            dx += ds.to(tl.float32)
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
def _chunk(X, DY, W, row, cols, cmask, mean, rstd, stride_x, stride_dy,
           CENTRE: tl.constexpr, HAS_W: tl.constexpr):
    """One chunk of a wide row, float32: (xhat, dy, g = dy * w)."""
    x = tl.load(X + row * stride_x + cols, mask=cmask, other=0.0).to(tl.float32)
    dy = tl.load(DY + row * stride_dy + cols, mask=cmask, other=0.0).to(tl.float32)
    if CENTRE:
        xhat = tl.where(cmask, (x - mean) * rstd, 0.0)
    else:
        xhat = x * rstd
    if HAS_W:
        g = dy * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        g = dy
    return xhat, dy, g


@triton.jit
def _bwd_looped_kernel(X, DY, DS, DX, W, MEAN, RSTD, DW_PART, DB_PART, M, N, stride_x,
                       stride_dy, stride_ds, stride_dx, rows_per_program,
                       CENTRE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                       HAS_DRES: tl.constexpr, BLOCK_N: tl.constexpr):
    # Rows too wide for registers: two passes over each row (the means, then dx), and the
    # dw/db partials of this program accumulate in its own row of DW_PART/DB_PART, which
    # the host zeroed; no other program touches that row.
    pid = tl.program_id(0).to(tl.int64)
    start = pid * rows_per_program
    end = tl.minimum(start + rows_per_program, M)
    for r in range(start, end):
        # int64 (the bounds are, but the interpreter hands the index over as a Python int,
        # which would then meet the strides as an int32)
        row = tl.cast(r, tl.int64)
        rstd = tl.load(RSTD + row)
        mean = tl.load(MEAN + row) if CENTRE else rstd          # unused without CENTRE
        a1 = tl.zeros([BLOCK_N], dtype=tl.float32)
        a2 = tl.zeros([BLOCK_N], dtype=tl.float32)
        a3 = tl.zeros([BLOCK_N], dtype=tl.float32)
        for off in range(0, N, BLOCK_N):
            cols = off + tl.arange(0, BLOCK_N)
            xhat, _, g = _chunk(X, DY, W, row, cols, cols < N, mean, rstd, stride_x, stride_dy,
                                CENTRE, HAS_W)
            a1 += xhat * g
            if CENTRE:
                a2 += g
                a3 += xhat
        c2 = tl.sum(a2, axis=0) / N                      # mean(g), LayerNorm only
        # LayerNorm: xhat less its mean m (mu's rounding error), mean(g (xhat - m))
        m = tl.sum(a3, axis=0) / N
        c1 = tl.sum(a1, axis=0) / N - m * c2             # mean(g * xhat)
        for off in range(0, N, BLOCK_N):
            cols = off + tl.arange(0, BLOCK_N)
            cmask = cols < N
            xhat, dy, g = _chunk(X, DY, W, row, cols, cmask, mean, rstd, stride_x, stride_dy,
                                 CENTRE, HAS_W)
            if CENTRE:
                xhat = tl.where(cmask, xhat - m, 0.0)
                dx = (g - c2 - xhat * c1) * rstd
            else:
                dx = (g - xhat * c1) * rstd
            if HAS_DRES:
                dx += tl.load(DS + row * stride_ds + cols, mask=cmask, other=0.0).to(tl.float32)
            tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=cmask)
            if HAS_W:
                p = DW_PART + pid * N + cols
                tl.store(p, tl.load(p, mask=cmask, other=0.0) + dy * xhat, mask=cmask)
            if HAS_B:
                p = DB_PART + pid * N + cols
                tl.store(p, tl.load(p, mask=cmask, other=0.0) + dy, mask=cmask)


# Replay (see ``_fast_path``): the forward calls ``prepare``; a backward of a geometry seen
# twice replays its two launches, ``_bwd_kernel`` and ``_sum_rows_kernel``.

class BackwardRecording(NamedTuple):
    """A row norm's backward, recorded, and the sizes its replay allocates."""
    rows_kernel: RecordedLaunch            # _bwd_kernel: its grid, variant, constexprs
    sum_rows: RecordedLaunch | None        # _sum_rows_kernel, None without weight and bias
    db_offset: int                         # the float32 partials of dw, then of db, in one
    partials_size: int                     # allocation: where db's start, and the total
    w_dtype: torch.dtype | None            # dweight's dtype, None without weight
    b_dtype: torch.dtype | None            # dbias's dtype, None without bias
    programs: int                          # G, the partial rows


def prepare(op: str, x: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor,
            mean: torch.Tensor | None = None, has_bias: bool = False,
            bias_dtype: torch.dtype | None = None, has_ds: bool = False, *, max_fused: int
            ) -> Replayable | None:
    """Called by the forward with the tensors the backward will get: what lets the backward
    replay, or None where replay does not apply (rows wider than ``max_fused``, an empty x,
    and ``_fast_path.replayable``'s cases)."""
    m, n = x.shape
    if m == 0 or n > max_fused:
        return None
    signature = _fast_path.backward_signature(op, x, weight, has_bias, bias_dtype, has_ds)
    return _fast_path.backward_replayable(signature, x, weight, mean, rstd)


def _replay_backward(r: BackwardRecording, call: Replayable, dy: torch.Tensor,
                     ds: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``backward``'s result from its recording: allocate, then the two recorded launches
    with this call's addresses, in the kernels' argument order."""
    sig, at = call.signature, call.addresses
    m, n, stride_x = sig.rows, sig.cols, sig.row_stride
    dev = dy.device
    dx = torch.empty((m, n), dtype=sig.dtype, device=dev)
    parts = torch.empty(r.partials_size, dtype=torch.float32, device=dev)
    dw_p = parts.data_ptr()
    db_p = dw_p + 4 * r.db_offset                 # db_offset = padded_to_16_bytes(...)
    stream = _fast_path.current_stream(call.device)
    ds_at, stride_ds = (at.x, stride_x) if ds is None else (ds.data_ptr(), ds.stride(0))
    r.rows_kernel(stream, at.x, dy.data_ptr(), ds_at, dx.data_ptr(), at.weight, at.mean,
                  at.rstd, dw_p, db_p, m, n, stride_x, dy.stride(0), stride_ds, n)
    dw = None if r.w_dtype is None else torch.empty(n, dtype=r.w_dtype, device=dev)
    db = None if r.b_dtype is None else torch.empty(n, dtype=r.b_dtype, device=dev)
    if r.sum_rows is not None:           # (p, out, q, out_q, G, N) as in _reduce.sum_rows
        p, out = (dw_p, dw) if dw is not None else (db_p, db)
        q, out_q = (db_p, db) if dw is not None and db is not None else (p, out)
        r.sum_rows(stream, p, out.data_ptr(), q, out_q.data_ptr(), r.programs, n)
    return dx, dw, db


def backward(op: str, dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
             rstd: torch.Tensor, mean: torch.Tensor | None = None, has_bias: bool = False,
             bias_dtype: torch.dtype | None = None, ds: torch.Tensor | None = None, *,
             max_fused: int, loop_block: int, prepared: Replayable | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dweight, dbias) of ``op`` ("layer_norm" when ``mean`` is given, else "rms_norm")
    for x (M, N); dweight/dbias in the parameters' dtypes, None when absent. Rows longer than
    ``max_fused`` go to the looped kernel, which walks them ``loop_block`` at a time.
    ``prepared``: what ``prepare`` returned in the forward, for the replay."""
    found = None
    if prepared is not None and _fast_path.moved_by_hook(prepared, x, weight, mean, rstd):
        # the copies a hook handed over: their addresses
        prepared = prepare(op, x, weight, rstd, mean, has_bias, bias_dtype,
                           prepared.signature.has_ds, max_fused=max_fused)
    if prepared is not None:
        found = _fast_path.look_up(prepared, dy, ds)
        if found.recording is not None:
            return _replay_backward(found.recording, prepared, dy, ds)
    x, dy, weight = unit_last_stride(x), unit_last_stride(dy), vector(weight)
    m, n = x.shape
    centre, has_w, has_ds = mean is not None, weight is not None, ds is not None
    ds = unit_last_stride(ds) if has_ds else x
    dx = torch.empty((m, n), dtype=x.dtype, device=x.device)
    w = weight if has_w else x                       # placeholder pointers, never read
    mu = mean if centre else rstd
    db_dtype = bias_dtype or x.dtype
    if m == 0:
        # an empty batch: zero gradients, each its own tensor (grads that share one would
        # share it as .grad too)
        return (dx, torch.zeros(n, dtype=weight.dtype, device=x.device) if has_w else None,
                torch.zeros(n, dtype=db_dtype, device=x.device) if has_bias else None)
    flags = {"CENTRE": centre, "HAS_W": has_w, "HAS_B": has_bias, "HAS_DRES": has_ds}
    strides = (x.stride(0), dy.stride(0), ds.stride(0), dx.stride(0))
    sms = num_sms(x.device)
    recorder = None if found is None else found.recorder
    with on_device(x):
        if n > max_fused:
            g, rows = persistent_grid(m, 1, sms * 4)
            dw_p = torch.zeros((g, n) if has_w else (1,), dtype=torch.float32, device=x.device)
            db_p = torch.zeros((g, n) if has_bias else (1,), dtype=torch.float32,
                               device=x.device)
            _fast_path.launch(_bwd_looped_kernel, (g,), x, dy, ds, dx, w, mu, rstd, dw_p, db_p,
                              m, n, *strides, rows, BLOCK_N=min(next_pow2(n), loop_block),
                              num_warps=8, **flags)
        else:
            block_n = next_pow2(n)
            parts: dict[str, torch.Tensor] = {}

            def launch(cfg: tuple[int, int, int, bool, int], recorder: list | None = None
                       ) -> None:
                bm, warps, waves, prefetch, stages = cfg
                variant = (op, block_n, cfg, x.dtype, w.dtype, has_w, has_bias, has_ds)
                g = interleaved_grid(m, bm, sms * waves * resident_programs(variant))
                parts["dw"] = partials(parts.get("dw"), (g, n) if has_w else (1,), x.device)
                parts["db"] = partials(parts.get("db"), (g, n) if has_bias else (1,), x.device)
                k = _fast_path.launch(_bwd_kernel, (g,), x, dy, ds, dx, w, mu, rstd,
                                      parts["dw"], parts["db"], m, n, *strides,
                                      PREFETCH=prefetch, STAGES=stages, BLOCK_M=bm,
                                      BLOCK_N=block_n, num_warps=warps, num_stages=stages,
                                      recorder=recorder, **flags)
                note_resident(variant, k, warps, x.device)

            tune_key = (op + "_bwd", has_ds, n, x.dtype, w.dtype, _tune.rows_bucket(m))
            launch(_tune.choose(tune_key, row_bwd_configs(block_n), launch, x.device), recorder)
            dw_p, db_p = parts["dw"], parts["db"]
    if has_w and has_bias:
        dw, db = sum_rows(dw_p, weight.dtype, db_p, db_dtype, recorder=recorder)
    else:
        dw = sum_rows(dw_p, weight.dtype, recorder=recorder)[0] if has_w else None
        db = sum_rows(db_p, db_dtype, recorder=recorder)[0] if has_bias else None
    if recorder is not None:
        db_offset = _fast_path.padded_to_16_bytes(dw_p.numel())
        _fast_path.keep(found, 1 + (has_w or has_bias), lambda rows_kernel, sums=None:
                        BackwardRecording(rows_kernel, sums, db_offset,
                                          db_offset + db_p.numel(),
                                          weight.dtype if has_w else None,
                                          db_dtype if has_bias else None,
                                          (dw_p if has_w else db_p).shape[0]))
    return dx, dw, db
