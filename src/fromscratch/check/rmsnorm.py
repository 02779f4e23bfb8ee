"""RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight over the last dimension, no mean
subtracted, no bias; eps=None is the machine epsilon. The reference is
``fromscratch.ops.rms_norm``."""
from __future__ import annotations

import torch

from ..ops import rms_norm as rn
from .findings import Report
from .layernorm import per_row
from .normcheck import NormBattery, NormSpec, channels_first
from .probes import Subject, randn, rows_like_people_have


def reference(x, w, b, eps):
    y, cache = rn.forward(x, w, eps)

    def backward(dy):
        dx, dw = rn.backward(dy, cache)
        return dx, dw, None
    return y, backward


def small_variance(shape: tuple[int, ...], eps: float, gen: torch.Generator) -> torch.Tensor:
    """Rows whose mean square is 0.01, 1 and 100 times eps."""
    return randn(shape, gen) * (eps * per_row([0.01, 1.0, 100.0], shape)).sqrt()


def constant(shape: tuple[int, ...]) -> torch.Tensor:
    """Zero rows (0 / 0 without eps) and constant ones (which RMSNorm maps to +-1)."""
    return per_row([0.0, 2.0, -0.5, 0.0], shape).expand(shape).contiguous()


SPEC = NormSpec(
    kind="rmsnorm", name="RMSNorm", roles=("weight",), centre=False,
    ref_dims=lambda ndim: (ndim - 1,), reference=reference,
    probes=[(37, (4, 7, 37)), (37, (6, 37)), (8, (2, 4, 8))],
    ordinary=rows_like_people_have, small_variance=small_variance, constant=constant,
    large_mean=None,
    terms={frozenset({"var"}): "the -xhat * mean(g * xhat) term is missing (the RMS is "
                               "treated as a constant)"},
)


def run(subject: Subject, report: Report) -> None:
    channels_first(subject, SPEC, report)
    NormBattery(subject, SPEC, report).run()
