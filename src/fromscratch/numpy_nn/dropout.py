from __future__ import annotations

import numpy as np

from .. import _checks as check
from ..ops import dropout as op
from .init import RNG, get_rng
from .module import Array, Module


class Dropout(Module):
    """Inverted dropout (ops/dropout.py): in training each element is zeroed with
    probability ``p`` and the rest scaled by 1/(1-p); identity in eval.

    The uniforms come from ``rng`` (a ``numpy.random.Generator``, a seed, or None for the
    engine's global generator), drawn in the input's dtype.
    """

    def __init__(self, p: float = 0.5, rng: RNG = None):
        super().__init__()
        self.p = check.probability("Dropout", p)
        self.rng = get_rng(rng)
        if not isinstance(self.rng, np.random.Generator):
            raise TypeError("Dropout: rng must be a numpy.random.Generator, a seed or None")

    def forward(self, x: Array) -> Array:
        check.floating("Dropout", x)
        self._cache = None
        if not self.training or self.p == 0.0:
            return x
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
        y, self._cache = op.forward(x, self.p, self.rng.random(x.shape, dtype=dtype))
        return y

    def backward(self, dout: Array) -> Array:
        return dout if self._cache is None else op.backward(dout, self._cache)

    def extra_repr(self) -> str:
        return f"p={self.p}"
