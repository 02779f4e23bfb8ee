"""Launch a Triton kernel with little host work: after the first launch of a variant, call
its compiled launcher directly instead of going through ``kernel[grid](...)``.

Why: a norm's forward+backward is ~0.3 ms of GPU time at 32768x4096, and autograd runs the
backward's Python on its own thread; every microsecond the host spends issuing it is one
the GPU may wait. ``kernel[grid](...)`` binds the arguments, works out their specialisation
(which pointers are 16-byte aligned, which ints are 1 or multiples of 16), builds a cache
key, looks the compiled kernel up and only then launches, and its launcher asks the driver
about every pointer: on an H200 machine's host the profiler showed 50-100 us between a
wrapper's last allocation and the driver's launch call.

``run`` does that work once per *variant* and keeps the compiled kernel under a key of the
same facts Triton specialises on, read cheaply from the arguments:

* a tensor: its dtype, its device and whether its address is a multiple of 16;
* an int: whether it is 1, whether it is a multiple of 16, and whether it fits in int32;
* a bool, a float, None: the type (and the bool's value);
* every constexpr, num_warps and num_stages by value, and the device.

Equal keys mean equal specialisations, so the kernel found is the one ``kernel[grid]``
would have launched. Anything unusual (no CUDA tensor, an older Triton whose launcher takes
other arguments, a launch hook such as a profiler's) takes Triton's own path.
``FROMSCRATCH_FAST_LAUNCH=0`` turns the shortcut off.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from ._common import interpreting

ENABLED = os.environ.get("FROMSCRATCH_FAST_LAUNCH", "1") != "0"
_Tensor = torch.Tensor
_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1

#: key -> (compiled kernel, its launcher, CUfunction, packed metadata, the constexpr values
#: in parameter order). Kernels are keyed by id() (a JITFunction's own hash takes a lock);
#: they are module globals that live as long as the process.
_compiled: dict[tuple, tuple[Any, Any, Any, Any, tuple]] = {}
#: launches that took the shortcut (the tests read it)
fast_launches = 0


def _fact(a: object) -> object:
    """What Triton's specialisation can depend on, for one runtime argument (``run``
    computes the same inline)."""
    if isinstance(a, _Tensor):
        return (a.dtype, a.get_device(), not a.data_ptr() & 15)
    if type(a) is int:
        return (a == 1, not a & 15, _I32_MIN <= a <= _I32_MAX)
    return (type(a), a) if type(a) is bool else type(a)


_runtime_knobs: list[Any] = []


def _hooks_idle() -> bool:
    """True when no launch hook is installed (a profiler's hook needs Triton's own path)."""
    if not _runtime_knobs:
        import triton
        _runtime_knobs.append(triton.knobs.runtime)
    rt = _runtime_knobs[0]
    for hook in (rt.launch_enter_hook, rt.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):   # triton >= 3.9: a HookChain
            return False
    return True


def _supported() -> bool:
    """Triton >= 3.3 (``triton.knobs``): its launcher takes every argument, constexprs too."""
    try:
        import triton
        return ENABLED and not interpreting() and hasattr(triton, "knobs")
    except ImportError:
        return False


_SUPPORTED: list[bool] = []


def _eligible(t: torch.Tensor) -> bool:
    return t.is_cuda


def enabled_for(t: torch.Tensor) -> bool:
    """Whether launches with ``t`` as first argument may take the shortcut."""
    if not _SUPPORTED:
        _SUPPORTED.append(_supported())
    return _SUPPORTED[0] and _eligible(t)


def _stream(index: int | None) -> int:
    """The current CUDA stream's handle, as Triton's own launch path reads it."""
    return torch._C._cuda_getCurrentRawStream(index)


class Bound:
    """One compiled variant and grid, called with the stream and the runtime values only
    (tensors as addresses, in the kernel's order): what a replay (``_replay``) keeps.
    The caller owns the promise that the values have the facts the variant was keyed on."""
    __slots__ = ("launcher", "function", "metadata", "tail", "grid")

    def __init__(self, entry: tuple, grid: tuple[int, ...]):
        _, self.launcher, self.function, self.metadata, self.tail = entry
        self.grid = (*grid, 1, 1)[:3]

    def __call__(self, stream: int, *values: object) -> None:
        g = self.grid
        self.launcher(g[0], g[1], g[2], stream, self.function, self.metadata, None, None, None,
                      *values, *self.tail)


def run(kernel: Any, grid: tuple[int, ...], *args: Any, num_warps: int = 4,
        num_stages: int | None = None, _record: list | None = None, **constexprs: Any) -> Any:
    """``kernel[grid](*args, num_warps=..., num_stages=..., **constexprs)``: the runtime
    arguments positionally, in the kernel's order, then every constexpr by name. Returns the
    compiled kernel (what ``kernel[grid]`` returns). With ``_record``, a ``Bound`` of this
    launch is appended to it (None when the shortcut does not apply)."""
    global fast_launches
    first = args[0]
    if enabled_for(first):
        index = first.device.index
        facts: list[object] = [id(kernel), index, num_warps, num_stages, *constexprs.items()]
        values: list[object] = []         # what the launcher gets: tensors as their addresses
        for a in args:
            if isinstance(a, _Tensor):
                ptr = a.data_ptr()
                facts.append((a.dtype, a.get_device(), not ptr & 15))
                values.append(ptr)
            else:
                facts.append((a == 1, not a & 15, _I32_MIN <= a <= _I32_MAX)
                             if type(a) is int else _fact(a))
                values.append(a)
        key = tuple(facts)
        hit = _compiled.get(key)
        if hit is not None and _hooks_idle():
            compiled, launcher, function, metadata, tail = hit
            g = (*grid, 1, 1)
            # an address passed as an int skips the launcher's per-pointer driver query
            # (cuPointerGetAttribute), which the first launch of this variant made
            launcher(g[0], g[1], g[2], _stream(index), function, metadata, None, None, None,
                     *values, *tail)
            fast_launches += 1
            if _record is not None:
                _record.append(Bound(hit, grid))
            return compiled
    else:
        key = hit = None
    options = {"num_warps": num_warps}
    if num_stages is not None:
        options["num_stages"] = num_stages
    compiled = kernel[grid](*args, **options, **constexprs)
    if key is not None and hit is None:
        tail = _ordered(kernel, len(args), constexprs)
        if tail is not None:
            try:
                hit = _compiled[key] = (compiled, compiled.run, compiled.function,
                                        compiled.packed_metadata, tail)
            except AttributeError:           # a Triton whose compiled kernel looks different
                _SUPPORTED[0] = False
    if _record is not None:
        _record.append(None if hit is None or not _hooks_idle() else Bound(hit, grid))
    return compiled


def replayable(index: int) -> bool:
    """Whether recorded ``Bound`` launches may run now on device ``index``: the shortcut is
    on, no launch hook is installed and ``index`` is the current device (a launch goes to the
    current device's context)."""
    return bool(_SUPPORTED and _SUPPORTED[0] and _hooks_idle()
                and torch._C._cuda_getDevice() == index)


def _ordered(kernel: Any, n_args: int, constexprs: dict[str, Any]) -> tuple | None:
    """The constexpr values in the kernel's parameter order after the ``n_args`` runtime
    arguments (what Triton's launcher receives after them); None when they do not line up."""
    names = getattr(kernel, "arg_names", None)
    rest = None if names is None else tuple(names[n_args:])
    if rest is None or set(rest) != set(constexprs) or len(rest) != len(constexprs):
        return None
    return tuple(constexprs[name] for name in rest)
