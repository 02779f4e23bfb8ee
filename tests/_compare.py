"""Comparing our numbers with a reference, with the tolerances of docs/conventions.md and readable failures.

References are float64, computed from the *already rounded* low-precision inputs, so a
tolerance measures our error only, not the rounding of the test data.
"""
from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import pytest
import torch

# docs/conventions.md, "tolerances": (rtol, atol) per working dtype
TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (2e-2, 2e-2),
}
WORKING_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ALL_DTYPES = [torch.float64, *WORKING_DTYPES]
EPS32 = torch.finfo(torch.float32).eps


def tol(dtype: torch.dtype, reduced_over: int | None = None) -> tuple[float, float]:
    """(rtol, atol) for ``dtype``. Reduced outputs (dweight, dbias: a sum over
    ``reduced_over`` rows) get an extra atol that grows like sqrt(rows), the growth of a
    rounding error summed over independent rows."""
    rtol, atol = TOL[dtype]
    if reduced_over is not None:
        atol *= 1.0 + math.sqrt(reduced_over)
    return rtol, atol


def as64(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def assert_close(mine: Any, ref: Any, what: str, rtol: float, atol: float | np.ndarray,
                 theirs: Any = None) -> None:
    """|mine - ref| <= atol + rtol |ref| elementwise, NaN where ref is NaN.

    ``theirs`` (optional): torch.nn's answer in the same dtype, quoted in the failure
    message so a reader sees whether torch itself does better.
    """
    m, r = as64(mine), as64(ref)
    atol = as64(atol)
    assert m.shape == r.shape, f"{what}: shape {m.shape}, reference {r.shape}"
    allowed = np.broadcast_to(atol + rtol * np.abs(r), r.shape)
    with np.errstate(invalid="ignore"):
        diff = np.abs(m - r)
        bad = ~((diff <= allowed) | (np.isnan(m) & np.isnan(r)) | ((m == r) & np.isinf(r)))
    if not bad.any():
        return
    idx = np.unravel_index(np.argmax(np.where(bad, diff - allowed, -np.inf)), r.shape)
    msg = (f"{what}: {int(bad.sum())} of {r.size} values out of tolerance "
           f"(rtol={rtol:g}, atol up to {np.max(atol):g}). Worst at {tuple(int(i) for i in idx)}: "
           f"mine={m[idx]!r} reference={r[idx]!r} |diff|={diff[idx]:.3g} "
           f"> allowed {allowed[idx]:.3g}; max|diff|={np.nanmax(diff):.3g}")
    if theirs is not None:
        t = as64(theirs)
        msg += f". torch.nn in the same dtype: max|diff|={np.nanmax(np.abs(t - r)):.3g}"
    raise AssertionError(msg)


def assert_same(a: Any, b: Any, what: str) -> None:
    """Equal up to float64 round-off (two orders of summation of the same formula)."""
    assert_close(a, b, what, rtol=1e-12, atol=1e-12)


def randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0,
          scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)


def upstream(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    """A random upstream gradient (never all ones: with ones BatchNorm's dx is ~0)."""
    return randn(*shape, dtype=dtype, seed=seed)


def graph_names(t: torch.Tensor) -> set[str]:
    """Names of every autograd node reachable from t.grad_fn."""
    # ``seen`` keeps the nodes themselves, not their id()s: some torch releases (2.11) make
    # a new Python object for a node on each next_functions access, and a freed one's id
    # can come again for another node, which would then be skipped
    names, stack, seen = set(), [t.grad_fn], {}
    while stack:
        node = stack.pop()
        if node is None or seen.get(id(node)) is node:
            continue
        seen[id(node)] = node
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


# nodes a reshape / dtype cast / parameter leaf leave in the graph around our Function
PLUMBING = {"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "AccumulateGrad",
            "CloneBackward0"}


def assert_backward_is(y: torch.Tensor, fn: type) -> None:
    """y's graph holds our Function's backward and nothing that autograd derived itself."""
    names = graph_names(y)
    ours = f"{fn.__name__}Backward"
    assert ours in names, f"expected {ours} in the autograd graph, found {sorted(names)}"
    other = names - PLUMBING - {ours}
    assert not other, f"autograd nodes other than ours in the graph: {sorted(other)}"


# torch.nn.BatchNorm's keyword-only ``bias`` argument is newer than the oldest torch this
# project supports (2.11 has none). Ours takes it; a test that builds torch's twin with it
# skips where the installed torch cannot.
TORCH_BATCH_NORM_TAKES_BIAS = "bias" in inspect.signature(torch.nn.BatchNorm1d.__init__).parameters


def skip_unless_torch_batch_norm_takes(kwargs: dict) -> None:
    if "bias" in kwargs and not TORCH_BATCH_NORM_TAKES_BIAS:
        pytest.skip(f"this torch's BatchNorm takes no bias argument (torch {torch.__version__})")
