"""Input validation shared by every front-end: each error names what was wrong."""
from __future__ import annotations

from typing import Any, Sequence


class ShapeError(ValueError, RuntimeError):
    """Shapes that do not fit. A ValueError, and a RuntimeError as torch raises for these."""


class DtypeError(TypeError, RuntimeError):
    """A dtype the op cannot take. A TypeError, and a RuntimeError as torch raises for these."""


def _dtype_name(x: Any) -> str:
    return str(getattr(x, "dtype", type(x).__name__))


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


def normalized_shape(op: str, shape: int | Sequence[int]) -> tuple[int, ...]:
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if len(shape) == 0:
        raise ShapeError(f"{op}: normalized_shape must have at least one dimension, got ()")
    if any(s <= 0 for s in shape):
        raise ShapeError(f"{op}: normalized_shape must be positive, got {shape}")
    return shape


def trailing(op: str, x_shape: Sequence[int], shape: tuple[int, ...]) -> None:
    k = len(shape)
    if len(x_shape) < k or tuple(x_shape[len(x_shape) - k:]) != shape:
        raise ShapeError(f"{op}: input of shape {tuple(x_shape)} does not end in "
                         f"normalized_shape {shape}")


def param_shape(op: str, name: str, p: Any, shape: tuple[int, ...]) -> None:
    if p is not None and tuple(p.shape) != shape:
        raise ShapeError(f"{op}: {name} has shape {tuple(p.shape)}, expected {shape}")


def probability(op: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: dropout probability has to be between 0 and 1, but got {p}")
    return float(p)


def batch_norm_input(op: str, x_shape: Sequence[int], num_features: int | None,
                     training: bool, eps: float) -> None:
    if len(x_shape) < 2:
        raise ShapeError(f"{op}: expected input of shape (N, C) or (N, ..., C) with channels "
                         f"last, got {tuple(x_shape)}")
    if num_features is not None and x_shape[-1] != num_features:
        raise ShapeError(f"{op}: input of shape {tuple(x_shape)} has {x_shape[-1]} channels in its "
                         f"last dimension, expected num_features={num_features}")
    if training:
        per_channel = 1
        for s in x_shape[:-1]:
            per_channel *= s
        if per_channel == 1:                           # an empty batch is fine, as in torch
            raise ValueError(f"{op}: expected more than 1 value per channel when training, got "
                             f"input of shape {tuple(x_shape)}")
        if eps <= 0:
            raise ValueError(f"{op}: eps must be > 0 in training (var may be 0), got {eps}")
