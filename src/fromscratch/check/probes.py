"""What every battery needs: the subject under test, fresh instances of it, calling it
quietly, test inputs, comparisons that print readable evidence, and gradients.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import torch
from torch import nn

from . import guard, loader, mapping
from .loader import LoadError, Signature, quiet

DEFAULT_EPS = 1e-5


@dataclass
class Subject:
    """A person's layer class and how to make instances the reference can be compared with."""
    kind: str
    target: str
    cls: type
    module: ModuleType | None
    sig: Signature
    roles: tuple[str, ...]                     # the tensors the reference needs
    passed: dict[str, Any] = field(default_factory=dict)    # role -> value given to the ctor
    settings: dict[str, Any] = field(default_factory=dict)  # eps, momentum, p the reference uses
    sources: dict[str, str] = field(default_factory=dict)   # where each setting came from
    overrides: dict[str, str] = field(default_factory=dict)  # role -> attribute path (--param)
    mapping: mapping.Mapping | None = None
    channels_first: int | None = None          # BatchNorm taking (N, C, ...): its input rank

    def make(self, size: int | None, dtype: torch.dtype | None = torch.float64,
             weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
             train: bool = True, values: dict[str, Any] | None = None) -> nn.Module:
        """A fresh instance in ``dtype`` with its weight and bias set to the given values."""
        values = dict(self.passed if values is None else values)
        with guard.running(f"preparing a {self.cls.__name__}: .to(), weight and bias, "
                           f".train()"):
            return self._make(size, dtype, weight, bias, train, values)

    def _make(self, size: int | None, dtype: torch.dtype | None, weight: torch.Tensor | None,
              bias: torch.Tensor | None, train: bool, values: dict[str, Any]) -> nn.Module:
        inst = loader.construct(self.cls, self.sig, size, values)
        if self.channels_first is not None:
            take_channels_last(inst, self.channels_first)
        for role, value in values.items():             # settings the ctor does not take
            if not self.sig.takes(role):
                set_setting(inst, role, value)
        if dtype is not None:
            try:
                inst.to(dtype)
            except Exception:                          # keep its own dtype then
                pass
        if self.kind != "dropout":
            if self.mapping is None:       # attribute paths are the same for every instance
                self.mapping = mapping.map_tensors(inst, size, self.roles, self.overrides)
            for role, value in (("weight", weight), ("bias", bias)):
                slot = self.mapping.get(role)
                if slot is not None and value is not None:
                    mapping.assign(inst, slot.path, value)
        inst.train(train)
        return inst

    def tensor(self, inst: nn.Module, role: str) -> torch.Tensor | None:
        slot = self.mapping.get(role) if self.mapping else None
        return mapping.get(inst, slot.path) if slot else None


def take_channels_last(inst: nn.Module, rank: int) -> None:
    """Let a channels-first layer (input (N, C, ...) of ``rank`` dims) take the battery's
    channels-last inputs (N, ..., C): each comes to it as (N, C, L, 1, ...), L the product
    of the dims between N and C, and its output goes back the same way. Statistics over
    every dim but the channels do not depend on how the others are arranged."""
    forward = inst.forward

    def channels_first_forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        n, c, between = x.shape[0], x.shape[-1], tuple(x.shape[1:-1])
        xf = x.movedim(-1, 1).reshape((n, c, math.prod(between)) + (1,) * (rank - 3))
        y = forward(xf, *args, **kwargs)
        if not isinstance(y, torch.Tensor) or y.shape != xf.shape:
            return y                               # the battery reports what it got
        return y.reshape((n, c) + between).movedim(1, -1)
    inst.forward = channels_first_forward


