r"""Gradient check by central differences, in float64, for any module or loss.

For a module f with parameters theta and a fixed random upstream gradient G (never all
ones, which hides errors that sum to zero), the scalar checked is

    S(x, theta) = sum(f(x; theta) * G)

whose gradients are exactly what ``backward(G)`` returns (dS/dx) and adds into ``grads``
(dS/dtheta). Each entry is compared with the central difference

    dS/du ~ (S(u + h) - S(u - h)) / (2 h)

whose truncation error is O(h^2) and rounding error O(eps |S| / h); h = 1e-5, near
the cube root of float64's eps (6e-6), balances the two.

For a loss, S = L(input, target) * G (G a random scalar, or an array for
``reduction="none"``), differentiated with respect to ``input``.

The error reported for each tensor is the worst entry of

    |analytic - numeric| / max(|analytic|, |numeric|, 1e-3 * max|numeric|, 1e-12)

(relative, with a floor so that entries that are zero up to rounding do not dominate).
Random generators (Dropout's) are rewound before every evaluation, so every evaluation
sees the same mask; the check runs on a float64 copy and leaves the module untouched.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .module import Array, Module


@dataclass
class GradcheckReport:
    errors: dict[str, float] = field(default_factory=dict)   # "input", "weight", "0.bias", ...

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    def ok(self, tol: float = 1e-6) -> bool:
        return self.max_error <= tol

    def __str__(self) -> str:
        width = max((len(k) for k in self.errors), default=5)
        return "\n".join(f"{k:<{width}}  worst relative error {v:.2e}"
                         for k, v in self.errors.items())


def gradcheck(fn: Any, *inputs: Array, h: float = 1e-5, seed: int = 0,
              upstream: Array | float | None = None) -> GradcheckReport:
    """Check ``fn`` (a Module, or a loss with ``forward(input, target)``) at ``inputs``.

    Modules take one input; losses take (input, target) and are checked in ``input``.
    ``upstream`` overrides the random upstream gradient G.
    """
    rng = np.random.default_rng([0x6C0DE, seed])     # a stream of its own, not the data's
    x = np.array(inputs[0], dtype=np.float64)
    rest = inputs[1:]
    is_module = isinstance(fn, Module)
    fn = copy.deepcopy(fn)
    if is_module:
        fn.to(np.float64)
        fn.input_grad = True
    rng_states = [g.bit_generator.state for g in _generators(fn)]

    def evaluate(xv: Array) -> Array:
        for g, s in zip(_generators(fn), rng_states):
            g.bit_generator.state = s
        return fn.forward(xv, *rest)

    out = evaluate(x)
    G = upstream if upstream is not None else (
        rng.standard_normal(np.shape(out)) if np.ndim(out) else float(rng.standard_normal()))
    G = np.asarray(G, dtype=np.float64) if np.ndim(out) else float(G)

    def S(xv: Array) -> float:
        return float(np.sum(np.asarray(evaluate(xv)) * G))

    # analytic
    evaluate(x)
    if is_module:
        fn.zero_grad()
        dx = fn.backward(G)
        analytic = {"input": dx}
        analytic.update({name: m.grads[k].copy() for name, m, k in fn.named_slots()
                         if m.grads[k] is not None})
    else:
        analytic = {"input": fn.backward(G)}

    # numeric
    report = GradcheckReport()
    report.errors["input"] = _worst(analytic["input"], _numeric(lambda: S(x), x, h))
    if is_module:
        for name, m, k in fn.named_slots():
            if name in analytic:
                p = m.params[k]
                report.errors[name] = _worst(analytic[name], _numeric(lambda: S(x), p, h))
    return report


def _numeric(f: Callable[[], float], u: Array, h: float) -> Array:
    """Central differences of f() in every entry of u, perturbing u in place."""
    grad = np.zeros_like(u)
    flat, gflat = u.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = f()
        flat[i] = old - h
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * h)
    return grad


def _worst(a: Array, n: Array) -> float:
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"gradcheck: analytic gradient of shape {a.shape}, expected {n.shape}")
    if a.size == 0:
        return 0.0
    floor = max(1e-3 * float(np.max(np.abs(n))), 1e-12)
    denom = np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)
    return float(np.max(np.abs(a - n) / denom))


def _generators(fn: Any) -> list[np.random.Generator]:
    return fn.generators() if isinstance(fn, Module) else []
