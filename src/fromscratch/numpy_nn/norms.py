"""LayerNorm, RMSNorm and BatchNorm (channels-last) over ops/layer_norm.py, ops/rms_norm.py
and ops/batch_norm.py. Arguments, defaults, parameter and buffer names are torch.nn's."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import _checks as check
from ..ops import batch_norm as bn
from ..ops import layer_norm as ln
from ..ops import rms_norm as rms
from .module import Array, Module


class _TrailingNorm(Module):
    """Shared by LayerNorm and RMSNorm: normalise over the trailing ``normalized_shape``,
    flattened to one axis of n = prod(normalized_shape) for the op."""

    def __init__(self, normalized_shape: int | Sequence[int], elementwise_affine: bool,
                 bias: bool, dtype: np.dtype | type):
        super().__init__()
        name = type(self).__name__
        self.normalized_shape = check.normalized_shape(name, normalized_shape)
        self.elementwise_affine = elementwise_affine
        self.n = int(np.prod(self.normalized_shape))
        if elementwise_affine:
            self._add_param("weight", np.ones(self.normalized_shape, dtype=dtype))
            if bias:
                self._add_param("bias", np.zeros(self.normalized_shape, dtype=dtype))

    def _flat(self, x: Array) -> Array:
        name = type(self).__name__
        check.floating(name, x)
        check.trailing(name, x.shape, self.normalized_shape)
        self._shape = x.shape
        return x.reshape(-1, self.n)

    def _param(self, key: str) -> Array | None:
        p = self.params.get(key)
        return None if p is None else p.reshape(self.n)

    def _add(self, key: str, g: Array | None) -> None:
        if g is not None:
            self._accumulate(key, g.reshape(self.normalized_shape))

    def extra_repr(self) -> str:
        # the settings LayerNorm and RMSNorm share; each subclass validates and sets eps
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class LayerNorm(_TrailingNorm):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, statistics over the trailing
    ``normalized_shape`` (biased variance)."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True,
                 dtype: np.dtype | type = np.float64):
        super().__init__(normalized_shape, elementwise_affine, bias, dtype)
        self.eps = check.epsilon("LayerNorm", eps)

    def forward(self, x: Array) -> Array:
        y, self._cache = ln.forward(self._flat(x), self._param("weight"), self._param("bias"),
                                    self.eps)
        return y.reshape(self._shape)

    def backward(self, dout: Array) -> Array:
        dx, dw, db = ln.backward(dout.reshape(-1, self.n), self._cache)
        self._add("weight", dw)
        self._add("bias", db)
        return dx.reshape(self._shape)


class RMSNorm(_TrailingNorm):
    """y = x / sqrt(mean(x^2) + eps) * weight over the trailing ``normalized_shape``;
    ``eps=None`` is the machine epsilon of float32 (float64 for float64 input), as torch."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float | None = None,
                 elementwise_affine: bool = True, dtype: np.dtype | type = np.float64):
        super().__init__(normalized_shape, elementwise_affine, False, dtype)
        self.eps = None if eps is None else check.epsilon("RMSNorm", eps)

    def forward(self, x: Array) -> Array:
        x2 = self._flat(x)
        eps = self.eps
        if eps is None:
            eps = float(np.finfo(np.float64 if x.dtype == np.float64 else np.float32).eps)
        y, self._cache = rms.forward(x2, self._param("weight"), eps)
        return y.reshape(self._shape)

    def backward(self, dout: Array) -> Array:
        dx, dw = rms.backward(dout.reshape(-1, self.n), self._cache)
        self._add("weight", dw)
        return dx.reshape(self._shape)


class BatchNorm(Module):
    """Batch normalisation, channels-last: input (N, C) or (N, ..., C), statistics per
    channel over every other axis. As ``torch.nn.BatchNorm1d``: training normalises with
    the batch's biased variance and updates ``running_mean`` / ``running_var`` (the
    unbiased variance) with ``momentum`` (None: cumulative average over
    ``num_batches_tracked``); eval normalises with the running statistics, or with the
    batch's own when ``track_running_stats=False``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 dtype: np.dtype | type = np.float64):
        super().__init__()
        name = type(self).__name__
        self.num_features = check.size(name, "num_features", num_features)
        self.eps, self.momentum = check.epsilon(name, eps), check.momentum(name, momentum)
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self._add_param("weight", np.ones(num_features, dtype=dtype))
            self._add_param("bias", np.zeros(num_features, dtype=dtype))
        if track_running_stats:
            self.buffers["running_mean"] = np.zeros(num_features, dtype=dtype)
            self.buffers["running_var"] = np.ones(num_features, dtype=dtype)
            self.buffers["num_batches_tracked"] = np.zeros((), dtype=np.int64)

    def forward(self, x: Array) -> Array:
        name = type(self).__name__
        check.floating(name, x)
        check.batch_norm_input(name, x.shape, self.num_features, self.training, self.eps)
        self._shape = x.shape
        x2 = x.reshape(-1, self.num_features)
        w, b = self.params.get("weight"), self.params.get("bias")
        if self.training or not self.track_running_stats:
            y, self._cache, mean, var = bn.forward(x2, w, b, self.eps)
            if self.training and self.track_running_stats:
                self._update_running(mean, var, x2.shape[0])
        else:
            y, self._cache, _, _ = bn.forward(x2, w, b, self.eps, self.buffers["running_mean"],
                                              self.buffers["running_var"], batch_stats=False)
        return y.reshape(x.shape)

    def _update_running(self, mean: Array, var: Array, count: int) -> None:
        buf = self.buffers
        buf["num_batches_tracked"] += 1                # counted even when empty, as torch
        if count == 0:           # no statistics (0/0 is NaN): leave the running ones, as torch
            return
        momentum = (1.0 / float(buf["num_batches_tracked"]) if self.momentum is None
                    else self.momentum)
        bn.update_running_(buf["running_mean"], buf["running_var"], mean, var, count, momentum)

    def backward(self, dout: Array) -> Array:
        dx, dw, db = bn.backward(dout.reshape(-1, self.num_features), self._cache)
        if dw is not None:
            self._accumulate("weight", dw)
        if db is not None:
            self._accumulate("bias", db)
        return dx.reshape(self._shape)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")
