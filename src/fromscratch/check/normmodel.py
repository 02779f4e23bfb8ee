r"""A small grammar of the mistakes people make when they normalise, to explain a difference.

The reference itself always comes from ``fromscratch.ops``. When a person's layer differs
from it, the checker asks which *mistaken* formula reproduces their output exactly; that
formula names the mistake. Each model is the reference with some switches flipped:

    dims      the axes reduced over                 (LayerNorm: the last; BatchNorm: all but it)
    centre    subtract the mean?                    (RMSNorm does not)
    ddof      divide the sum of squares by count - ddof     (1: unbiased, torch.var's default)
    total     the sum of squares instead of the mean        (x.norm())
    root      divide by sqrt(v)?                     (False: by v itself)
    keepdim   statistics keep the reduced axes?      (False: they broadcast right-aligned)
    eps       "inside" sqrt(v + eps) | "outside" sqrt(v) + eps | "none" sqrt(v)
    floor     (x - mu) // s instead of (x - mu) / s
    eps_value an eps other than the layer's own

so with all switches at the reference's setting, for a row or channel of ``count`` values:

    mu = mean(x)   v = sum((x - mu)^2) / (count - ddof)   xhat = (x - mu) / sqrt(v + eps)

``search`` tries models in order of how many switches they flip (fewest first) and returns
the first whose output agrees with the person's; ``detach`` reproduces a forward whose
statistics were detached, so autograd through it gives the gradient such a layer has.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import torch


@dataclass(frozen=True)
class NormModel:
    dims: tuple[int, ...]
    centre: bool = True
    ddof: int = 0
    total: bool = False
    root: bool = True
    keepdim: bool = True
    eps: str = "inside"
    floor: bool = False
    eps_value: float | None = None

    def deviations(self, ref: NormModel) -> list[str]:
        """The finding ids this model differs from ``ref`` by."""
        d = []
        if self.dims != ref.dims:
            d.append("wrong-dims")
        if self.centre != ref.centre:
            d.append("no-mean-subtraction" if ref.centre else "subtracts-mean")
        if self.ddof != ref.ddof:
            d.append("unbiased-variance")
        if self.total != ref.total:
            d.append("sum-not-mean")
        if self.root != ref.root:
            d.append("missing-sqrt")
        if self.keepdim != ref.keepdim:
            d.append("missing-keepdim")
        if self.eps != ref.eps:
            d.append({"outside": "eps-outside-sqrt", "none": "no-eps"}.get(self.eps, "eps"))
        if self.eps_value is not None:
            d.append("eps-ignored")
        if self.floor != ref.floor:
            d.append("floor-division")
        return d


def normalise(x: torch.Tensor, m: NormModel, eps: float,
              detach: frozenset[str] = frozenset()) -> torch.Tensor | None:
    """xhat under model ``m`` (None where the model cannot run on this shape)."""
    e = m.eps_value if m.eps_value is not None else eps
    dims = m.dims
    count = 1
    for d in dims:
        count *= x.shape[d]
    mu = x.mean(dims, keepdim=True) if m.centre else None
    if mu is not None and "mean" in detach:
        mu = mu.detach()
    xc = x - mu if mu is not None else x
    ss = (xc * xc).sum(dims, keepdim=True)
    if not m.total and count - m.ddof <= 0:
        return None
    v = ss if m.total else ss / (count - m.ddof)
    if "var" in detach:
        v = v.detach()
    if m.root:
        s = torch.sqrt(v + e) if m.eps == "inside" else (
            torch.sqrt(v) + e if m.eps == "outside" else torch.sqrt(v))
    else:
        s = v if m.eps == "none" else v + e
    if not m.keepdim:                  # statistics of shape x.shape minus dims, broadcast
        try:
            num = x - mu.squeeze(dims) if mu is not None else x
            s = s.squeeze(dims)
            out = torch.div(num, s, rounding_mode="floor") if m.floor else num / s
        except RuntimeError:
            return None
        return out if out.shape == x.shape else None
    return torch.div(xc, s, rounding_mode="floor") if m.floor else xc / s


def agree(got: torch.Tensor, want: torch.Tensor, floor: bool = False,
          rtol: float = 1e-4, atol: float = 1e-5, floor_share: float = 0.99) -> bool:
    """Same values (NaN where NaN). Floor-divided outputs are integers and may differ at a
    boundary by rounding, so they agree when at most 1% (``1 - floor_share``) of the
    entries differ."""
    if got.shape != want.shape:
        return False
    got, want = got.double(), want.double()
    if floor:
        same = (got == want) | (torch.isnan(got) & torch.isnan(want))
        return bool(same.double().mean() >= floor_share)
    return bool(torch.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True))


def space(ref: NormModel, ndim: int, max_deviations: int = 3) -> list[NormModel]:
    """Every model within ``max_deviations`` switches of ``ref``, fewest switches first."""
    subsets = [tuple(c) for k in range(1, ndim + 1)
               for c in itertools.combinations(range(ndim), k)]
    dims_options = [ref.dims] + [d for d in subsets if d != ref.dims]
    models: list[NormModel] = []
    for dims, centre, ddof, total, root, keepdim, floor in itertools.product(
            dims_options, (ref.centre, not ref.centre), (0, 1), (False, True), (True, False),
            (True, False), (False, True)):
        if (ddof and (total or not centre)):
            continue
        m = NormModel(dims, centre, ddof, total, root, keepdim, ref.eps, floor)
        if len(m.deviations(ref)) <= max_deviations:
            models.append(m)
    return sorted(models, key=lambda m: len(m.deviations(ref)))   # stable: enumeration order


def search(got: torch.Tensor, x: torch.Tensor, eps: float,
           models: Iterable[NormModel]) -> NormModel | None:
    """The first model whose xhat agrees with ``got`` (the layer's output with weight 1, bias 0).

    Where only two values are reduced, n - 1 = 1 and the unbiased variance *is* the sum of
    squares; the commoner mistake (torch.var's default n - 1) is named then."""
    for m in models:
        h = normalise(x, m, eps)
        if h is not None and agree(got, h, m.floor):
            if m.total and not m.ddof:
                unbiased = replace(m, total=False, ddof=1)
                h1 = normalise(x, unbiased, eps)
                if h1 is not None and agree(got, h1, m.floor):
                    return unbiased
            return m
    return None


def eps_variants(m: NormModel) -> Iterator[NormModel]:
    """``m`` with eps inside the root, outside it, and absent, in that order."""
    for form in ("inside", "outside", "none"):
        yield replace(m, eps=form, eps_value=None)


def estimate_eps(got: torch.Tensor, x: torch.Tensor, m: NormModel) -> float | None:
    """The eps that makes model ``m`` (eps inside the root) reproduce ``got``.

    Per row (or channel) got = xc * k with k = 1 / sqrt(v + eps'), so eps' = 1/k^2 - v; the
    median over rows. None where the model has no root or floors its output.
    """
    if m.floor or not m.root or not m.keepdim:
        return None
    dims = m.dims
    xc = x - x.mean(dims, keepdim=True) if m.centre else x
    count = 1
    for d in dims:
        count *= x.shape[d]
    ss = (xc * xc).sum(dims, keepdim=True)
    v = ss if m.total else ss / (count - m.ddof)
    k = (got.double() * xc).sum(dims, keepdim=True) / ss
    est = 1.0 / (k * k) - v
    est = est[torch.isfinite(est)]
    return float(est.median()) if est.numel() else None


def normalise_with(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, m: NormModel,
                   eps: float) -> torch.Tensor:
    """(x - mean) / s(var) with given statistics (BatchNorm in eval), eps and floor as in m."""
    e = m.eps_value if m.eps_value is not None else eps
    if m.root:
        s = torch.sqrt(var + e) if m.eps == "inside" else (
            torch.sqrt(var) + e if m.eps == "outside" else torch.sqrt(var))
    else:
        s = var if m.eps == "none" else var + e
    xc = x - mean
    return torch.div(xc, s, rounding_mode="floor") if m.floor else xc / s
