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

from . import guard, loader, mapping, modulelike, source
from .errors import Exited, TimedOut
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
    channels_first: int | None = None          # a layer taking (N, C, ...): its input rank
    globals: dict[str, Any] = field(default_factory=dict)   # module globals set for it
    global_reads: dict[str, int] = field(default_factory=dict)  # settings read as globals
    notes: list[str] = field(default_factory=list)          # how it was built
    own_dtype: bool = False                    # keeps its parameters' dtype (CLIP's float32)

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
            if role in self.sig.forward_arg:
                pass_to_forward(inst, self.sig.forward_arg[role], value)
            elif not self.sig.takes(role):
                set_setting(inst, role, value)
        for name, value in self.globals.items():       # what forward reads from the file
            setattr(self.module, name, value)
        if dtype is not None and not self.own_dtype:
            try:
                modulelike.to(inst, dtype)
            except Exception:                          # keep its own dtype then
                pass
        modulelike.trainable(inst)
        if self.kind != "dropout":
            if self.mapping is None:       # attribute paths are the same for every instance
                self.mapping = mapping.map_tensors(inst, size, self.roles, self.overrides)
            for role, value in (("weight", weight), ("bias", bias)):
                slot = self.mapping.get(role)
                if slot is not None and value is not None:
                    mapping.assign(inst, slot, value)
        modulelike.set_mode(inst, train)
        return inst

    def tensor(self, inst: nn.Module, role: str) -> torch.Tensor | None:
        slot = self.mapping.get(role) if self.mapping else None
        return mapping.get(inst, slot.path) if slot else None


def wrap_forward(inst: Any, wrap: Callable[[Callable], Callable]) -> None:
    """Make calling ``inst`` run ``wrap(what it ran before)``: its forward for a Module, its
    ``__call__`` for a plain class (looked up on the type, so a subclass carries it)."""
    if modulelike.is_module(inst):
        inst.forward = wrap(inst.forward)
        return
    cls = type(inst)
    inner = wrap(lambda *a, **k: cls.__call__(inst, *a, **k))
    inst.__class__ = type(cls.__name__, (cls,), {
        "__call__": lambda self, *a, **k: inner(*a, **k), "__module__": cls.__module__,
        "__qualname__": cls.__qualname__})


