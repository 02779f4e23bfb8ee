"""Inputs and comparisons shared by the kernel tests (tolerances: tests/_compare.py)."""
from __future__ import annotations

import numpy as np
import torch

from tests._compare import EPS32, as64, assert_close, tol


def rows(m: int, n: int, dtype: torch.dtype, device: torch.device, seed: int = 0,
         shifted: bool = True) -> torch.Tensor:
    """(m, n) normal rows; with ``shifted`` the rows have different large means
    (0, 100, -30, 7, ...) and spreads, the case where E[x^2] - E[x]^2 loses every digit."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, generator=g, dtype=torch.float64)
    if shifted:
        shifts = torch.tensor([0.0, 100.0, -30.0, 7.0, 0.5, -3.0], dtype=torch.float64)
        scales = torch.tensor([1.0, 2.0, 0.5, 3.0, 0.1, 1.0], dtype=torch.float64)
        idx = torch.arange(m) % len(shifts)
        x = x * scales[idx, None] + shifts[idx, None]
    return x.to(dtype).to(device)


def param(n: int, dtype: torch.dtype, device: torch.device, seed: int, shift: float = 0.0
          ) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=torch.float64) * 0.5 + shift).to(dtype).to(device)


def f64(t: torch.Tensor | None) -> torch.Tensor | None:
    """The float64 reference input, from the already rounded tensor, on the CPU."""
    return None if t is None else t.detach().to("cpu", torch.float64)


def close(mine: torch.Tensor, ref: torch.Tensor, what: str, dtype: torch.dtype,
          reduced_over: int | None = None, cond: np.ndarray | float = 0.0,
          scale: float = 1.0) -> None:
    """docs/conventions.md's tolerance for ``dtype`` (outputs are stored in it), times ``scale`` for
    quantities that add many rounded terms, plus ``cond``: the condition-aware term
    c * eps32 * max|x| / std for float32 maths on mean-shifted rows."""
    rtol, atol = tol(dtype, reduced_over)
    assert_close(mine, ref, what, rtol * scale, atol * scale + np.asarray(cond))


def row_condition(x: torch.Tensor, c: float = 8.0) -> np.ndarray:
    """c * eps32 * max|x| / std per row, shaped to broadcast against (M, N)."""
    x = as64(x)
    return (c * EPS32 * np.abs(x).max(axis=-1) / (x.std(axis=-1) + 1e-30))[:, None]


def block_inputs(device: torch.device | str) -> tuple[torch.Tensor, ...]:
    """x, residual, weight, bias of a small block (6 rows of 37), all requiring grad."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 37, generator=g) * 2 + 1).to(device).requires_grad_()
    r = torch.randn(6, 37, generator=g).to(device).requires_grad_()
    w = (1 + 0.1 * torch.randn(37, generator=g)).to(device).requires_grad_()
    b = (0.1 * torch.randn(37, generator=g)).to(device).requires_grad_()
    return x, r, w, b
