r"""Softmax cross-entropy on logits, with integer targets.
Derivation: docs/numpy_engine.md, "Backpropagation tables".

Logits z of shape (M, C), one target class t_i per row (or ``ignore_index``):

    log p_i = z_i - max(z_i) - log(sum_c exp(z_ic - max(z_i)))     (stable log-softmax)
    l_i = -log p_{i, t_i}

    reduction "mean":  L = sum_{i valid} l_i / (number of valid rows)
    reduction "sum":   L = sum_{i valid} l_i
    reduction "none":  L_i = l_i, 0 where ignored

Backward, for row i (softmax p_i = exp(log p_i), one-hot e_{t_i}):

    dL/dz_i = (p_i - e_{t_i}) * w_i        w_i = dL/dl_i: 1/valid, 1 or dloss_i; 0 if ignored

Subtracting the row max changes nothing (softmax is shift-invariant) but keeps exp <= 1.
A mean over zero valid rows is 0/0 = NaN, as in torch.
"""
from __future__ import annotations

from typing import NamedTuple

from ._xp import Array, is_torch, namespace

REDUCTIONS = ("mean", "sum", "none")


class Cache(NamedTuple):
    log_p: Array      # (M, C)
    target: Array     # (M,), ignored rows pointing at class 0
    valid: Array      # (M,) bool
    count: int        # number of valid rows
    reduction: str


def forward(logits: Array, target: Array, ignore_index: int = -100,
            reduction: str = "mean") -> tuple[Array, Cache]:
    """logits (M, C), target (M,) integers in [0, C) or ``ignore_index``."""
    xp = namespace(logits)
    shifted = logits - xp.amax(logits, axis=-1, keepdims=True)
    log_p = shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
    valid = target != ignore_index
    safe = xp.where(valid, target, 0)
    picked = log_p[_arange(target.shape[0], logits), safe]     # log p_{i, t_i}
    nll = xp.where(valid, -picked, 0.0)
    count = int(xp.sum(valid))
    if reduction == "none":
        loss = nll
    else:
        loss = xp.sum(nll)
        if reduction == "mean":
            loss = loss / count if count else loss * float("nan")
    return loss, Cache(log_p, safe, valid, count, reduction)


def backward(dloss: Array | float, cache: Cache) -> Array:
    """dL/dlogits; ``dloss`` is a scalar, or of shape (M,) for reduction "none".
    No in-place updates: torch can differentiate this backward again."""
    xp = namespace(cache.log_p)
    log_p, target, valid, count, reduction = cache
    p = xp.exp(log_p)
    is_target = _arange(log_p.shape[-1], log_p) == target[:, None]
    dz = xp.where(is_target, p - 1.0, p)               # p - e_t
    dz = dz * valid[:, None]                           # ignored rows: 0
    if reduction == "none":
        return dz * dloss[:, None]
    if reduction == "mean":
        return dz * (dloss / count if count else float("nan"))
    return dz * dloss


def _arange(n: int, like: Array) -> Array:
    if is_torch(like):
        import torch
        return torch.arange(n, device=like.device)
    return namespace(like).arange(n)
