"""Input validation shared by every front-end: each error names what was wrong."""
from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Sequence

import numpy as np

from .ops._xp import is_torch


class ShapeError(ValueError, RuntimeError):
    """Shapes that do not fit. A ValueError, and a RuntimeError as torch raises for these."""


class DtypeError(TypeError, RuntimeError):
    """A dtype the op cannot take. A TypeError, and a RuntimeError as torch raises for these."""


class DeviceError(ValueError, RuntimeError):
    """Tensors on different devices. A ValueError, and a RuntimeError as torch raises for these."""


def _dtype_name(x: Any) -> str:
    return str(getattr(x, "dtype", type(x).__name__))


def _describe(value: Any) -> str:
    """The type beside the value, so that '768' and 768 read differently in a message."""
    return f"{type(value).__name__} {value!r}"


def is_floating(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    if hasattr(dtype, "is_floating_point"):        # torch.dtype
        return bool(dtype.is_floating_point)
    kind = getattr(dtype, "kind", None)            # numpy dtype
    return kind == "f"


def floating(op: str, x: Any, name: str = "input") -> None:
    if not is_floating(x):
        raise DtypeError(f"{op}: {name} must be a floating-point tensor, "
                         f"got dtype {_dtype_name(x)}")


def tensor(op: str, x: Any, name: str = "input") -> None:
    """``x`` is a torch.Tensor; a NumPy array would otherwise fail deep inside with an
    AttributeError. A TypeError, as torch.nn.functional raises."""
    if not is_torch(x):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")


# --- sizes and numbers -----------------------------------------------------------------------

def _index(value: Any) -> int | None:
    """``value`` as an int if it is an integer (Python's, NumPy's, a one-element integer
    tensor), else None. Not a bool: True where a size belongs is a slip, not 1."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def size(op: str, name: str, value: Any, minimum: int = 1) -> int:
    """A layer's size (``num_features``, ``in_features``): an int >= ``minimum``. 768.0
    and '768' are TypeErrors, as in torch, and so is True (a slip, not 1); a size below
    ``minimum`` is a ShapeError (torch builds a BatchNorm1d(0) that fails at its first
    call)."""
    n = _index(value)
    if n is None:
        raise TypeError(f"{op}: {name} must be an int, got {_describe(value)}")
    if n < minimum:
        raise ShapeError(f"{op}: {name} must be >= {minimum}, got {n}")
    return n


def normalized_shape(op: str, shape: int | Sequence[int]) -> tuple[int, ...]:
    """An int or a sequence of ints, as torch. A str is a sequence too, of characters:
    '768' must not become (7, 6, 8)."""
    # a tuple or list is never an index: asked anyway, operator.index raises a TypeError
    # that torch 2.11's torch.compile turns into an internal error instead of letting it
    # be caught (nn.LayerNorm's normalized_shape is a tuple on every call)
    n = None if isinstance(shape, (tuple, list)) else _index(shape)
    if n is None and (isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__")):
        raise TypeError(f"{op}: normalized_shape must be an int or a sequence of ints, "
                        f"got {_describe(shape)}")
    dims = (n,) if n is not None else tuple(_index(s) for s in shape)
    if None in dims:
        raise TypeError(f"{op}: normalized_shape must be an int or a sequence of ints, "
                        f"got {_describe(shape)}")
    if len(dims) == 0:
        raise ShapeError(f"{op}: normalized_shape must have at least one dimension, got ()")
    if any(s <= 0 for s in dims):
        raise ShapeError(f"{op}: normalized_shape must be positive, got {dims}")
    return dims


def _is_real_number(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):
        return True
    # a 0-d tensor or array of a real dtype, outside autograd
    return (getattr(value, "ndim", None) == 0 and not getattr(value, "requires_grad", False)
            and (is_floating(value) or _index(value) is not None))


def real(op: str, name: str, value: Any) -> float:
    """``value`` as a float: a Python or NumPy real number, or a 0-d tensor or array that
    needs no gradient (torch takes those too). Refused: a str (float() would parse
    '1e-5'), a bool (``F.dropout(x, True)`` meant training=True, not p=1) and a tensor
    that requires grad (float() would cut it from the graph; torch refuses it too)."""
    if type(value) is float:                       # the usual case first: this runs per call
        return value
    if not _is_real_number(value):
        raise TypeError(f"{op}: {name} must be a real number, got {_describe(value)}")
    return float(value)


def non_negative(op: str, name: str, value: Any) -> float:
    v = real(op, name, value)
    if not v >= 0.0:                               # also refuses NaN
        raise ValueError(f"{op}: {name} must be >= 0, got {value}")
    return v


def epsilon(op: str, value: Any) -> float:
    """A finite eps >= 0. torch's norms take a negative one and compute 1 / sqrt(var + eps):
    NaN where var < -eps, and a quietly wrong scale elsewhere; a NaN or infinite eps makes
    every output NaN or 0. None of these is a number anyone wants, so they are refused."""
    e = non_negative(op, "eps", value)
    if not math.isfinite(e):
        raise ValueError(f"{op}: eps must be finite, got {value}")
    return e


def finite(op: str, name: str, value: Any) -> float:
    v = real(op, name, value)
    if not math.isfinite(v):
        raise ValueError(f"{op}: {name} must be finite, got {value}")
    return v


def choice(op: str, name: str, value: Any, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{op}: {name} must be one of {', '.join(map(repr, allowed))}, "
                         f"got {_describe(value)}")
    return value


def unit_interval(op: str, name: str, value: Any) -> float:
    v = real(op, name, value)
    if not 0.0 <= v <= 1.0:                        # also refuses NaN
        raise ValueError(f"{op}: {name} has to be between 0 and 1, but got {value}")
    return v


def probability(op: str, p: Any) -> float:
    return unit_interval(op, "p (the dropout probability)", p)


def momentum(op: str, value: Any) -> float | None:
    """None (the cumulative average) or the new batch's weight in [0, 1]. torch takes 2 or
    -1, which push the running statistics away from every batch they see."""
    return None if value is None else unit_interval(op, "momentum", value)


# --- shapes and the tensors beside the input -------------------------------------------------

def trailing(op: str, x_shape: Sequence[int], shape: tuple[int, ...]) -> None:
    k = len(shape)
    if len(x_shape) < k or tuple(x_shape[len(x_shape) - k:]) != shape:
        raise ShapeError(f"{op}: input of shape {tuple(x_shape)} does not end in "
                         f"normalized_shape {shape}")


def param_shape(op: str, name: str, p: Any, shape: tuple[int, ...]) -> None:
    if p is not None and tuple(p.shape) != shape:
        raise ShapeError(f"{op}: {name} has shape {tuple(p.shape)}, expected {shape}")


def param(op: str, name: str, p: Any, shape: tuple[int, ...], input: Any,
          floating_point: bool = True) -> None:
    """A weight, bias or running buffer beside ``input``: None, or an array of the input's
    kind (torch or NumPy) on its device, of ``shape``, and floating-point unless the caller
    says otherwise: an integer running buffer would truncate the statistics written into
    it (a running_var of 0.9 stored as 0), and torch refuses integer weights too."""
    if p is None or (is_torch(p) and is_torch(input) and p.shape == shape
                     and p.device == input.device
                     and (p.dtype.is_floating_point or not floating_point)):
        return                                     # the usual case in one test: runs per call
    if is_torch(p) != is_torch(input) or not hasattr(p, "shape"):
        kind = "torch.Tensor" if is_torch(input) else "numpy.ndarray"
        raise TypeError(f"{op}: {name} must be a {kind} like the input, got {type(p).__name__}")
    if floating_point:
        floating(op, p, name)
    if is_torch(p) and p.device != input.device:
        raise DeviceError(f"{op}: {name} is on device {p.device}, the input on {input.device}")
    param_shape(op, name, p, shape)


# torch's channels-first layouts by rank, and the fromscratch.nn class that takes each
_CHANNELS_FIRST = {2: ("(N, C)", "BatchNorm1d"), 3: ("(N, C, L)", "BatchNorm1d"),
                   4: ("(N, C, H, W)", "BatchNorm2d"), 5: ("(N, C, D, H, W)", "BatchNorm3d")}


def batch_norm_rank(op: str, x_shape: Sequence[int], ranks: tuple[int, ...]) -> None:
    """A channels-first BatchNorm's input rank, in torch's words ("expected 4D input (got
    3D input)"), with the shape and the layouts the module takes."""
    if len(x_shape) not in ranks:
        raise ShapeError(f"{op}: expected {' or '.join(f'{r}D' for r in ranks)} input (got "
                         f"{len(x_shape)}D input of shape {tuple(x_shape)}); {op} takes "
                         + " or ".join(_CHANNELS_FIRST[r][0] for r in ranks))


def _wrong_channels(op: str, shape: tuple[int, ...], n: int, channels_first: bool) -> str:
    """The wrong channel count, and the layout mix-up when the other end of the shape has
    num_features: (N, C, H, W) into a channels-last BatchNorm, or the reverse."""
    if channels_first:
        message = (f"{op}: input of shape {shape} has {shape[1]} channels in dimension 1, "
                   f"expected num_features={n}")
        if shape[-1] == n:
            message += (f". Its last dimension has {n}: is it channels-last (N, ..., C)? {op} "
                        f"is channels-first (N, C, ...), as torch.nn's BatchNorm1d/2d/3d: use "
                        f"fromscratch.nn.BatchNorm for channels-last input, or move the "
                        f"channels first: input.movedim(-1, 1)")
        return message
    message = (f"{op}: input of shape {shape} has {shape[-1]} channels in its last dimension, "
               f"expected num_features={n}")
    if len(shape) > 2 and shape[1] == n:
        layout, cls = _CHANNELS_FIRST.get(len(shape), ("(N, C, ...)", None))
        message += (f". Its dimension 1 has {n}: is it channels-first {layout}"
                    + (f", as torch.nn.{cls} takes" if cls else "")
                    + f"? {op} is channels-last and normalises the last dimension: "
                    + (f"use fromscratch.nn.{cls}, or " if cls else "")
                    + "move the channels last: input.movedim(1, -1) (np.moveaxis(x, 1, -1) "
                    "for an array)")
    return message


def batch_norm_input(op: str, x_shape: Sequence[int], num_features: int | None,
                     training: bool, eps: float, channels_first: bool = False) -> None:
    """Channels-last input (N, C) or (N, ..., C), or with ``channels_first`` (N, C, ...)
    (its rank is the module's to check: ``batch_norm_rank``); more than one value per
    channel in training; eps > 0 in training, finite and >= 0 always."""
    eps = real(op, "eps", eps)
    shape = tuple(x_shape)
    if len(shape) < 2:
        layout = "(N, C, ...) with channels first" if channels_first else \
            "(N, C) or (N, ..., C) with channels last"
        raise ShapeError(f"{op}: expected input of shape {layout}, got {shape}")
    channel = 1 if channels_first else len(shape) - 1
    if num_features is not None and shape[channel] != num_features:
        raise ShapeError(_wrong_channels(op, shape, num_features, channels_first))
    if training:
        per_channel = 1
        for i, s in enumerate(shape):
            if i != channel:
                per_channel *= s
        if per_channel == 1:                           # an empty batch is fine, as in torch
            raise ValueError(f"{op}: expected more than 1 value per channel when training, got "
                             f"input of shape {shape}")
        if not eps > 0:                                # also NaN
            raise ValueError(f"{op}: eps must be > 0 in training (var may be 0), got {eps}")
    epsilon(op, eps)                                   # and finite, >= 0 in eval too
