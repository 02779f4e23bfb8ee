r"""BatchNorm, channels-last, in Triton: x is (M, C), statistics per column. The maths is
``ops.batch_norm``'s:

    mu = mean(x)    var = mean((x - mu)^2)  (biased)    r = 1 / sqrt(var + eps)
    xhat = (x - mu) r       y = w xhat + b
    running <- (1 - momentum) running + momentum (mu, var * M / (M - 1))

    dx = w r (dy - sum(dy)/M - xhat sum(dy xhat)/M)     dw = sum(dy xhat)    db = sum(dy)

Statistics are a column reduction, the same shape of work as LayerNorm's dweight: a grid
of (row blocks) x (column blocks) programs; each walks its rows BLOCK_M at a time and keeps,
per register lane, a Welford running (count, mean, M2), which never subtracts two large
sums. At the end the BLOCK_M lanes are merged with Chan's formula

    n = sum n_i     mu = sum n_i mu_i / n     M2 = sum M2_i + sum n_i (mu_i - mu)^2

into one partial per (row block, column); ``_combine_kernel`` merges the row blocks the
same way, writes mu and r, and updates the running statistics in place. A third kernel
normalises. As in ``ops``, the statistics are those of x shifted by the batch's first row
K (each program loads it, C values): d = x - K, mu = K + mean(d), and the normalise kernel
computes x - mu as (x - K) - mean(d): exactly 0 on a constant channel, without mu's
rounding on a channel with a large mean. Where the squares overflow (|x| beyond 1.8e19), var
is inf and r NaN, never 0: scaling would need one more pass over the batch. The backward
uses the saved, rounded mu, as torch's kernel does. The backward is two passes too: the
column sums sum(dy) and sum(dy xhat) (partials, then ``_reduce.sum_rows``), then dx.

Memory traffic is therefore 3 MN elements forward (x twice, y once) and 5 MN backward,
8 MN in all, against 5 MN for a row norm: statistics over a batch larger than the cache
need a full pass before the first output can be written.

This file holds the kernels, their launchers ``forward`` and ``backward`` (from the third
call of a geometry on, the training forward and the backward replay their three launches
each: ``_fast_path``) and ``BatchNormFn``, the autograd Function over them.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

from . import _fast_path, _tune
from ._common import (cdiv, next_pow2, note_resident, num_sms, on_device, once_differentiable,
                      resident_programs, unit_last_stride, vector)
from ._fast_path import BackwardSignature, RecordedLaunch, Replayable
from ._reduce import sum_rows
from ._stats import inv_rms_or_nan


@triton.jit
def _tile(X, r0, end, cols, cmask, stride, BLOCK_M: tl.constexpr):
    """Rows r0 .. r0 + BLOCK_M (those below ``end``) of one column block, storage dtype."""
    rows = r0 + tl.arange(0, BLOCK_M)
    mask = (rows < end)[:, None] & cmask[None, :]
    return tl.load(X + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _stats_kernel(X, MEAN_P, M2_P, M, C, stride_x, rows_per_program,
                  PREFETCH: tl.constexpr, STAGES: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_C: tl.constexpr):
    pid_m = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    shift = tl.load(X + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]   # K = x[0]
    start = pid_m * rows_per_program
    end = tl.minimum(start + rows_per_program, M)
    n_full = (end - start) // BLOCK_M
    mean = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    # Full tiles: every lane has seen the same number k of rows, so 1/k is one scalar and no
    # lane needs masking. (Columns past C compute garbage that is never stored.)
    if PREFETCH:
        x_next = _tile(X, start, end, cols, cmask, stride_x, BLOCK_M)
    # STAGES > 1: Triton's software pipeliner may stage later tiles through shared memory
    for i in tl.range(0, n_full, num_stages=STAGES):
        if PREFETCH:                     # the next tile's loads overlap this tile's update
            x = x_next
            x_next = _tile(X, start + (i + 1) * BLOCK_M, end, cols, cmask, stride_x, BLOCK_M)
        else:
            x = _tile(X, start + i * BLOCK_M, end, cols, cmask, stride_x, BLOCK_M)
        x = x.to(tl.float32) - shift     # the statistics of d = x - K
        inv = 1.0 / (i + 1.0)
        d = x - mean                     # Welford: mean += d/k, M2 += d (x - mean_new)
        mean += d * inv
        m2 += d * (x - mean)
    # The last, partial tile: lanes past `end` keep their k rows.
    rows = start + n_full * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = rows < end
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :],
                mask=valid[:, None] & cmask[None, :], other=0.0).to(tl.float32) - shift
    cnt = n_full + valid.to(tl.float32)
    d = tl.where(valid[:, None], x - mean, 0.0)
    mean += d / tl.maximum(cnt, 1.0)[:, None]
    m2 += d * (x - mean)
    n = tl.sum(cnt, axis=0)                              # Chan: merge the BLOCK_M lanes
    mu = tl.sum(cnt[:, None] * mean, axis=0) / n
    dm = mean - mu[None, :]
    m2_all = tl.sum(m2, axis=0) + tl.sum(cnt[:, None] * dm * dm, axis=0)
    tl.store(MEAN_P + pid_m * C + cols, mu, mask=cmask)
    tl.store(M2_P + pid_m * C + cols, m2_all, mask=cmask)


@triton.jit
def _partial_rows(p0, P, M, C, rows_per_program, cols, cmask, BLOCK_P: tl.constexpr):
    """Rows p0 .. p0 + BLOCK_P of the (P, C) partial buffers, at ``cols``: their offsets and
    mask, and n_i, the rows of x that block i counted (float32, (BLOCK_P, 1); 0 past P)."""
    ps = p0 + tl.arange(0, BLOCK_P)
    mask = (ps < P)[:, None] & cmask[None, :]
    n_i = tl.minimum(tl.maximum(M - ps.to(tl.int64) * rows_per_program, 0), rows_per_program)
    offs = ps[:, None].to(tl.int64) * C + cols[None, :]
    return offs, mask, n_i.to(tl.float32)[:, None]


@triton.jit
def _combine_kernel(X, MEAN_P, M2_P, P, M, rows_per_program, MEAN_D, MEAN, VAR, RSTD, RUN_MEAN,
                    RUN_VAR, C, inv_m, unbias, momentum, eps, HAS_RUNNING: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        offs, mask, n_i = _partial_rows(p0, P, M, C, rows_per_program, cols, cmask, BLOCK_P)
        acc += n_i * tl.load(MEAN_P + offs, mask=mask, other=0.0)
    mu = tl.sum(acc, axis=0) * inv_m                     # mean(d), d = x - K
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        offs, mask, n_i = _partial_rows(p0, P, M, C, rows_per_program, cols, cmask, BLOCK_P)
        d = tl.load(MEAN_P + offs, mask=mask, other=0.0) - mu[None, :]
        acc += tl.load(M2_P + offs, mask=mask, other=0.0) + n_i * d * d
    var = tl.sum(acc, axis=0) * inv_m
    tl.store(MEAN_D + cols, mu, mask=cmask)
    mu += tl.load(X + cols, mask=cmask, other=0.0).to(tl.float32)   # mu = K + mean(d)
    tl.store(MEAN + cols, mu, mask=cmask)
    tl.store(VAR + cols, var, mask=cmask)
    tl.store(RSTD + cols, inv_rms_or_nan(var, eps), mask=cmask)   # NaN, never 0, on overflow
    if HAS_RUNNING:
        rm = tl.load(RUN_MEAN + cols, mask=cmask, other=0.0).to(tl.float32)
        rv = tl.load(RUN_VAR + cols, mask=cmask, other=0.0).to(tl.float32)
        rm = (1.0 - momentum) * rm + momentum * mu
        rv = (1.0 - momentum) * rv + momentum * (var * unbias)   # stored variance is unbiased
        tl.store(RUN_MEAN + cols, rm.to(RUN_MEAN.dtype.element_ty), mask=cmask)
        tl.store(RUN_VAR + cols, rv.to(RUN_VAR.dtype.element_ty), mask=cmask)


@triton.jit
def _block(M, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """The block of an element-wise kernel's program (i, j): rows i BLOCK_M ... (int64),
    columns j BLOCK_C ..., the columns' mask and the block's."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    return rows, cols, cmask, (rows < M)[:, None] & cmask[None, :]


