"""The grammar of normalisation mistakes: at the reference's settings it is the reference
(fromscratch.ops), and each switch reproduces the mistake it is named after."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fromscratch.check.normmodel import (NormModel, estimate_eps, normalise, search, space)
from fromscratch.ops import batch_norm as bn
from fromscratch.ops import layer_norm as ln
from fromscratch.ops import rms_norm as rn

EPS = 1e-5
LN = NormModel(dims=(2,))
RMS = NormModel(dims=(2,), centre=False)
BN = NormModel(dims=(0, 1))


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 5, 9, generator=g, dtype=torch.float64) * 2 + 1


def test_reference_settings_are_the_reference(x):
    torch.testing.assert_close(normalise(x, LN, EPS), ln.forward(x, None, None, EPS)[0])
    torch.testing.assert_close(normalise(x, RMS, EPS), rn.forward(x, None, EPS)[0])
    want = bn.forward(x.reshape(-1, 9), None, None, EPS)[0].reshape(x.shape)
    torch.testing.assert_close(normalise(x, BN, EPS), want)


def test_each_switch_is_the_mistake_it_names(x):
    mean = x.mean(-1, keepdim=True)
    cases = {
        "unbiased-variance": (replace(LN, ddof=1),
                              (x - mean) / torch.sqrt(x.var(-1, keepdim=True) + EPS)),
        "floor-division": (replace(LN, floor=True),
                           (x - mean) // torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + EPS)),
        "eps-outside-sqrt": (replace(LN, eps="outside"),
                             (x - mean) / (x.std(-1, keepdim=True, unbiased=False) + EPS)),
        "sum-not-mean": (replace(RMS, total=True),
                         x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + EPS)),
        "missing-sqrt": (replace(RMS, root=False), x / (x.pow(2).mean(-1, keepdim=True) + EPS)),
        "no-mean-subtraction": (replace(LN, centre=False), normalise(x, RMS, EPS)),
        "wrong-dims": (replace(LN, dims=(1,)),
                       (x - x.mean(1, keepdim=True))
                       / torch.sqrt(x.var(1, keepdim=True, unbiased=False) + EPS)),
    }
    for name, (model, want) in cases.items():
        base = RMS if name in ("sum-not-mean", "missing-sqrt") else LN
        assert model.deviations(base) == [name]
        torch.testing.assert_close(normalise(x, model, EPS), want, msg=name)


def test_missing_keepdim_broadcasts_along_the_last_axis():
    g = torch.Generator().manual_seed(1)
    sq = torch.randn(6, 6, generator=g, dtype=torch.float64)
    m = NormModel(dims=(1,), keepdim=False)
    want = (sq - sq.mean(-1)) / torch.sqrt(sq.var(-1, unbiased=False) + EPS)
    torch.testing.assert_close(normalise(sq, m, EPS), want)
    assert normalise(torch.randn(4, 6, dtype=torch.float64), m, EPS) is None   # cannot run


def test_search_finds_the_fewest_switches(x):
    target = replace(BN, ddof=1, floor=True)
    got = normalise(x, target, EPS)
    found = search(got, x, EPS, space(BN, 3))
    assert found == target
    assert sorted(found.deviations(BN)) == ["floor-division", "unbiased-variance"]
    assert search(torch.zeros_like(x) + 7, x, EPS, space(BN, 3)) is None


def test_space_starts_at_the_reference():
    s = space(LN, 3)
    assert s[0] == LN and len(s) == len(set(s))
    assert all(len(m.deviations(LN)) <= 3 for m in s)


def test_estimate_eps_recovers_a_hard_coded_eps():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 16, generator=g, dtype=torch.float64) * 3e-3
    got = normalise(x, replace(LN, dims=(1,)), 1e-5)
    est = estimate_eps(got, x, replace(LN, dims=(1,)))
    assert abs(est / 1e-5 - 1) < 1e-6
