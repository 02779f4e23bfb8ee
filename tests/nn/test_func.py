"""torch.func transforms work on the layers as on torch.nn's: per-sample gradients
(vmap over grad), jacrev, and grad of a BatchNorm in training; values equal torch.nn's."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from fromscratch import functional as F
from fromscratch import nn as fnn

PAIRS = {
    "LayerNorm": (lambda: fnn.LayerNorm(8), lambda: nn.LayerNorm(8)),
    "RMSNorm": (lambda: fnn.RMSNorm(8, eps=1e-6), lambda: nn.RMSNorm(8, eps=1e-6)),
}


def same_params(ours: nn.Module, theirs: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    ours.load_state_dict(theirs.state_dict())


def per_sample_grads(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p, xi):
        return functional_call(m, p, (xi[None],)).pow(3).sum()
    return vmap(grad(loss), in_dims=(None, 0))(params, x)


@pytest.mark.parametrize("name", PAIRS)
def test_per_sample_gradients_match_torch(name):
    ours, theirs = (make().double() for make in PAIRS[name])
    same_params(ours, theirs)
    x = torch.randn(5, 3, 8, dtype=torch.float64) * 2 + 0.5
    got, want = per_sample_grads(ours, x), per_sample_grads(theirs, x)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].shape == (5, 8)
        torch.testing.assert_close(got[k], want[k])


@pytest.mark.parametrize("name", PAIRS)
def test_jacobian_matches_torch(name):
    ours, theirs = (make().double() for make in PAIRS[name])
    same_params(ours, theirs)
    x = torch.randn(2, 8, dtype=torch.float64) + 1
    torch.testing.assert_close(jacrev(ours)(x), jacrev(theirs)(x))


def test_batch_norm_grad_in_training_matches_torch():
    """Without running statistics: torch.func refuses their in-place update, for torch.nn's
    BatchNorm as for ours (torch.func.replace_all_batch_norm_modules_ is torch's way out)."""
    ours = fnn.BatchNorm(8, track_running_stats=False).double()
    theirs = nn.BatchNorm1d(8, track_running_stats=False).double()
    same_params(ours, theirs)
    x = torch.randn(6, 8, dtype=torch.float64) * 3 - 1

    def f(m):
        return lambda xx: m(xx).pow(3).sum()
    torch.testing.assert_close(grad(f(ours))(x), grad(f(theirs))(x))


def test_dropout_under_vmap_draws_per_sample_masks():
    d = fnn.Dropout(0.5)
    x = torch.ones(64, 100)
    with pytest.raises(RuntimeError, match="randomness"):    # torch.func's default, as torch
        vmap(d)(x)
    y = vmap(d, randomness="different")(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert not (y == y[0]).all(dim=1).all()                   # masks differ across samples
    same = vmap(d, randomness="same")(x)
    assert (same == same[0]).all()


def test_batch_norm_under_vmap_in_training_says_why():
    """Under vmap each sample has its own batch statistics while the running buffers are one
    for all, so they cannot be updated in place: torch.nn.BatchNorm1d refuses with a
    RuntimeError, and so do ours, naming the running statistics and the way out (torch's
    generic in-place message named neither)."""
    x = torch.randn(3, 5, 4)
    with pytest.raises(RuntimeError, match="running_mean or running_var"):
        vmap(nn.BatchNorm1d(4))(x)
    for call in (fnn.BatchNorm(4), lambda xx: F.batch_norm(xx, torch.zeros(4), torch.ones(4),
                                                             training=True)):
        with pytest.raises(RuntimeError, match=r"running statistics \(running_mean, running_var\)"
                                               r" cannot be updated in place under "
                                               r"torch\.func\.vmap.*track_running_stats=False"):
            vmap(call)(x)


def test_batch_norm_under_vmap_without_running_statistics_matches_torch():
    """track_running_stats=False, in training, and eval: each sample normalised on its own
    rows, as torch.nn.BatchNorm1d."""
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    for make in (lambda: fnn.BatchNorm(4, track_running_stats=False).double(),
                 lambda: fnn.BatchNorm(4).double().eval()):
        ours = make()
        theirs = nn.BatchNorm1d(4, track_running_stats=ours.track_running_stats).double()
        theirs.train(ours.training)
        got = vmap(ours)(x)
        want = vmap(theirs)(x)                  # per sample (N, C): the same layout
        torch.testing.assert_close(got, want)
