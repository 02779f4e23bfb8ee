r"""RMSNorm forward and backward in Triton, optionally fused with a residual add.
The maths is ``ops.rms_norm``'s:

    r = 1 / sqrt(mean(x^2) + eps)      xhat = x * r      y = w * xhat
    g = dy * w      dx = r * (g - xhat * mean(g * xhat))      dw = sum_rows(dy * xhat)

With ``ROUND_XHAT`` (Llama's cast, ``functional.rms_norm(cast="normalized")``) xhat is
rounded to the input's dtype before w multiplies it, and y is stored in the dtype its caller
allocates (torch's promotion of weight and input); the backward is the same. An ``offset``
(Gemma's 1 + w) reaches the kernels inside w: the front-end passes offset + w, formed in
float32.

With a residual (``HAS_RES``), the forward first forms s = x + residual, rounds it to the
storage dtype, writes it out (the transformer block's new residual stream) and normalises
that rounded s, so the result equals ``rms_norm(x + residual)`` computed in two steps. Its
backward adds the gradient that reached s directly (``HAS_DRES``):

    ds = r * (g - shat * mean(g * shat)) + ds_direct,     dx = dresidual = ds

The layout of the work is LayerNorm's (see ``layer_norm.py``): forward rows in registers,
r scaled where x^2 overflows (``_stats``), a looped kernel for rows wider than
``MAX_FUSED_FWD`` (r NaN there on overflow); the backward is LayerNorm's kernel
without the centring (``_row_backward``).

This file holds the kernels, their launchers ``forward`` and ``backward`` (the forward
replays its launch from the third call of a geometry on: ``_fast_path``) and ``RMSNormFn``,
the autograd Function over them; ``residual_rms_norm.py`` has the fused form's.
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

MAX_FUSED_FWD = 16384
MAX_FUSED_BWD = 8192
LOOP_BLOCK = 4096


@triton.jit
def _fwd_kernel(X, R, S, Y, W, RSTD, M, N, stride_x, stride_r, stride_s, stride_y, eps,
                HAS_W: tl.constexpr, HAS_RES: tl.constexpr, ROUND_XHAT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows, cols, rmask, cmask, mask = row_block(M, N, BLOCK_M, BLOCK_N)
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
        s = (x + r.to(tl.float32)).to(S.dtype.element_ty)   # the stored, rounded sum
        tl.store(S + rows[:, None] * stride_s + cols[None, :], s, mask=mask)
        x = s.to(tl.float32)
    rstd = inv_rms_rows(x, tl.sum(x * x, axis=1) / N, eps, N)   # scaled where x^2 overflows
    y = x * rstd[:, None]
    if ROUND_XHAT:
        y = y.to(X.dtype.element_ty).to(tl.float32)
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
                       HAS_W: tl.constexpr, HAS_RES: tl.constexpr, ROUND_XHAT: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for off in range(0, N, BLOCK_N):
        cols = off + tl.arange(0, BLOCK_N)
        x = _load_sum(X, R, S, row, stride_x, stride_r, cols, cols < N, HAS_RES)
        acc += x * x
    rstd = inv_rms_or_nan(tl.sum(acc, axis=0) / N, eps)       # NaN, never 0, on overflow
    for off in range(0, N, BLOCK_N):
        cols = off + tl.arange(0, BLOCK_N)
        cmask = cols < N
        x = _load_sum(X, R, S, row, stride_x, stride_r, cols, cmask, HAS_RES)
        if HAS_RES:
            tl.store(S + row * stride_s + cols, x.to(S.dtype.element_ty), mask=cmask)
        y = x * rstd
        if ROUND_XHAT:
            y = y.to(X.dtype.element_ty).to(tl.float32)
        if HAS_W:
            y = y * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=cmask)
    tl.store(RSTD + row, rstd)


def forward(x: torch.Tensor, weight: torch.Tensor | None, eps: float,
            residual: torch.Tensor | None = None, prepare: bool = False,
            round_xhat: bool = False, out_dtype: torch.dtype | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Replayable | None]:
    """x (M, N) -> (y, rstd (M,) float32, s, prepared); with ``residual``, s = x + residual
    (x's dtype) is what was normalised, else s is None. With ``prepare``, ``prepared`` is what
    lets ``backward`` replay its launches for what was normalised (as ``prepare_backward``
    would say; made from what a replayed forward holds), else None. ``round_xhat``: xhat
    rounded to x's dtype before the weight; y in ``out_dtype`` (None: x's)."""
    m, n = x.shape
    has_res = residual is not None
    s = torch.empty((m, n), dtype=x.dtype, device=x.device) if has_res else x
    y = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x.device)
    if m == 0:
        return y, rstd, s if has_res else None, None
    found = None
    if n <= MAX_FUSED_FWD:      # replay (see _fast_path): only for unit last strides, so no copies
        r = residual if has_res else x
        w = weight if weight is not None else x            # placeholder pointer, never read
        call = _fast_path.replayable(("rms_norm_fwd", m, n, x.stride(0), r.stride(0), x.dtype,
                                      w.dtype, r.dtype, weight is None, has_res, round_xhat,
                                      y.dtype), x, r, w)
        if call is not None:
            found = _fast_path.look_up(call)
            recording = found.recording
            if recording is not None:              # _fwd_kernel's arguments, in order
                x_at, r_at, w_at = call.addresses
                s_at, stride_s = (s.data_ptr(), n) if has_res else (x_at, x.stride(0))
                rstd_at = rstd.data_ptr()
                recording.launch(_fast_path.current_stream(call.device), x_at, r_at, s_at,
                                 y.data_ptr(), w_at, rstd_at, m, n, x.stride(0), r.stride(0),
                                 stride_s, n, eps)
                w_at = w_at if weight is not None else s_at   # the backward's placeholder
                return y, rstd, s if has_res else None, (_fast_path.backward_replayable_at(
                    recording.backward, call.device, s_at, w_at, rstd_at, rstd_at)
                    if prepare else None)
    raw_s, raw_weight = s, weight                     # what the autograd Function saves
    x, weight = unit_last_stride(x), vector(weight)
    r = unit_last_stride(residual) if has_res else x
    s = s if has_res else x
    w = weight if weight is not None else x
    strides = (x.stride(0), r.stride(0), s.stride(0), y.stride(0))
    flags = {"HAS_W": weight is not None, "HAS_RES": has_res, "ROUND_XHAT": round_xhat}
    with on_device(x):
        if n > MAX_FUSED_FWD:
            _fast_path.launch(_fwd_looped_kernel, (m,), x, r, s, y, w, rstd, n, *strides, eps,
                              BLOCK_N=min(next_pow2(n), LOOP_BLOCK), num_warps=8, **flags)
            return y, rstd, s if has_res else None, None  # too wide to replay
        block_n = next_pow2(n)

        def launch(cfg: tuple[int, int], recorder: list | None = None) -> None:
            bm, warps = cfg
            _fast_path.launch(_fwd_kernel, (cdiv(m, bm),), x, r, s, y, w, rstd, m, n, *strides,
                              eps, BLOCK_M=bm, BLOCK_N=block_n, num_warps=warps,
                              recorder=recorder, **flags)

        tune_key = ("rms_norm_fwd", has_res, n, x.dtype, w.dtype, round_xhat, y.dtype,
                    _tune.rows_bucket(m))
        recorder = None if found is None else found.recorder
        launch(_tune.choose(tune_key, row_fwd_configs(block_n), launch, x.device), recorder)
    if recorder is not None:
        _fast_path.keep(found, 1, lambda launched: ForwardRecording(
            launched, _fast_path.backward_signature("rms_norm", s, weight, False, None,
                                                    has_ds=has_res)))
    return y, rstd, s if has_res else None, (prepare_backward(
        raw_s, raw_weight, rstd, has_ds=has_res) if prepare else None)


def prepare_backward(x: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor,
                     has_ds: bool = False) -> Replayable | None:
    """In the forward: what lets ``backward`` replay its launches (``_row_backward.prepare``);
    ``has_ds`` for the fused residual form, whose backward also gets ds."""
    return _row_backward.prepare("rms_norm", x, weight, rstd, has_ds=has_ds,
                                 max_fused=MAX_FUSED_BWD)


def backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor,
             ds: torch.Tensor | None = None, prepared: Replayable | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dx, dweight). ``x`` is what was normalised (s for the fused residual form) and ``ds``,
    if given, the gradient that reached it directly; it is added to dx."""
    dx, dw, _ = _row_backward.backward("rms_norm", dy, x, weight, rstd, ds=ds,
                                       max_fused=MAX_FUSED_BWD, loop_block=LOOP_BLOCK,
                                       prepared=prepared)
    return dx, dw


class RMSNormFn(torch.autograd.Function):
    """(x (M, N), weight, eps, round_xhat, out_dtype) -> y, through ``forward`` and
    ``backward`` above."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, eps: float,
                round_xhat: bool = False, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        y, rstd, _, ctx.prepared = forward(x, weight, eps, None, any(ctx.needs_input_grad),
                                           round_xhat, out_dtype)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = backward(dy, x, weight, rstd, prepared=ctx.prepared)
        return dx, dw, None, None, None
