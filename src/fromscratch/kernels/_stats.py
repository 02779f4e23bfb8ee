r"""What the row-norm forwards' kernels share: the block of whole rows a program holds
(``row_block``), and the per-row r = 1 / sqrt(mean(a^2) + eps), never a plausible 0.

A square overflows float32 (|a| beyond 1.8e19) long before the normalised a r stops being
representable; mean(a^2) is then inf and the plain formula gives r = 0, every output 0.

* ``inv_rms_rows``, for rows held in registers: where a row's mean square overflowed it
  is computed again with the row scaled by s = max|a|, the same r in exact arithmetic
  (``ops._xp.inv_rms``):

      r = (1/s) / sqrt(mean((a/s)^2) + eps/s^2)          |a/s| <= 1: nothing overflows

  The row is in registers, so this costs no memory traffic, and it runs only when some row
  of the tile overflowed: the common path pays one max over the tile's BLOCK_M values.
* ``inv_rms_or_nan``, for the looped kernels of rows too wide for registers: scaling would
  take one more pass over the row, so there r is NaN where the mean square overflowed.

A row holding inf keeps r = 0 as in ``ops`` and torch (RMSNorm: NaN at the inf, 0 elsewhere;
LayerNorm's row is NaN anyway); one holding NaN gives NaN.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def row_block(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program i's rows i BLOCK_M ... (int64, to multiply a stride), each whole in its
    BLOCK_N >= N columns: (rows, cols, the rows' mask, the columns', the block's)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    return rows, cols, rmask, cmask, rmask[:, None] & cmask[None, :]


@triton.jit
def inv_rms_rows(a, ms, eps, N):
    """r per row of the tile ``a`` (BLOCK_M, BLOCK_N; padding 0), ``ms`` = mean(a^2) per
    row, N the row length."""
    rstd = 1.0 / tl.sqrt(ms + eps)
    if tl.max(ms, axis=0) == float("inf"):           # some square overflowed: scale first
        s = tl.max(tl.abs(a), axis=1)
        inv = 1.0 / tl.where(s > 0, s, 1.0)
        t = a * inv[:, None]
        scaled = inv / tl.sqrt(tl.sum(t * t, axis=1) / N + eps * inv * inv)
        rstd = tl.where((ms == float("inf")) & (s < float("inf")), scaled, rstd)
    return rstd


@triton.jit
def inv_rms_or_nan(ms, eps):
    """r from the mean square ``ms`` of a wide row: NaN, never 0, where it overflowed."""
    return tl.where(ms == float("inf"), float("nan"), 1.0 / tl.sqrt(ms + eps))  # (inf rows: NaN)