def pass_to_forward(inst: Any, name: str, value: Any) -> None:
    """Give forward's own argument ``name`` (AWD-LSTM: ``forward(x, dropout=0.5)``) the
    checker's value on every call."""
    def wrap(forward: Callable) -> Callable:
        def with_setting(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault(name, value)
            return forward(x, *args, **kwargs)
        return with_setting
    wrap_forward(inst, wrap)


def take_channels_last(inst: Any, rank: int) -> None:
    """Let a channels-first layer (input (N, C, ...) of ``rank`` dims) take the battery's
    channels-last inputs (N, ..., C): each comes to it as (N, C, L, 1, ...), L the product
    of the dims between N and C, and its output goes back the same way. Statistics over
    every dim but the channels (BatchNorm), or over the channels alone (LayerNorm over
    dim 1), do not depend on how the others are arranged."""
    def wrap(forward: Callable) -> Callable:
        def channels_first_forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            n, c, between = x.shape[0], x.shape[-1], tuple(x.shape[1:-1])
            xf = x.movedim(-1, 1).reshape((n, c, math.prod(between)) + (1,) * (rank - 3))
            xf = xf.contiguous()           # as a real (N, C, ...) tensor is (.view works)
            y = forward(xf, *args, **kwargs)
            if not isinstance(y, torch.Tensor) or y.shape != xf.shape:
                return y                               # the battery reports what it got
            return y.reshape((n, c) + between).movedim(1, -1)
        return channels_first_forward
    wrap_forward(inst, wrap)


def trial_inputs(kind: str, size: int | None) -> list[torch.Tensor]:
    """The inputs a construction is tried on, when the constructor leaves a choice (which
    argument is the size, a required flag): channels-last, then channels-first, C the size."""
    c = size or 0
    shapes = {"layernorm": [(4, 7, c), (6, c), (2, c, 3, 3)],
              "rmsnorm": [(4, 7, c), (6, c), (2, c, 3, 3)],
              "batchnorm": [(2, 3, c), (8, c), (2, c, 3), (2, c, 3, 3)],
              "dropout": [(8, 10), (4, 5, 6)]}[kind]
    return [torch.randn(shape, generator=generator(0), dtype=torch.float64) + 1.0
            for shape in shapes]


def open_subject(kind: str, target: str, roles: tuple[str, ...], size: int | None,
                 given: dict[str, Any], overrides: dict[str, str] | None = None) -> Subject:
    """Load ``target``, build it as people write it, and settle eps / momentum / p.

    A setting given on the command line is passed to the constructor (or to forward) where
    it takes one; otherwise the default is used; otherwise the instance's attribute. A
    setting the constructor requires without a default gets the checker's value. Where the
    signature leaves a choice (which argument is the size, a required flag), each is tried
    and the one whose output has the input's shape on most inputs is kept.
    """
    obj, module = loader.load_object(target)
    if not inspect.isclass(obj) or not modulelike.usable_class(obj):
        what = "a class" if inspect.isclass(obj) else f"a {type(obj).__name__}"
        raise LoadError(f"{target} is {what} but neither a torch.nn.Module subclass nor a "
                        f"class whose instances are called (__call__)")
    forward_roles = tuple(ROLE_DEFAULTS[kind])
    sig = loader.signature(obj, needs_size=size is not None, forward_roles=forward_roles)
    subject = Subject(kind, target, obj, module, sig, roles, overrides=dict(overrides or {}))
    subject.passed = {r: v for r, v in given.items() if v is not None}
    notes = subject.notes                 # settle() adds its own on the way
    for role in forward_roles:            # required without a default: the checker's value
        if role not in subject.passed and sig.takes(role) and \
                sig.default(role) is inspect.Parameter.empty:
            subject.passed[role] = CHECKER_VALUE[kind][role]
            notes.append(f"{role} = {CHECKER_VALUE[kind][role]} passed: the constructor "
                         f"requires it and has no default")
    subject.globals = missing_globals(subject, forward_roles)
    if len(sig.choices) > 1:
        settle(subject, size)
    subject.own_dtype = breaks_in_float64(subject, size)
    if subject.own_dtype:
        notes.append("converted to float64 it fails, in its own dtype it runs: it computes "
                     "in float32 whatever the input (CLIP's LayerNorm for float16 models), so "
                     "it is checked with its parameters in their own dtype")
    inst = subject.make(size, dtype=None)
    for role in forward_roles:
        if role in given and given[role] is not None:
            subject.settings[role] = subject.passed[role]
            subject.sources[role] = "given on the command line"
        elif role in subject.passed:
            subject.settings[role] = subject.passed[role]
            subject.sources[role] = "the checker's (required, no default)"
        elif sig.default(role) is not inspect.Parameter.empty:
            subject.settings[role] = sig.default(role)
            subject.sources[role] = ("forward's default" if role in sig.forward_arg
                                     else "the constructor's default")
        else:
            found, value = read_setting(inst, role)
            if found:
                subject.settings[role] = value
                subject.sources[role] = "read from the instance"
            else:
                subject.settings[role] = ROLE_DEFAULTS[kind][role]
                subject.sources[role] = "not found; assumed"
    if sig.hidden_by:
        notes.append(f"the metaclass {sig.hidden_by} hides the constructor's "
                     f"signature; read from __init__")
    return subject


def missing_globals(subject: Subject, roles: tuple[str, ...]) -> dict[str, Any]:
    """Settings (``p``) the class reads as module globals that the file does not define:
    the checker defines them with its own value so that forward runs (and reports it)."""
    names = tuple(n for r in roles for n in loader.ROLE_NAMES[r])
    reads = source.global_reads(subject.cls, names)
    subject.global_reads = reads
    out: dict[str, Any] = {}
    for name in reads:
        if subject.module is not None and not hasattr(subject.module, name):
            role = next(r for r in roles if name in loader.ROLE_NAMES[r])
            out[name] = subject.passed.get(role, CHECKER_VALUE[subject.kind][role])
    return out


@guard.probe("building the layer")
def breaks_in_float64(subject: Subject, size: int | None) -> bool:
    """Does converting the module to float64 break it, where its own dtype runs? (A layer
    that casts its input to float32 and keeps float32 parameters: CLIP's LayerNorm.)"""
    for x in trial_inputs(subject.kind, size):
        converted = call(subject.make(size, dtype=torch.float64), x)
        if converted.ok and converted.y.shape == x.shape:
            return False
        own = call(subject.make(size, dtype=None), x)
        if own.ok and own.y.shape == x.shape:
            return True
    return False


@guard.probe("building the layer")
def settle(subject: Subject, size: int | None) -> None:
    """Among the constructions the signature allows, keep the first whose output has the
    input's shape on the most trial inputs; a construction that fails is skipped."""
    best, best_score, errors = None, -1, []
    for size_arg, fixed in subject.sig.choices:
        subject.sig.choose(size_arg, fixed)
        try:
            inst = subject.make(size, dtype=torch.float64)
        except LoadError as e:
            if isinstance(e, (TimedOut, Exited)):
                raise
            errors.append(str(e))
            continue
        score = 0
        for x in trial_inputs(subject.kind, size):
            o = call(inst, x)
            score += int(o.ok and o.y.shape == x.shape)
        if score > best_score:
            best, best_score = (size_arg, fixed), score
    if best is None:
        raise LoadError(errors[0] if errors else f"cannot construct {subject.cls.__name__}")
    subject.sig.choose(*best)
    if best != subject.sig.choices[0] or best[1]:
        args = ([f"{best[0]}={size}"] if best[0] else []) + \
            [f"{k}={v!r}" for k, v in best[1].items()]
        subject.notes.append(f"built as {subject.cls.__name__}({', '.join(args)}): of the "
                             f"constructions its signature allows, the one whose output has "
                             f"the input's shape on the most inputs")


ROLE_DEFAULTS: dict[str, dict[str, Any]] = {
    "layernorm": {"eps": DEFAULT_EPS}, "rmsnorm": {"eps": None},
    "batchnorm": {"eps": DEFAULT_EPS, "momentum": 0.1}, "dropout": {"p": 0.5},
}
#: what the checker passes for a setting the constructor requires without a default (p: at
#: 0.5 keeping and dropping look alike)
CHECKER_VALUE: dict[str, dict[str, Any]] = {
    "layernorm": {"eps": DEFAULT_EPS}, "rmsnorm": {"eps": 1e-6},
    "batchnorm": {"eps": DEFAULT_EPS, "momentum": 0.1}, "dropout": {"p": 0.1},
}


def read_setting(inst: Any, role: str) -> tuple[bool, Any]:
    """The instance's eps / momentum / p, looked up by the usual names in it and its children."""
    names = loader.ROLE_NAMES[role] + (loader.KEEP_NAMES if role == "p" else ())
    for m in modulelike.parts(inst):
        for name in names:
            v = getattr(m, name, "missing")
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
                if name in loader.KEEP_NAMES and v is not None:
                    return True, 1.0 - float(v)
                return True, v
    return False, None


def set_setting(inst: Any, role: str, value: Any) -> bool:
    for m in modulelike.parts(inst):
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
            lines = str(self.error).splitlines()
            if not lines:                                 # a bare assert: name its line
                return f"{type(self.error).__name__} at {guard.where(self.error.__traceback__)}"
            return f"{type(self.error).__name__}: {lines[0]}"
        return f"returned {type(self.y).__name__}, not a tensor"


def forward_call(inst: nn.Module, x: torch.Tensor) -> str:
    """'running LayerNorm.forward on a (4, 7, 37) float64 input', for time-out messages."""
    return f"running {type(inst).__name__}.forward on a {shape_str(x)} input"


def backward_call(inst: nn.Module, x: torch.Tensor) -> str:
    return f"running the backward of {type(inst).__name__}.forward on a {shape_str(x)} input"


def call(inst: Any, x: torch.Tensor, grad: bool = True) -> Outcome:
    """inst(x), quietly, catching errors; with gradients enabled, as in training (a layer
    may branch on torch.is_grad_enabled(): d2l's batch_norm), unless ``grad`` is False.

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
    return Outcome(y if x.requires_grad else y.detach())


def modifies_input(inst: Any, x: torch.Tensor) -> bool:
    """Does inst(x) write into x (x -= mean, x.div_(...))? With gradients on, as ``call``."""
    xc = x.clone()
    try:
        with quiet(), torch.enable_grad(), guard.running(forward_call(inst, x)):
            inst(xc)
    except Exception:
        return False
    return not torch.equal(xc.detach(), x)


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
    out = call(inst, x)
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
