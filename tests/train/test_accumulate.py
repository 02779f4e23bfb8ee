"""One process: fit's accumulation equals one step on the whole window taken as one batch."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fromscratch.train import fit, sum_and_count

from .helpers import (ce_sum, divide_by_k, large_batch, make_optimizer, max_diff,
                      params, token_batches, token_model, windows)

N_BATCHES = 11   # with k = 3: windows of 3, 3, 3 and a short last one of 2


def run_fit(k: int, optimizer: str = "sgd", loss_fn=ce_sum, epochs: int = 2,
            max_grad_norm: float | None = None, batches=None):
    model = token_model()
    opt, sched = make_optimizer(optimizer, model)
    history = fit(model, batches or token_batches(N_BATCHES), loss_fn, opt, scheduler=sched,
                  epochs=epochs, accumulation_steps=k, max_grad_norm=max_grad_norm,
                  progress=False)
    return model, history, sched


def run_large_batch(k: int, optimizer: str = "sgd", epochs: int = 2,
                    max_grad_norm: float | None = None):
    model = token_model()
    opt, sched = make_optimizer(optimizer, model)
    losses = large_batch(model, token_batches(N_BATCHES), k, opt, sched, epochs, max_grad_norm)
    return model, losses


def test_the_data_is_uneven():
    """The setting the test needs: a short last window and item counts that vary."""
    batches = token_batches(N_BATCHES)
    counts = [int((y != -100).sum()) for _, y in batches]
    assert len(windows(batches, 3)[-1]) == 2
    assert len(set(counts)) > 3, counts


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_fit_equals_large_batch(k, optimizer):
    model, history, sched = run_fit(k, optimizer)
    ref, ref_losses = run_large_batch(k, optimizer)
    diff = max_diff(params(model), params(ref))
    assert diff < 1e-12, f"k={k} {optimizer}: fit vs one large batch per window differ by {diff:.3g}"
    # the logged loss is the window's sum / N: torch's mean over the concatenated window
    assert history.loss == pytest.approx(ref_losses, rel=1e-12, abs=0)
    steps = 2 * math.ceil(N_BATCHES / k)
    assert history.steps == steps and sched.last_epoch == steps   # one scheduler step per step


def test_clipping_applies_once_to_the_full_gradient():
    model, history, _ = run_fit(3, "adam", max_grad_norm=0.05)
    ref, _ = run_large_batch(3, "adam", max_grad_norm=0.05)
    assert min(history.grad_norm) > 0.05, "the test needs every window to be clipped"
    assert max_diff(params(model), params(ref)) < 1e-12


def test_plain_mean_loss_is_weighted_right():
    """A loss_fn returning a mean over len(target) items: each micro-batch is weighted by
    its size, so the short last window and unequal micro-batches still come out right."""
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(b, 3, generator=g, dtype=torch.float64),
                torch.randn(b, 2, generator=g, dtype=torch.float64)) for b in (3, 5, 2, 4, 1)]

    def train(k: int, data, loss_fn):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
        fit(model, data, loss_fn, opt, accumulation_steps=k, epochs=2, progress=False)
        return params(model)

    mean = lambda out, y: F.mse_loss(out, y, reduction="none").sum(1).mean()  # noqa: E731
    merged = [(torch.cat([b[0] for b in w]), torch.cat([b[1] for b in w]))
              for w in windows(batches, 2)]
    diff = max_diff(train(2, batches, mean), train(1, merged, mean))
    assert diff < 1e-12, f"{diff:.3g}"


def test_logged_loss_does_not_depend_on_k():
    _, h1, _ = run_fit(1, epochs=1, batches=[tuple(torch.cat(t) for t in zip(*token_batches(N_BATCHES)))])
    for k in (N_BATCHES, 20):
        _, hk, _ = run_fit(k, epochs=1)
        assert hk.steps == 1 and hk.loss[0] == pytest.approx(h1.loss[0], rel=1e-13)
        assert hk.items == h1.items


def test_divide_by_k_differs():
    """The notebook's loop is measurably off on the same data; fit is not."""
    model = token_model()
    opt, sched = make_optimizer("sgd", model)
    divide_by_k(model, token_batches(N_BATCHES), 3, opt, sched, epochs=2)
    ref, _ = run_large_batch(3)
    exact, _, _ = run_fit(3)
    naive_err = max_diff(params(model), params(ref))
    exact_err = max_diff(params(exact), params(ref))
    print(f"max |param - large batch|: divide-by-k {naive_err:.3g}, fit {exact_err:.3g}")
    assert naive_err > 1e-3 and exact_err < 1e-12


