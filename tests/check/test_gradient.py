"""`fromscratch check gradient`: analytic gradients of NumPy networks against finite
differences of their own reported loss."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fromscratch.check.gradient import check_gradient, load_network, numeric_gradient
from fromscratch.check.loader import LoadError

ROOT = Path(__file__).resolve().parents[1] / "fixtures"
NETS = ROOT / "check" / "numpy_nets.py"


@pytest.mark.parametrize("layers", [[1, 25, 1], [3, 8, 1]])
def test_notebook_network_differentiates_half_its_loss(layers):
    report = check_gradient(f"{ROOT / 'seed_notebook_nn.py'}:NeuralNetwork", layers)
    assert report.ids() == {"gradient-scaled": "wrong"}
    f = report.findings[0]
    assert f.title == "the gradient is that of half the reported loss"
    assert "(output - y)/m" in f.cause
    assert all(abs(row["ratio"] - 0.5) < 1e-6 for row in report.table)


def test_numpy_nn_model_from_a_factory_passes():
    report = check_gradient(f"{NETS}:make_mlp")
    assert report.ids() == {}
    assert [row["parameter"] for row in report.table] == ["0.weight", "0.bias", "2.weight",
                                                          "2.bias"]
    assert max(row["error"] for row in report.table) < 1e-6


def test_numpy_nn_class_with_no_argument_constructor_passes():
    assert check_gradient(f"{NETS}:SineNet").ids() == {}


def test_wrong_parameter_gradient_is_named():
    report = check_gradient(f"{NETS}:make_buggy")
    assert report.ids() == {"gradient-wrong": "wrong"}
    (line,) = report.findings[0].evidence
    assert line.startswith("0.bias:") and "a mean over the 8 samples" in line
    ok = {row["parameter"]: row["ok"] for row in report.table}
    assert ok == {"0.weight": True, "0.bias": False, "2.weight": True, "2.bias": True}


def test_numeric_gradient_of_a_quadratic_is_exact():
    net = load_network(f"{NETS}:make_mlp", [], 8)
    p = net.params["2.bias"]
    idx = np.arange(p.size)
    num = numeric_gradient(net, p, idx)
    assert np.allclose(num, net.grads()["2.bias"], rtol=1e-7, atol=1e-9)


def test_not_a_network_is_a_load_error():
    with pytest.raises(LoadError, match="neither a numpy_nn-style module"):
        check_gradient(f"{ROOT / 'seed_notebook_nn.py'}:generate_sine_data")