def open_subject(kind: str, target: str, roles: tuple[str, ...], size: int | None,
                 given: dict[str, Any], overrides: dict[str, str] | None = None) -> Subject:
    """Load ``target``, check it constructs, and settle eps / momentum / p.

    A setting given on the command line is passed to the constructor where it takes one;
    otherwise the constructor's default is used; otherwise the instance's attribute.
    """
    obj, module = loader.load_object(target)
    if not inspect.isclass(obj) or not issubclass(obj, nn.Module):
        what = "a class" if inspect.isclass(obj) else f"a {type(obj).__name__}"
        raise LoadError(f"{target} is {what} but not a torch.nn.Module subclass")
    sig = loader.signature(obj, needs_size=size is not None)
    subject = Subject(kind, target, obj, module, sig, roles, overrides=dict(overrides or {}))
    subject.passed = {r: v for r, v in given.items() if v is not None}
    inst = subject.make(size, dtype=None)
    for role in ("eps", "momentum", "p"):
        if role not in ROLE_DEFAULTS[kind]:
            continue
        if role in subject.passed:
            subject.settings[role] = subject.passed[role]
            subject.sources[role] = "given on the command line"
        elif sig.default(role) is not inspect.Parameter.empty:
            subject.settings[role] = sig.default(role)
            subject.sources[role] = "the constructor's default"
        else:
            found, value = read_setting(inst, role)
            if found:
                subject.settings[role] = value
                subject.sources[role] = "read from the instance"
            else:
                subject.settings[role] = ROLE_DEFAULTS[kind][role]
                subject.sources[role] = "not found; assumed"
    return subject


ROLE_DEFAULTS: dict[str, dict[str, Any]] = {
    "layernorm": {"eps": DEFAULT_EPS}, "rmsnorm": {"eps": None},
    "batchnorm": {"eps": DEFAULT_EPS, "momentum": 0.1}, "dropout": {"p": 0.5},
}


def read_setting(inst: nn.Module, role: str) -> tuple[bool, Any]:
    """The instance's eps / momentum / p, looked up by the usual names in it and its children."""
    names = loader.ROLE_NAMES[role] + (loader.KEEP_NAMES if role == "p" else ())
    for m in inst.modules():
        for name in names:
            v = getattr(m, name, "missing")
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
                if name in loader.KEEP_NAMES and v is not None:
                    return True, 1.0 - float(v)
                return True, v
    return False, None


def set_setting(inst: nn.Module, role: str, value: Any) -> bool:
    for m in inst.modules():
        for name in loader.ROLE_NAMES[role]:
            if hasattr(m, name) and not callable(getattr(m, name)):
                setattr(m, name, value)
                return True
        if role == "p":
            for name in loader.KEEP_NAMES:
                if hasattr(m, name):
                    setattr(m, name, 1.0 - value)
                    return True
    return False


def resolve_eps(eps: float | None, dtype: torch.dtype) -> float:
    """eps=None (RMSNorm) means the machine epsilon of the compute dtype, as torch."""
    if eps is not None:
        return float(eps)
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


# -- calling the layer ---------------------------------------------------------------------

@dataclass
class Outcome:
    y: torch.Tensor | None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and isinstance(self.y, torch.Tensor)

    def why(self) -> str:
        if self.error is not None:
            return f"{type(self.error).__name__}: {str(self.error).splitlines()[0]}"
        return f"returned {type(self.y).__name__}, not a tensor"


def forward_call(inst: nn.Module, x: torch.Tensor) -> str:
    """'running LayerNorm.forward on a (4, 7, 37) float64 input', for time-out messages."""
    return f"running {type(inst).__name__}.forward on a {shape_str(x)} input"


def backward_call(inst: nn.Module, x: torch.Tensor) -> str:
    return f"running the backward of {type(inst).__name__}.forward on a {shape_str(x)} input"


def call(inst: nn.Module, x: torch.Tensor, grad: bool = False) -> Outcome:
    """inst(x), quietly, catching errors; under no_grad unless ``grad``.

    The layer gets a copy of x (through which gradients still reach x), so a layer that
    writes into its input does not spoil the probe; ``modifies_input`` reports that.
    """
    try:
        with quiet(), torch.set_grad_enabled(grad), guard.running(forward_call(inst, x)):
            y = inst(x.clone())
    except Exception as e:
        return Outcome(None, e)
    if not isinstance(y, torch.Tensor):
        return Outcome(None, TypeError(f"forward returned {type(y).__name__}, not a tensor"))
    return Outcome(y)