@triton.jit
def _scale(RSTD, W, cols, cmask, HAS_W: tl.constexpr):
    """r w per column, float32 (r without a weight): what multiplies x - mu in y, dy in dx."""
    scale = tl.load(RSTD + cols, mask=cmask, other=0.0)
    if HAS_W:
        scale = scale * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    return scale


@triton.jit
def _normalize_kernel(X, Y, MEAN, RSTD, W, B, M, C, stride_x, stride_y,
                      HAS_W: tl.constexpr, HAS_B: tl.constexpr, SHIFTED: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    # SHIFTED (batch statistics): MEAN holds mean(d), d = x - K, and x - mu = d - mean(d)
    rows, cols, cmask, mask = _block(M, C, BLOCK_M, BLOCK_C)
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    mean = tl.load(MEAN + cols, mask=cmask, other=0.0)
    scale = _scale(RSTD, W, cols, cmask, HAS_W)
    # (x - mu) * (r w), not x * (r w) - mu r w: the latter cancels on mean-shifted columns
    x = x.to(tl.float32)
    if SHIFTED:
        x -= tl.load(X + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]   # d = x - K
    y = (x - mean[None, :]) * scale[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_sums_kernel(X, DY, MEAN, RSTD, SDY_P, SDYX_P, M, C, stride_x, stride_dy,
                     rows_per_program, PREFETCH: tl.constexpr, STAGES: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_m = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mean = tl.load(MEAN + cols, mask=cmask, other=0.0)
    rstd = tl.load(RSTD + cols, mask=cmask, other=0.0)
    start = pid_m * rows_per_program
    end = tl.minimum(start + rows_per_program, M)
    sdy = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    sdyx = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    if PREFETCH:
        x_next = _tile(X, start, end, cols, cmask, stride_x, BLOCK_M)
        dy_next = _tile(DY, start, end, cols, cmask, stride_dy, BLOCK_M)
    for r0 in tl.range(start, end, BLOCK_M, num_stages=STAGES):
        if PREFETCH:
            x, dy = x_next, dy_next
            x_next = _tile(X, r0 + BLOCK_M, end, cols, cmask, stride_x, BLOCK_M)
            dy_next = _tile(DY, r0 + BLOCK_M, end, cols, cmask, stride_dy, BLOCK_M)
        else:
            x = _tile(X, r0, end, cols, cmask, stride_x, BLOCK_M)
            dy = _tile(DY, r0, end, cols, cmask, stride_dy, BLOCK_M)
        dy = dy.to(tl.float32)
        xhat = (x.to(tl.float32) - mean[None, :]) * rstd[None, :]
        sdy += dy
        sdyx += dy * xhat                                # masked dy is 0: padding adds nothing
    tl.store(SDY_P + pid_m * C + cols, tl.sum(sdy, axis=0), mask=cmask)
    tl.store(SDYX_P + pid_m * C + cols, tl.sum(sdyx, axis=0), mask=cmask)


@triton.jit
def _dx_kernel(X, DY, DX, MEAN, RSTD, W, SDY, SDYX, M, C, stride_x, stride_dy, stride_dx, inv_m,
               HAS_W: tl.constexpr, BATCH_STATS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows, cols, cmask, mask = _block(M, C, BLOCK_M, BLOCK_C)
    dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0)
    dy = dy.to(tl.float32)
    scale = _scale(RSTD, W, cols, cmask, HAS_W)
    if BATCH_STATS:
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
        mean = tl.load(MEAN + cols, mask=cmask, other=0.0)
        rstd = tl.load(RSTD + cols, mask=cmask, other=0.0)
        xhat = (x.to(tl.float32) - mean[None, :]) * rstd[None, :]
        a = tl.load(SDY + cols, mask=cmask, other=0.0) * inv_m
        c = tl.load(SDYX + cols, mask=cmask, other=0.0) * inv_m
        dx = (dy - a[None, :] - xhat * c[None, :]) * scale[None, :]
    else:                                                # fixed statistics: dx = w r dy
        dx = dy * scale[None, :]
    tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)


# Launch configurations; the first of each list is the default, the tuner may pick another.
# (BLOCK_M, BLOCK_C, num_warps, waves, prefetch, stages) for the column reductions: tiles
# of 16 x 256 with 8 warps compile (sm_90) to 60-100 registers, 2-4 programs per
# multiprocessor; the grid holds ``waves`` times as many programs as fit at once
# (measured from the compiled kernel, see _common.note_resident). So few programs keep too
# few loads in flight; ``prefetch`` (registers) or ``stages`` > 1 (the software pipeliner,
# through shared memory) keep more, and the tuner compares them on the card.
@functools.lru_cache(maxsize=None)
def _reduce_configs(c: int) -> tuple[tuple[int, int, int, int, bool, int], ...]:
    bc = min(256, next_pow2(c))
    bm = max(1, 4096 // bc)
    cands = [(bm, bc, 8, 1, True, 1), (bm, bc, 8, 1, False, 1), (bm, bc, 4, 1, False, 1),
             (bm, max(16, bc // 2), 4, 1, False, 1), (bm, bc, 8, 2, True, 1),
             (bm, bc, 8, 1, False, 3), (bm, bc, 4, 1, False, 3)]
    return tuple(dict.fromkeys(cands))


# (BLOCK_M, BLOCK_C, num_warps) for the element-wise normalise and dx kernels.
@functools.lru_cache(maxsize=None)
def _elementwise_configs(c: int) -> tuple[tuple[int, int, int], ...]:
    bc = min(256, next_pow2(c))
    bm = max(1, 4096 // bc)
    return tuple(dict.fromkeys([(bm, bc, 4), (bm, bc, 8), (2 * bm, bc, 8)]))


def _row_split(m: int, c: int, cfg: tuple, programs: int) -> tuple[int, int]:
    """(row blocks P, rows per block) so that P x column-blocks is at most ``programs``."""
    bm, bc = cfg[:2]
    col_blocks = cdiv(c, bc)
    p = max(1, min(cdiv(m, bm), programs // col_blocks))
    rows = cdiv(cdiv(m, p), bm) * bm
    return cdiv(m, rows), rows


def _normalize(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
               weight: torch.Tensor | None, bias: torch.Tensor | None,
               recorder: list | None = None, shifted: bool = False) -> torch.Tensor:
    """y = (x - mu) r w + b; ``shifted``: ``mean`` is mean(x - K), K the first row."""
    m, c = x.shape
    y = torch.empty((m, c), dtype=x.dtype, device=x.device)

    def launch(cfg: tuple[int, int, int], recorder: list | None = None) -> None:
        bm, bc, warps = cfg
        _fast_path.launch(_normalize_kernel, (cdiv(m, bm), cdiv(c, bc)),
            x, y, mean, rstd, weight if weight is not None else x,
            bias if bias is not None else x, m, c, x.stride(0), y.stride(0),
            HAS_W=weight is not None, HAS_B=bias is not None, SHIFTED=shifted, BLOCK_M=bm,
            BLOCK_C=bc, num_warps=warps, recorder=recorder)

    key = ("batch_norm_normalize", c, x.dtype, _tune.rows_bucket(m))
    launch(_tune.choose(key, _elementwise_configs(c), launch, x.device), recorder)
    return y


def _column_partials(kernel: Any, name: str, x: torch.Tensor, inputs: tuple, strides: tuple,
                     recorder: list | None) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Launch a column reduction, ``_stats_kernel`` or ``_bwd_sums_kernel``, over x (M, C) in
    its tuned configuration (``name`` keys the tuning and the occupancy): P blocks of rows
    by the column blocks, each program writing the partials of its block into row p of two
    (P, C) float32 buffers. Returns both buffers, P and the rows per block. The kernel's
    arguments: ``inputs``, the two buffers, M, C, ``strides``, the rows per block."""
    m, c = x.shape
    sms = num_sms(x.device)
    launched: list[Any] = []

    def launch(cfg: tuple[int, int, int, int, bool, int], recorder: list | None = None) -> None:
        bm, bc, warps, waves, prefetch, stages = cfg
        variant = (name, cfg, x.dtype)
        p, rows = _row_split(m, c, cfg, sms * waves * resident_programs(variant))
        first, second = (torch.empty((p, c), dtype=torch.float32, device=x.device)
                         for _ in range(2))
        launched[:] = first, second, p, rows
        k = _fast_path.launch(kernel, (p, cdiv(c, bc)), *inputs, first, second, m, c,
                              *strides, rows, PREFETCH=prefetch, STAGES=stages, BLOCK_M=bm,
                              BLOCK_C=bc, num_warps=warps, num_stages=stages,
                              recorder=recorder)
        note_resident(variant, k, warps, x.device)

    launch(_tune.choose((name, c, x.dtype, _tune.rows_bucket(m)), _reduce_configs(c), launch,
                        x.device), recorder)
    first, second, p, rows = launched
    return first, second, p, rows


class ColumnReduction(NamedTuple):
    """A column reduction (``_column_partials``), recorded: its launch and its row split."""
    launch: RecordedLaunch                 # _stats_kernel or _bwd_sums_kernel
    programs: int                          # P, rows of the partial buffers
    rows_per_program: int                  # rows of x per program


class TrainingForwardRecording(NamedTuple):
    """BatchNorm's training forward, recorded (see ``_fast_path``)."""
    stats: ColumnReduction                 # _stats_kernel
    combine: RecordedLaunch                # _combine_kernel
    normalize: RecordedLaunch              # _normalize_kernel
    backward: BackwardSignature            # what its backward's recording is keyed on


def _training_forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                      eps: float, running_mean: torch.Tensor | None,
                      running_var: torch.Tensor | None, momentum: float,
                      found: _fast_path.Lookup | None) -> tuple[torch.Tensor, ...]:
    """``forward`` in training, its three launches (statistics, combine, normalise) issued
    one by one, and recorded when ``found`` says this call is the one to record."""
    m, c = x.shape
    recorder = None if found is None else found.recorder
    # (mean, M2) of d = x - K in each block of rows
    mean_p, m2_p, p, rows = _column_partials(_stats_kernel, "batch_norm_stats", x, (x,),
                                             (x.stride(0),), recorder)
    mean_d, mean, var, rstd = (torch.empty(c, dtype=torch.float32, device=x.device)
                               for _ in range(4))
    # the combine kernel updates the buffers in place: a strided one is updated through a
    # contiguous copy, written back below
    has_running = running_mean is not None and running_var is not None
    rm, rv = (vector(running_mean), vector(running_var)) if has_running else (None, None)
    block_c = 64
    _fast_path.launch(_combine_kernel, (cdiv(c, block_c),),
        x, mean_p, m2_p, p, m, rows, mean_d, mean, var, rstd,
        rm if has_running else mean, rv if has_running else var,
        c, 1.0 / m, m / (m - 1) if m > 1 else 1.0, float(momentum), float(eps),
        HAS_RUNNING=has_running, BLOCK_P=32, BLOCK_C=block_c, num_warps=4, recorder=recorder)
    for buf, copy in ((running_mean, rm), (running_var, rv)):
        if copy is not buf:
            buf.copy_(copy)
    y = _normalize(x, mean_d, rstd, weight, bias, recorder, shifted=True)
    if recorder is not None:
        _fast_path.keep(found, 3, lambda stats, combine, normalize: TrainingForwardRecording(
            ColumnReduction(stats, p, rows), combine, normalize, _fast_path.backward_signature(
                "batch_norm", x, weight, bias is not None,
                None if bias is None else bias.dtype, batch_stats=True)))
    return y, mean, var, rstd


def _replay_training_forward(r: TrainingForwardRecording, call: Replayable, x: torch.Tensor,
                             has_running: bool, momentum: float, eps: float, prepare: bool
                             ) -> tuple[Any, ...]:
    """``forward``'s result in training from its recording, the kernels' arguments in order;
    with ``prepare``, what lets the backward replay (as ``prepare_backward`` would say)."""
    m, c = x.shape
    stride_x, device = x.stride(0), x.device
    x_at, w_at, b_at, rm_at, rv_at = call.addresses
    stats, p, rows = r.stats
    half = _fast_path.padded_to_16_bytes(p * c)
    parts = torch.empty(2 * half, dtype=torch.float32, device=device)   # mean and M2 partials
    mean_p = parts.data_ptr()
    m2_p = mean_p + 4 * half
    mean_d, mean, var, rstd = (torch.empty(c, dtype=torch.float32, device=device)
                               for _ in range(4))             # each 16-byte aligned
    y = torch.empty((m, c), dtype=x.dtype, device=device)
    stream = _fast_path.current_stream(call.device)
    stats(stream, x_at, mean_p, m2_p, m, c, stride_x, rows)
    mean_d_at, mean_at = mean_d.data_ptr(), mean.data_ptr()
    var_at, rstd_at = var.data_ptr(), rstd.data_ptr()
    r.combine(stream, x_at, mean_p, m2_p, p, m, rows, mean_d_at, mean_at, var_at, rstd_at,
              rm_at if has_running else mean_at, rv_at if has_running else var_at, c, 1.0 / m,
              m / (m - 1) if m > 1 else 1.0, float(momentum), float(eps))
    r.normalize(stream, x_at, y.data_ptr(), mean_d_at, rstd_at, w_at, b_at, m, c, stride_x, c)
    return y, mean, var, rstd, (_fast_path.backward_replayable_at(
        r.backward, call.device, x_at, w_at, mean_at, rstd_at) if prepare else None)


def forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
            eps: float, training: bool, running_mean: torch.Tensor | None = None,
            running_var: torch.Tensor | None = None, momentum: float = 0.1,
            prepare: bool = False) -> tuple[Any, ...]:
    """x (M, C) -> (y, mean, var, rstd, prepared), statistics float32 (C,).

    Training: batch statistics; the running buffers, when given, are updated in place.
    Otherwise: the running statistics normalise (both must be given). With ``prepare``,
    ``prepared`` is what lets ``backward`` replay its launches (``prepare_backward``'s
    result, made from what a replayed forward holds), else None."""
    m, c = x.shape
    if m == 0 and training:                    # an empty batch: empty output, buffers unchanged
        nan = torch.full((c,), float("nan"), dtype=torch.float32, device=x.device)
        return torch.empty_like(x), nan, nan, nan, None
    has_running = running_mean is not None and running_var is not None
    found = None
    if training and m > 0:    # replay (see _fast_path): only for unit last strides, so no copies
        rm, rv = (running_mean, running_var) if has_running else (x, x)
        w = weight if weight is not None else x
        b = bias if bias is not None else x
        call = _fast_path.replayable(("batch_norm_fwd", m, c, x.stride(0), x.dtype, w.dtype,
                                      b.dtype, rm.dtype, rv.dtype, weight is None, bias is None,
                                      has_running), x, w, b, rm, rv)
        if call is not None:
            found = _fast_path.look_up(call)
            if found.recording is not None:
                return _replay_training_forward(found.recording, call, x, has_running,
                                                momentum, eps, prepare)
    raw_x, raw_weight = x, weight                     # what the autograd Function saves
    x, weight, bias = unit_last_stride(x), vector(weight), vector(bias)
    with on_device(x):
        if training:
            y, mean, var, rstd = _training_forward(x, weight, bias, eps, running_mean,
                                                   running_var, momentum, found)
        else:
            mean = vector(running_mean.float())
            var = vector(running_var.float())
            rstd = torch.rsqrt(var + eps)
            y = _normalize(x, mean, rstd, weight, bias)
    return y, mean, var, rstd, (prepare_backward(
        raw_x, raw_weight, bias is not None, mean, rstd, training,
        None if bias is None else bias.dtype) if prepare else None)


def prepare_backward(x: torch.Tensor, weight: torch.Tensor | None, has_bias: bool,
                     mean: torch.Tensor, rstd: torch.Tensor, batch_stats: bool,
                     bias_dtype: torch.dtype | None = None) -> Replayable | None:
    """In the forward: what lets ``backward`` replay its launches, or None where it does not
    apply (an empty x, ``_fast_path.replayable``'s cases)."""
    if x.shape[0] == 0:
        return None
    signature = _fast_path.backward_signature("batch_norm", x, weight, has_bias, bias_dtype,
                                              batch_stats=batch_stats)
    return _fast_path.backward_replayable(signature, x, weight, mean, rstd)


class BackwardRecording(NamedTuple):
    """BatchNorm's backward, recorded (see ``_fast_path``)."""
    sums: ColumnReduction                  # _bwd_sums_kernel
    sum_rows: RecordedLaunch               # _sum_rows_kernel
    dx: RecordedLaunch                     # _dx_kernel


def _replay_backward(r: BackwardRecording, call: Replayable, dy: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``backward``'s result from its recording, the kernels' arguments in their order."""
    sig, at = call.signature, call.addresses
    m, c, stride_x = sig.rows, sig.cols, sig.row_stride
    dev = dy.device
    dx = torch.empty((m, c), dtype=sig.dtype, device=dev)
    sums, p, rows = r.sums
    half = _fast_path.padded_to_16_bytes(p * c)
    parts = torch.empty(2 * half, dtype=torch.float32, device=dev)   # sum(dy), sum(dy xhat)
    sdy_p = parts.data_ptr()
    sdyx_p = sdy_p + 4 * half
    sdy = torch.empty(c, dtype=torch.float32, device=dev)
    sdyx = torch.empty(c, dtype=torch.float32, device=dev)
    stream = _fast_path.current_stream(call.device)
    dy_at, stride_dy = dy.data_ptr(), dy.stride(0)
    sums(stream, at.x, dy_at, at.mean, at.rstd, sdy_p, sdyx_p, m, c, stride_x, stride_dy, rows)
    r.sum_rows(stream, sdy_p, sdy.data_ptr(), sdyx_p, sdyx.data_ptr(), p, c)
    r.dx(stream, at.x, dy_at, dx.data_ptr(), at.mean, at.rstd, at.weight, sdy.data_ptr(),
         sdyx.data_ptr(), m, c, stride_x, stride_dy, c, 1.0 / m)
    return (dx, None if sig.weight_dtype is None else sdyx.to(sig.weight_dtype),
            sdy.to(sig.bias_dtype) if sig.has_bias else None)


def backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, has_bias: bool,
             mean: torch.Tensor, rstd: torch.Tensor, batch_stats: bool,
             bias_dtype: torch.dtype | None = None, prepared: Replayable | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dweight, dbias) for x (M, C); ``batch_stats`` False means mean/rstd were constants.
    ``prepared``: what ``prepare_backward`` returned in the forward, for the replay."""
    found = None
    if prepared is not None and _fast_path.moved_by_hook(prepared, x, weight, mean, rstd):
        prepared = prepare_backward(x, weight, has_bias, mean, rstd, batch_stats,
                                    bias_dtype)              # the copies a hook handed over
    if prepared is not None:
        found = _fast_path.look_up(prepared, dy)
        if found.recording is not None:
            return _replay_backward(found.recording, prepared, dy)
    x, weight = unit_last_stride(x), vector(weight)
    dy = unit_last_stride(dy)
    m, c = x.shape
    dx = torch.empty((m, c), dtype=x.dtype, device=x.device)
    if m == 0:
        # an empty batch: zero gradients, each its own tensor (grads that share one would
        # share it as .grad too)
        zeros = functools.partial(torch.zeros, c, device=x.device)
        return (dx, zeros(dtype=weight.dtype) if weight is not None else None,
                zeros(dtype=bias_dtype or x.dtype) if has_bias else None)
    recorder = None if found is None else found.recorder
    with on_device(x):
        # sum(dy) and sum(dy xhat) in each block of rows, then over the blocks
        sdy_p, sdyx_p, p, rows = _column_partials(_bwd_sums_kernel, "batch_norm_bwd_sums", x,
                                                  (x, dy, mean, rstd),
                                                  (x.stride(0), dy.stride(0)), recorder)
        sdy, sdyx = sum_rows(sdy_p, torch.float32, sdyx_p, recorder=recorder)
        w = weight if weight is not None else x

        def launch_dx(cfg: tuple[int, int, int], recorder: list | None = None) -> None:
            bm, bc, warps = cfg
            _fast_path.launch(_dx_kernel, (cdiv(m, bm), cdiv(c, bc)),
                x, dy, dx, mean, rstd, w, sdy, sdyx, m, c, x.stride(0), dy.stride(0),
                dx.stride(0), 1.0 / m, HAS_W=weight is not None, BATCH_STATS=batch_stats,
                BLOCK_M=bm, BLOCK_C=bc, num_warps=warps, recorder=recorder)

        tune_key = ("batch_norm_dx", batch_stats, c, x.dtype, _tune.rows_bucket(m))
        launch_dx(_tune.choose(tune_key, _elementwise_configs(c), launch_dx, x.device),
                  recorder)
    if recorder is not None:
        _fast_path.keep(found, 3, lambda sums, *rest: BackwardRecording(
            ColumnReduction(sums, p, rows), *rest))
    dw = sdyx.to(weight.dtype) if weight is not None else None
    db = sdy.to(bias_dtype or x.dtype) if has_bias else None
    return dx, dw, db


def _bump(*tensors: torch.Tensor | None) -> None:
    """Tell autograd that a kernel wrote into these tensors in place."""
    inc = getattr(torch.autograd.graph, "increment_version", None)
    for t in tensors:
        if t is not None and inc is not None:
            inc(t)


class BatchNormFn(torch.autograd.Function):
    """x (M, C) channels-last, through ``forward`` and ``backward`` above. In training the
    running buffers, when given, are updated in place by the statistics kernel; otherwise
    they normalise."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, running_mean: torch.Tensor | None,
                running_var: torch.Tensor | None, training: bool, momentum: float,
                eps: float) -> torch.Tensor:
        y, mean, _, rstd, ctx.prepared = forward(x, weight, bias, eps, training, running_mean,
                                                 running_var, momentum,
                                                 any(ctx.needs_input_grad))
        if training:
            _bump(running_mean, running_var)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.training = training                     # False: mean and rstd were constants
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = backward(dy, x, weight, ctx.bias_dtype is not None, mean, rstd, ctx.training,
                              ctx.bias_dtype, ctx.prepared)
        return dx, dw, db, None, None, None, None, None
