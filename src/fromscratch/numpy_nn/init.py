r"""Weight initialisations for Linear. W has shape (out, in); fan_in = in, fan_out = out.

    "torch"   torch.nn.Linear's default (kaiming_uniform_ with a = sqrt(5)):
              W ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),  b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    "xavier"  Glorot & Bengio (2010), uniform, as the seed notebook:
              W ~ U(-sqrt(6/(fan_in+fan_out)), +sqrt(6/(fan_in+fan_out))),  b = 0
              keeps Var(z) ~ Var(a) forward and backward for tanh/sigmoid-like units.
    "he"      He et al. (2015), normal, for ReLU: W ~ N(0, 2/fan_in),  b = 0

``rng`` is a ``numpy.random.Generator``, a legacy ``RandomState`` (``np.random.seed``'s
stream, what the notebook used), an int seed, or None for the engine's global generator
(set by ``manual_seed``, like ``torch.manual_seed``). The weight is drawn before the bias.
"""
from __future__ import annotations

from typing import Union

import numpy as np

RNG = Union[np.random.Generator, np.random.RandomState, int, None]
INITS = ("torch", "xavier", "he")

_global_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator used when no ``rng`` is given (initialisation and dropout)."""
    global _global_rng
    _global_rng = np.random.default_rng(seed)


def get_rng(rng: RNG = None) -> np.random.Generator | np.random.RandomState:
    if rng is None:
        return _global_rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    return rng


def linear(fan_in: int, fan_out: int, init: str = "torch", bias: bool = True, rng: RNG = None,
           dtype: np.dtype | type = np.float64) -> tuple[np.ndarray, np.ndarray | None]:
    """(weight (fan_out, fan_in), bias (fan_out,) or None) drawn as ``init`` says."""
    r = get_rng(rng)
    if init == "torch":
        bound = 1.0 / np.sqrt(fan_in) if fan_in > 0 else 0.0
        w = r.uniform(-bound, bound, (fan_out, fan_in))
        b = r.uniform(-bound, bound, fan_out) if bias else None
    elif init == "xavier":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        w = r.uniform(-limit, limit, (fan_out, fan_in))
        b = np.zeros(fan_out) if bias else None
    elif init == "he":
        w = r.normal(0.0, np.sqrt(2.0 / fan_in), (fan_out, fan_in))
        b = np.zeros(fan_out) if bias else None
    else:
        raise ValueError(f"Linear: init must be one of {INITS}, got {init!r}")
    return w.astype(dtype, copy=False), None if b is None else b.astype(dtype, copy=False)