def modifies_input(inst: nn.Module, x: torch.Tensor) -> bool:
    """Does inst(x) write into x (x -= mean, x.div_(...))?"""
    xc = x.clone()
    try:
        with quiet(), torch.no_grad(), guard.running(forward_call(inst, x)):
            inst(xc)
    except Exception:
        return False
    return not torch.equal(xc, x)


# -- inputs --------------------------------------------------------------------------------

def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape: tuple[int, ...], gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def rows_like_people_have(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Rows with their own mean (-3..3) and spread (0.5..2): a zero-mean unit input hides
    every mistake that involves the mean or the variance."""
    x = randn(shape, gen)
    lead = shape[:-1] + (1,)
    mean = torch.rand(lead, generator=gen, dtype=torch.float64) * 6 - 3
    std = torch.rand(lead, generator=gen, dtype=torch.float64) * 1.5 + 0.5
    return x * std + mean


def affine_values(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight away from 1 and a bias away from 0, so that misapplied ones show."""
    w = 1.0 + 0.5 * randn((n,), gen)
    b = 0.5 * randn((n,), gen)
    return w, b


# -- comparisons ---------------------------------------------------------------------------

def close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4,
          atol: float = 1e-5) -> bool:
    return got.shape == want.shape and bool(torch.allclose(
        got.double(), want.double(), rtol=rtol, atol=atol, equal_nan=True))


def diff(got: torch.Tensor, want: torch.Tensor) -> str:
    """'max |got - want| = 0.52 at [1, 3, 0] (got 1.00, expected 0.48)'."""
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    g, w = got.double(), want.double()
    bad = torch.isnan(g) != torch.isnan(w)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        return (f"NaN mismatch at {list(idx)}: got {float(g[idx]):.4g}, expected "
                f"{float(w[idx]):.4g} ({int(bad.sum())} of {g.numel()} entries)")
    d = (g - w).abs().nan_to_num(nan=0.0, posinf=float("inf"))
    idx = tuple(int(i) for i in torch.nonzero(d == d.max())[0])
    return (f"max |got - expected| = {float(d.max()):.3g} at {list(idx)} "
            f"(got {float(g[idx]):.4g}, expected {float(w[idx]):.4g})")


def shape_str(x: torch.Tensor) -> str:
    return f"({', '.join(str(s) for s in x.shape)}) {str(x.dtype).replace('torch.', '')}"


# -- gradients -----------------------------------------------------------------------------

def grads(inst: nn.Module, x: torch.Tensor, dy: torch.Tensor,
          tensors: dict[str, torch.Tensor | None]
          ) -> tuple[Outcome, dict[str, torch.Tensor | None]]:
    """Autograd gradients of sum(inst(x) * dy) w.r.t. x and ``tensors`` (None: no gradient)."""
    x = x.detach().clone().requires_grad_(True)
    for t in tensors.values():
        if t is not None and t.is_leaf and t.is_floating_point():
            t.grad = None
    out = call(inst, x, grad=True)
    result: dict[str, torch.Tensor | None] = {"input": None}
    result.update({k: None for k in tensors})
    if not out.ok:
        return out, result
    try:
        with quiet(), guard.running(backward_call(inst, x)):
            if out.y.requires_grad:
                (out.y * dy).sum().backward()
    except Exception as e:
        return Outcome(out.y, e), result
    result["input"] = x.grad
    for k, t in tensors.items():
        result[k] = t.grad if t is not None and t.is_leaf else None
    return out, result


def directional(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor,
                h: float = 1e-6) -> float:
    """Central difference of the scalar f along v: (f(x + h v) - f(x - h v)) / 2h."""
    return float((f(x + h * v) - f(x - h * v)) / (2 * h))
