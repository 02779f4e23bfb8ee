from __future__ import annotations

import numpy as np

from .. import _checks as check
from ..ops import linear as op
from . import init as initializers
from .module import Array, Module


class Linear(Module):
    """y = x W^T + b, x of shape (..., in_features); ``weight`` (out, in), ``bias`` (out,).

    ``init``: "torch" (torch.nn.Linear's default), "xavier" (the notebook's Glorot uniform,
    zero bias) or "he" (for ReLU); see ``numpy_nn.init``. Parameters are float64 unless
    ``dtype`` says otherwise.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: str = "torch", rng: initializers.RNG = None,
                 dtype: np.dtype | type = np.float64):
        super().__init__()
        # 0 is a size torch.nn.Linear takes (an empty layer); a float, str or bool is not
        self.in_features = check.size("Linear", "in_features", in_features, minimum=0)
        self.out_features = check.size("Linear", "out_features", out_features, minimum=0)
        self.init = init
        w, b = initializers.linear(self.in_features, self.out_features, init, bias, rng, dtype)
        self._add_param("weight", w)
        if b is not None:
            self._add_param("bias", b)

    def forward(self, x: Array) -> Array:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"Linear: input of shape {x.shape} does not end in "
                             f"in_features={self.in_features}")
        check.floating("Linear", x)
        y, self._cache = op.forward(x, self.params["weight"], self.params.get("bias"))
        return y

    def backward(self, dout: Array) -> Array | None:
        dx, dw, db = op.backward(dout, self._cache, self.input_grad)
        self._accumulate("weight", dw)
        if db is not None:
            self._accumulate("bias", db)
        return dx

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={'bias' in self.params}, init={self.init!r}")
