"""The seed notebook's NeuralNetwork (tests/fixtures/seed_notebook_nn.py, verbatim) and
our engine in the notebook's configuration (``fromscratch demo sine --seed-config``),
from the same initial weights, give the same loss curve.

The notebook steps along (out - y)/m, the gradient of half the MSE it reports, with
lr 0.3; our MSELoss's gradient is 2 (out - y)/m, so the same steps are lr 0.15.

Our layout is (samples, features), the notebook's (features, samples); we scale by 1/m
before the sums, it after. So the two differ in rounding at every step, and how that
rounding falls depends on the BLAS kernel (OPENBLAS_CORETYPE). With lr 0.3 and targets of
amplitude 20 the training is on the edge of stability for some seeds (the loss spikes to
hundreds), and there a one-ulp change of one initial weight moves the notebook's *own*
curve by more than 1e-9 after a few hundred epochs. Which epoch depends on the weight,
the direction and the kernel (seed 1: epoch 195 for some nudges, 346 for others, never for
others again), so one nudge measures nothing. The test asks the notebook itself, with an
ensemble of one-ulp nudges (four weights, both directions):

- seeds where no nudge moves the notebook's curve by 1e-9 (relative) are *stable*: there
  ours agrees with the notebook to 1e-9 over all 4000 epochs;
- on the others ours must behave as one more member of that ensemble: it agrees to 1e-9
  at least half as long as the earliest nudge does, and to 1e-6 at least 90% as long (the
  spike itself: 1e-9 grows to 1e-3 within ~10 epochs, so this epoch is sharp; ours, whose
  rounding differs at every step, not once, reaches it a few epochs before the nudges),
  and its final loss lies in the ensemble's range widened by that range's own width.

None of it depends on bit-exact BLAS results; the test holds under every OpenBLAS kernel.
"""
from __future__ import annotations

import contextlib
import functools
import io

import numpy as np
import pytest

from fromscratch.demos import sine
from tests.fixtures import seed_notebook_nn as notebook

EPOCHS = 4000
TOL = 1e-9
SPIKE_TOL = 1e-6
# one ulp up and down on two hidden and two output weights
NUDGES = [(name, index, direction) for name, index in
          [("w1", (0, 0)), ("w1", (12, 0)), ("w2", (0, 0)), ("w2", (0, 13))]
          for direction in (+1, -1)]


@functools.lru_cache(maxsize=None)
def notebook_curve(seed: int, nudge: tuple | None = None) -> np.ndarray:
    np.random.seed(seed)
    net = notebook.NeuralNetwork([1, 25, 1], learning_rate=0.3)
    if nudge is not None:
        name, index, direction = nudge
        w = net.parameters[name]
        w[index] = np.nextafter(w[index], direction * np.inf)
    x, y = notebook.generate_sine_data()
    with contextlib.redirect_stdout(io.StringIO()):
        net.train(x, y, epochs=EPOCHS, log_interval=EPOCHS + 1)
    return np.array(net.loss_history)


def ours_curve(seed: int) -> np.ndarray:
    return np.array(sine.train(sine.NOTEBOOK, seed, EPOCHS).losses)


def first_departure(a: np.ndarray, b: np.ndarray, tol: float = TOL) -> int:
    """First epoch where the relative difference exceeds tol (len(a) if none)."""
    bad = np.nonzero(np.abs(a - b) > tol * np.abs(b))[0]
    return int(bad[0]) if len(bad) else len(a)


def test_same_initial_weights():
    model, _ = sine.build(sine.NOTEBOOK, seed=1)
    np.random.seed(1)
    initial = notebook.NeuralNetwork([1, 25, 1], learning_rate=0.3).parameters
    for ours_key, theirs_key in [("0.weight", "w1"), ("0.bias", "b1"), ("2.weight", "w2"),
                                 ("2.bias", "b2")]:
        mine = model.params[ours_key]
        assert np.array_equal(mine, initial[theirs_key].reshape(mine.shape)), ours_key


@pytest.mark.parametrize("seed, final", [(0, 0.6072), (2, 0.06025)])
def test_final_losses_of_the_stable_seeds(seed, final):
    """Seeds 0 and 2 train calmly: the whole curve agrees and ends where the notebook's does."""
    theirs, ours = notebook_curve(seed), ours_curve(seed)
    assert first_departure(ours, theirs) == EPOCHS, _table(ours, theirs)
    assert ours[-1] == pytest.approx(final, rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_loss_curve_matches_the_notebook(seed):
    theirs, ours = notebook_curve(seed), ours_curve(seed)
    nudged = [notebook_curve(seed, n) for n in NUDGES]
    self_departure = min(first_departure(c, theirs) for c in nudged)
    self_spike = min(first_departure(c, theirs, SPIKE_TOL) for c in nudged)
    report = (f"seed {seed}: notebook vs its one-ulp nudges departs (1e-9) at epochs "
              f"{sorted(first_departure(c, theirs) for c in nudged)}, (1e-6) first at "
              f"{self_spike}; ours vs notebook at {first_departure(ours, theirs)} (1e-9), "
              f"{first_departure(ours, theirs, SPIKE_TOL)} (1e-6)\n" + _table(ours, theirs))
    if self_departure == EPOCHS:                       # stable: the whole curve
        assert first_departure(ours, theirs) == EPOCHS, report
        return
    assert first_departure(ours, theirs) >= self_departure // 2, report
    assert first_departure(ours, theirs, SPIKE_TOL) >= 0.9 * self_spike, report
    finals = np.array([c[-1] for c in nudged] + [theirs[-1]])
    width = finals.max() - finals.min()
    assert finals.min() - width <= ours[-1] <= finals.max() + width, (finals, report)


def _table(ours: np.ndarray, theirs: np.ndarray) -> str:
    idx = [0, 1, 10, 100, 1000, 2000, EPOCHS - 1]
    return "\n".join(f"epoch {i}: ours {ours[i]!r} notebook {theirs[i]!r}" for i in idx)
