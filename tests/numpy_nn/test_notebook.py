"""The seed notebook's NeuralNetwork (tests/fixtures/seed_notebook_nn.py, verbatim) and
our engine in the notebook's configuration (``fromscratch demo sine --seed-config``),
from the same initial weights, give the same loss curve.

The notebook steps along (out - y)/m, the gradient of half the MSE it reports, with
lr 0.3; our MSELoss's gradient is 2 (out - y)/m, so the same steps are lr 0.15.

With lr 0.3 and targets of amplitude 20 the notebook's training is on the edge of
stability for some seeds (the loss spikes to hundreds): there, a one-ulp change of one
initial weight moves the notebook's *own* loss curve by more than 1e-9 after a few
hundred epochs. Two implementations whose arithmetic differs only in rounding (our
layout is (samples, features), the notebook's (features, samples); we scale by 1/m before
the sums, it after) cannot agree better than the notebook agrees with itself, so:

- on seeds where the notebook is stable under that one-ulp change, the curves agree to
  1e-9 (relative) over all 4000 epochs;
- on the others they agree to 1e-9 up to where the notebook departs from itself, and the
  test shows that departure.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from fromscratch.demos import sine
from tests.fixtures import seed_notebook_nn as notebook

EPOCHS = 4000
TOL = 1e-9


def notebook_curve(seed: int, nudge: bool = False) -> tuple[np.ndarray, dict]:
    np.random.seed(seed)
    net = notebook.NeuralNetwork([1, 25, 1], learning_rate=0.3)
    initial = {k: v.copy() for k, v in net.parameters.items()}
    if nudge:                                          # one ulp on one weight
        net.parameters["w2"][0, 0] = np.nextafter(net.parameters["w2"][0, 0], np.inf)
    x, y = notebook.generate_sine_data()
    with contextlib.redirect_stdout(io.StringIO()):
        net.train(x, y, epochs=EPOCHS, log_interval=EPOCHS + 1)
    return np.array(net.loss_history), initial


def first_departure(a: np.ndarray, b: np.ndarray) -> int:
    """First epoch where the relative difference exceeds TOL (len(a) if none)."""
    bad = np.nonzero(np.abs(a - b) > TOL * np.abs(b))[0]
    return int(bad[0]) if len(bad) else len(a)


def test_same_initial_weights():
    model, _ = sine.build(sine.NOTEBOOK, seed=1)
    _, initial = notebook_curve(1)
    for ours_key, theirs_key in [("0.weight", "w1"), ("0.bias", "b1"), ("2.weight", "w2"),
                                 ("2.bias", "b2")]:
        mine = model.params[ours_key]
        assert np.array_equal(mine, initial[theirs_key].reshape(mine.shape)), ours_key


@pytest.mark.parametrize("seed", [0, 2])
def test_issue_figures(seed):
    """The issue quotes 0.6 (seed 0) and 0.06 (seed 2) as the notebook's final losses."""
    theirs, _ = notebook_curve(seed)
    ours = np.array(sine.train(sine.NOTEBOOK, seed, EPOCHS).losses)
    assert first_departure(ours, theirs) == EPOCHS, _table(ours, theirs)
    assert ours[-1] == pytest.approx({0: 0.6072, 2: 0.06025}[seed], rel=1e-3)


def test_loss_curves_match_the_notebook_seeds_0_to_9():
    rows, failures = [], []
    for seed in range(10):
        theirs, _ = notebook_curve(seed)
        nudged, _ = notebook_curve(seed, nudge=True)
        ours = np.array(sine.train(sine.NOTEBOOK, seed, EPOCHS).losses)
        self_departure = first_departure(nudged, theirs)
        our_departure = first_departure(ours, theirs)
        rows.append(f"seed {seed}: notebook vs notebook+1ulp departs at epoch {self_departure}, "
                    f"ours vs notebook at {our_departure}; max rel diff "
                    f"{np.max(np.abs(ours - theirs) / np.abs(theirs)):.1e}")
        if self_departure == EPOCHS:                   # stable: the whole curve
            ok = our_departure == EPOCHS
        else:                                          # unstable: as far as the notebook itself
            ok = our_departure >= 0.9 * self_departure
        if not ok:
            failures.append(seed)
    table = "\n".join(rows)
    print(table)
    assert not failures, f"seeds {failures} disagree with the notebook:\n{table}"
    stable = sum(" departs at epoch 4000," in r for r in rows)
    assert stable >= 5, f"expected most seeds to be stable:\n{table}"


def _table(ours: np.ndarray, theirs: np.ndarray) -> str:
    idx = [0, 1, 10, 100, 1000, 2000, EPOCHS - 1]
    return "\n".join(f"epoch {i}: ours {ours[i]!r} notebook {theirs[i]!r}" for i in idx)
