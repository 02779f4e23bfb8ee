"""LayerNorm: y = (x - mean) / sqrt(var + eps) * weight + bias over the last dimension,
with the biased variance. The reference is ``fromscratch.ops.layer_norm``."""
from __future__ import annotations

import torch

from ..ops import layer_norm as ln
from .findings import Report
from .normcheck import NormBattery, NormSpec, channels_first, missing_terms
from .probes import Subject, randn, rows_like_people_have


def reference(x, w, b, eps):
    y, cache = ln.forward(x, w, b, eps)
    return y, lambda dy: ln.backward(dy, cache)


def per_row(values: list[float], shape: tuple[int, ...]) -> torch.Tensor:
    """values repeated over the rows of ``shape``, as a (..., 1) column."""
    rows = 1
    for s in shape[:-1]:
        rows *= s
    t = torch.tensor(values, dtype=torch.float64).repeat(rows)[:rows]
    return t.reshape(shape[:-1] + (1,))


def small_variance(shape: tuple[int, ...], eps: float, gen: torch.Generator) -> torch.Tensor:
    """Rows whose variance is 0.01, 1 and 100 times eps, each off zero by a few stds."""
    std = (eps * per_row([0.01, 1.0, 100.0], shape)).sqrt()
    return randn(shape, gen) * std + 3 * std * randn(std.shape, gen)


def constant(shape: tuple[int, ...]) -> torch.Tensor:
    """Constant rows: 2 and -0.5 give exactly 0 / 0 without eps; 0.1 and 1000.1 leave
    rounding noise in x - mean."""
    return per_row([2.0, -0.5, 0.1, 1000.1], shape).expand(shape).contiguous()


def large_mean(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return (1e4 + randn(shape, gen)).float()


SPEC = NormSpec(
    kind="layernorm", name="LayerNorm", roles=("weight", "bias"), centre=True,
    ref_dims=lambda ndim: (ndim - 1,), reference=reference,
    probes=[(37, (4, 7, 37)), (37, (6, 37)), (8, (2, 4, 8))],
    ordinary=rows_like_people_have, small_variance=small_variance, constant=constant,
    large_mean=large_mean,
    titles={"unbiased-variance": "normalises with the unbiased variance (divides by n - 1); "
                                 "LayerNorm uses the biased one (divides by n)"},
    terms=missing_terms(),
)


def run(subject: Subject, report: Report) -> None:
    channels_first(subject, SPEC, report)
    NormBattery(subject, SPEC, report).run()
