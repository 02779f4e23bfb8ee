"""The maths: one module per op, each ``forward(...) -> (out, cache)`` and ``backward(dout, cache)``.

Every function works on NumPy arrays and torch tensors alike (see ``_xp``); the NumPy
engine, the torch modules and the checker all call these and re-derive nothing.
"""
from . import batch_norm, dropout, layer_norm, rms_norm
from . import cross_entropy, linear, mse_loss, relu, sigmoid, tanh  # the NumPy engine's

__all__ = ["batch_norm", "dropout", "layer_norm", "rms_norm",
           "cross_entropy", "linear", "mse_loss", "relu", "sigmoid", "tanh"]
