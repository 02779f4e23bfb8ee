"""The shortest numpy_nn training loop, as a user first writes it (README.md's NumPy engine
example, run for 4000 epochs), in float64 and float32: it trains as written."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_snippet_as_written(dtype):
    x = np.linspace(0, 1, 100, dtype=dtype).reshape(100, 1)
    y = (20 * np.sin(2 * np.pi * x)).astype(dtype)
    from fromscratch import numpy_nn as nn
    nn.manual_seed(0)
    first = None

    # ---- the snippet, verbatim ----
    from fromscratch import numpy_nn as nn
    model = nn.Sequential(nn.Linear(1, 25), nn.Sigmoid(), nn.Linear(25, 1))
    loss_fn = nn.MSELoss()
    opt = nn.SGD(model, lr=0.3)
    for epoch in range(4000):
        pred = model.forward(x)
        loss = loss_fn.forward(pred, y)
        model.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
        # ---- end of the snippet ----
        first = loss if first is None else first

    assert pred.shape == (100, 1)
    assert np.isfinite(loss)
    # mean(y^2) = 200: predicting 0 everywhere scores ~200; the trained network far less
    assert first > 150 and loss < 0.15 * first, f"loss {first:.3g} -> {loss:.3g}"
    assert all(g is None for g in model.grads.values())
