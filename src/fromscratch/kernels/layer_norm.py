r"""LayerNorm forward and backward in Triton. The maths is ``ops.layer_norm``'s:

    mu = mean(x)     xc = x - mu     var = mean(xc^2)     r = 1 / sqrt(var + eps)
    xhat = xc * r    y = w * xhat + b

    g = dy * w       dx = r * (g - mean(g) - xhat * mean(g * xhat))
    dw = sum_rows(dy * xhat)          db = sum_rows(dy)

Forward: one program normalises BLOCK_M whole rows held in registers (two-pass mean and
variance, so mean-shifted rows keep their digits). As in ``ops``, the row is first shifted
by its first element K (one more load of a value already in cache): d = x - K,
mu = K + mean(d), xc = d - mean(d), exactly 0 on a constant row, without mu's rounding on a
row with a large mean. r is ``_stats.inv_rms_rows``: scaled where xc^2 overflows. It saves
mean and r, 8 bytes a row, for the backward. Rows longer than ``MAX_FUSED_FWD`` go to a
looped kernel that walks the row in chunks three times (sum, squared deviations, output);
there r is NaN, never 0, where xc^2 overflows (``_stats.inv_rms_or_nan``).

Backward: ``_row_backward``, shared with RMSNorm (persistent grid, float32 dw/db partials
reduced by ``_reduce.sum_rows``; traffic: read x and dy, write dx, the minimum).

This file holds the kernels, their launchers ``forward`` and ``backward`` (from the third
call of a geometry on, the forward replays its launch: ``_fast_path``) and ``LayerNormFn``,
the autograd Function over them.
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from . import _fast_path, _row_backward, _tune
from ._common import (cdiv, next_pow2, on_device, once_differentiable, row_fwd_configs,
                      unit_last_stride, vector)
from ._fast_path import ForwardRecording, Replayable
from ._stats import inv_rms_or_nan, inv_rms_rows, row_block

#: widest row kept whole in registers by the forward / backward kernels; wider rows loop.
MAX_FUSED_FWD = 16384
MAX_FUSED_BWD = 8192
#: chunk the looped kernels walk a wide row with.
LOOP_BLOCK = 4096


@triton.jit
def _fwd_kernel(X, Y, W, B, MEAN, RSTD, M, N, stride_x, stride_y, eps,
                HAS_W: tl.constexpr, HAS_B: tl.constexpr, EVEN_N: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows, cols, rmask, cmask, mask = row_block(M, N, BLOCK_M, BLOCK_N)
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    shift = tl.load(X + rows * stride_x, mask=rmask, other=0.0).to(tl.float32)   # K = x[0]
    d = x - shift[:, None]                               # d = x - K
    if not EVEN_N:                                       # padding must not count
        d = tl.where(cmask[None, :], d, 0.0)
    mean_d = tl.sum(d, axis=1) / N
    xc = d - mean_d[:, None]                             # xc = d - mean(d)
    if not EVEN_N:
        xc = tl.where(cmask[None, :], xc, 0.0)
    rstd = inv_rms_rows(xc, tl.sum(xc * xc, axis=1) / N, eps, N)   # r = 1/sqrt(var + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, shift + mean_d, mask=rmask)   # mu = K + mean(d)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit
def _fwd_looped_kernel(X, Y, W, B, MEAN, RSTD, N, stride_x, stride_y, eps,
                       HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    y_row = Y + row * stride_y
    shift = tl.load(x_row).to(tl.float32)               # K = x[0]
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for off in range(0, N, BLOCK_N):
        cols = off + tl.arange(0, BLOCK_N)
        x = tl.load(x_row + cols, mask=cols < N, other=0.0).to(tl.float32)
        acc += tl.where(cols < N, x - shift, 0.0)        # d = x - K
    mean_d = tl.sum(acc, axis=0) / N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for off in range(0, N, BLOCK_N):
        cols = off + tl.arange(0, BLOCK_N)
        x = tl.load(x_row + cols, mask=cols < N, other=0.0).to(tl.float32)
        xc = tl.where(cols < N, (x - shift) - mean_d, 0.0)
        acc += xc * xc
    rstd = inv_rms_or_nan(tl.sum(acc, axis=0) / N, eps)
    for off in range(0, N, BLOCK_N):
        cols = off + tl.arange(0, BLOCK_N)
        cmask = cols < N
        x = tl.load(x_row + cols, mask=cmask, other=0.0).to(tl.float32)
        y = ((x - shift) - mean_d) * rstd
        if HAS_W:
            y = y * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
        tl.store(y_row + cols, y.to(Y.dtype.element_ty), mask=cmask)
    tl.store(MEAN + row, shift + mean_d)
    tl.store(RSTD + row, rstd)


def forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
            eps: float, prepare: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Replayable | None]:
    """x (M, N) -> (y (M, N) in x's dtype, mean (M,) float32, rstd (M,) float32, prepared):
    with ``prepare``, ``prepared`` is what lets ``backward`` replay its launches (as
    ``prepare_backward`` would say; made from what a replayed forward holds), else None."""
    m, n = x.shape
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    mean = torch.empty(m, dtype=torch.float32, device=x.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x.device)
    if m == 0:
        return y, mean, rstd, None
    found = None
    if n <= MAX_FUSED_FWD:      # replay (see _fast_path): only for unit last strides, so no copies
        w = weight if weight is not None else x            # placeholder pointer, never read
        b = bias if bias is not None else x
        call = _fast_path.replayable(("layer_norm_fwd", m, n, x.stride(0), x.dtype, w.dtype,
                                      b.dtype, weight is None, bias is None), x, w, b)
        if call is not None:
            found = _fast_path.look_up(call)
            recording = found.recording
            if recording is not None:              # _fwd_kernel's arguments, in order
                x_at, w_at, b_at = call.addresses
                mean_at, rstd_at = mean.data_ptr(), rstd.data_ptr()
                recording.launch(_fast_path.current_stream(call.device), x_at, y.data_ptr(),
                                 w_at, b_at, mean_at, rstd_at, m, n, x.stride(0), n, eps)
                return y, mean, rstd, (_fast_path.backward_replayable_at(
                    recording.backward, call.device, x_at, w_at, mean_at, rstd_at)
                    if prepare else None)
    raw_x, raw_weight = x, weight                     # what the autograd Function saves
    x, weight, bias = unit_last_stride(x), vector(weight), vector(bias)
    w = weight if weight is not None else x
    b = bias if bias is not None else x
    flags = {"HAS_W": weight is not None, "HAS_B": bias is not None}
    with on_device(x):
        if n > MAX_FUSED_FWD:
            _fast_path.launch(_fwd_looped_kernel, (m,), x, y, w, b, mean, rstd, n, x.stride(0),
                              y.stride(0), eps, BLOCK_N=min(next_pow2(n), LOOP_BLOCK),
                              num_warps=8, **flags)
            return y, mean, rstd, None                     # too wide to replay
        block_n = next_pow2(n)

        def launch(cfg: tuple[int, int], recorder: list | None = None) -> None:
            bm, warps = cfg
            _fast_path.launch(_fwd_kernel, (cdiv(m, bm),), x, y, w, b, mean, rstd, m, n,
                              x.stride(0), y.stride(0), eps, EVEN_N=n == block_n, BLOCK_M=bm,
                              BLOCK_N=block_n, num_warps=warps, recorder=recorder, **flags)

        tune_key = ("layer_norm_fwd", n, x.dtype, w.dtype, _tune.rows_bucket(m))
        recorder = None if found is None else found.recorder
        launch(_tune.choose(tune_key, row_fwd_configs(block_n), launch, x.device), recorder)
    b_dtype = None if bias is None else bias.dtype
    if recorder is not None:
        _fast_path.keep(found, 1, lambda launched: ForwardRecording(
            launched, _fast_path.backward_signature("layer_norm", x, weight, bias is not None,
                                                    b_dtype)))
    return y, mean, rstd, (prepare_backward(raw_x, raw_weight, bias is not None, mean, rstd,
                                            b_dtype) if prepare else None)


def prepare_backward(x: torch.Tensor, weight: torch.Tensor | None, has_bias: bool,
                     mean: torch.Tensor, rstd: torch.Tensor,
                     bias_dtype: torch.dtype | None = None) -> Replayable | None:
    """In the forward: what lets ``backward`` replay its launches (``_row_backward.prepare``)."""
    return _row_backward.prepare("layer_norm", x, weight, rstd, mean, has_bias, bias_dtype,
                                 max_fused=MAX_FUSED_BWD)


def backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
             has_bias: bool, mean: torch.Tensor, rstd: torch.Tensor,
             bias_dtype: torch.dtype | None = None, prepared: Replayable | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dweight, dbias); dweight/dbias in the parameters' dtypes, None when absent."""
    return _row_backward.backward("layer_norm", dy, x, weight, rstd, mean, has_bias,
                                  bias_dtype, max_fused=MAX_FUSED_BWD, loop_block=LOOP_BLOCK,
                                  prepared=prepared)


class LayerNormFn(torch.autograd.Function):
    """(x (M, N), weight, bias, eps) -> y, through ``forward`` and ``backward`` above."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, eps: float) -> torch.Tensor:
        y, mean, rstd, ctx.prepared = forward(x, weight, bias, eps, any(ctx.needs_input_grad))
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = backward(dy, x, weight, ctx.bias_dtype is not None, mean, rstd,
                              ctx.bias_dtype, ctx.prepared)
        return dx, dw, db, None