def test_divide_by_k_is_right_only_when_everything_is_even():
    """With equal micro-batches and no short window the old loop is exact: the test above
    fails for the reasons the docs give, not for an unrelated one."""
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(4, 6, 4, generator=g, dtype=torch.float64),
                torch.randint(0, 3, (4, 6), generator=g)) for _ in range(6)]
    model = token_model()
    opt, sched = make_optimizer("sgd", model)
    divide_by_k(model, batches, 3, opt, sched)
    ref = token_model()
    opt, sched = make_optimizer("sgd", ref)
    large_batch(ref, batches, 3, opt, sched)
    assert max_diff(params(model), params(ref)) < 1e-12


def test_gradient_scaler_and_a_skipped_step():
    """A GradScaler changes nothing when gradients are finite (its scale is a power of
    two); a window whose gradient overflows is skipped, and so is the scheduler's step."""
    batches = token_batches(N_BATCHES)
    plain, h_plain, _ = run_fit(3, epochs=1)
    model = token_model()
    opt, sched = make_optimizer("sgd", model)
    h = fit(model, batches, ce_sum, opt, scheduler=sched, accumulation_steps=3,
            scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10), progress=False)
    assert h.skipped == [] and max_diff(params(model), params(plain)) < 1e-12

    bad = [(x.clone(), y) for x, y in batches]
    bad[4][0][0, 0, 0] = float("inf")                 # window 2 (micro-batches 3..5)
    model = token_model()
    opt, sched = make_optimizer("sgd", model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    h = fit(model, bad, ce_sum, opt, scheduler=sched, accumulation_steps=3, scaler=scaler,
            progress=False)
    assert h.skipped == [2]
    assert sched.last_epoch == h.steps - 1 == 3
    assert scaler.get_scale() == 2.0**9
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_window_without_items_takes_no_step():
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    y = torch.full((2, 6), -100)
    model = token_model()
    before = params(model)
    opt, _ = make_optimizer("sgd", model)
    with pytest.warns(UserWarning, match="no items"):
        h = fit(model, [(x, y)], ce_sum, opt, progress=False)
    assert h.steps == 0 and max_diff(params(model), before) == 0


def test_sum_and_count_forms():
    t = torch.tensor(6.0)
    assert sum_and_count((t, 3), None) == (t, 3.0)
    total, n = sum_and_count(torch.tensor(2.0), torch.zeros(4))
    assert float(total) == 8.0 and n == 4.0
    with pytest.raises(ValueError, match="sum_of_item_losses"):
        sum_and_count(torch.zeros(3), None)
    with pytest.raises(ValueError, match="length 3"):
        sum_and_count((t, 1, 2), None)


def test_bad_arguments():
    model = token_model()
    opt, _ = make_optimizer("sgd", model)
    with pytest.raises(ValueError, match="accumulation_steps"):
        fit(model, [], ce_sum, opt, accumulation_steps=0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        fit(model, [], ce_sum, opt, max_grad_norm=0.0)
    with pytest.raises(TypeError, match=r"\(input, target\)"):
        fit(model, [(torch.zeros(1, 6, 4, dtype=torch.float64),)], ce_sum, opt, progress=False)
