"""Functional forms of the four layers, with torch.nn.functional's signatures.

``batch_norm`` is channels-last: input (N, C) or (N, ..., C), statistics over every
dimension but the last.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import _checks as check
from .nn._autograd import BatchNormFn, DropoutFn, LayerNormFn, RMSNormFn
from .ops import batch_norm as bn


def _flat(x: torch.Tensor, k: int) -> torch.Tensor:
    """(..., *normalized_shape) -> (M, prod(normalized_shape))."""
    n = 1
    for s in x.shape[x.dim() - k:]:
        n *= s
    return x.reshape(-1, n)


def layer_norm(input: torch.Tensor, normalized_shape: int | Sequence[int],
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the trailing ``normalized_shape``."""
    op = "layer_norm"
    shape = check.normalized_shape(op, normalized_shape)
    check.floating(op, input)
    check.trailing(op, input.shape, shape)
    check.param_shape(op, "weight", weight, shape)
    check.param_shape(op, "bias", bias, shape)
    y = LayerNormFn.apply(_flat(input, len(shape)), _flat1(weight), _flat1(bias), float(eps))
    return y.reshape(input.shape)


def rms_norm(input: torch.Tensor, normalized_shape: int | Sequence[int],
             weight: torch.Tensor | None = None, eps: float | None = None) -> torch.Tensor:
    """y = x / sqrt(mean(x^2) + eps) * weight; eps=None is the float32 (float64) machine eps."""
    op = "rms_norm"
    shape = check.normalized_shape(op, normalized_shape)
    check.floating(op, input)
    check.trailing(op, input.shape, shape)
    check.param_shape(op, "weight", weight, shape)
    if eps is None:
        eps = torch.finfo(torch.float64 if input.dtype == torch.float64 else torch.float32).eps
    y = RMSNormFn.apply(_flat(input, len(shape)), _flat1(weight), float(eps))
    return y.reshape(input.shape)


def batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None,
               running_var: torch.Tensor | None, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """Channels-last batch norm. In training it normalises with the batch's biased variance
    and, when running buffers are given, updates them in place with the unbiased one:
    ``running = (1 - momentum) * running + momentum * batch``."""
    op = "batch_norm"
    check.floating(op, input)
    check.batch_norm_input(op, input.shape, None, training, eps)
    c = input.shape[-1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        check.param_shape(op, name, t, (c,))
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{op}: running_mean and running_var are required when not training")
    x = input.reshape(-1, c)
    y, mean, var = BatchNormFn.apply(x, weight, bias, None if training else running_mean,
                                     None if training else running_var, float(eps))
    if training and running_mean is not None and running_var is not None:
        with torch.no_grad():
            new_mean, new_var = bn.update_running(running_mean, running_var, mean, var,
                                                  x.shape[0], momentum)
            running_mean.copy_(new_mean)
            running_var.copy_(new_var)
    return y.reshape(input.shape)


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True,
            inplace: bool = False) -> torch.Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p)."""
    op = "dropout"
    p = check.probability(op, p)
    check.floating(op, input)
    if not training or p == 0.0:
        return input
    y = DropoutFn.apply(input, p)
    return input.copy_(y) if inplace else y


def _flat1(p: torch.Tensor | None) -> torch.Tensor | None:
    return None if p is None else p.reshape(-1)
