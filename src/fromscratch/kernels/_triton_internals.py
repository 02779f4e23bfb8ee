"""What the fast path (``_fast_path``) takes from Triton's and torch's private APIs, the only
module that touches them, and the check that they are still what it expects.

``kernel[grid](*args, **constexprs)`` ends, inside Triton's ``JITFunction.run``, in one call
of the compiled kernel's launcher (as read in triton 3.6 and 3.9):

    kernel.run(grid_0, grid_1, grid_2, stream, kernel.function, kernel.packed_metadata,
               launch_metadata, launch_enter_hook, launch_exit_hook, *bound_args.values())

with every argument in the kernel's parameter order, constexprs included. The fast path
makes that call itself (``Variant.launch``, ``RecordedLaunch.__call__``), with no launch
metadata and no hooks (it is only taken while no hook is installed: ``hooks_idle``), and with
tensors passed as their addresses (the launcher then skips a driver query per pointer).

Nothing in Triton promises any of this, so ``protocol_problem`` checks it once per process
before the fast path is first used: Triton's own call site still reads as above, its launch
hooks are where ``hooks_idle`` looks, and torch still has the two CUDA calls used here. A
compiled kernel without ``run``, ``function`` or ``packed_metadata`` raises
``ProtocolChanged`` when it is first met (``variant``). Either way the fast path turns itself
off with one warning (``_fast_path``), and every launch goes through ``kernel[grid](...)``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import torch

#: the launcher call in Triton's ``JITFunction.run`` that ``Variant.launch`` repeats
TRITON_LAUNCH_CALL = ("kernel.run(grid_0, grid_1, grid_2, stream, kernel.function, "
                      "kernel.packed_metadata, launch_metadata, knobs.runtime.launch_enter_hook, "
                      "knobs.runtime.launch_exit_hook, *bound_args.values())")


class ProtocolChanged(RuntimeError):
    """The installed Triton launches kernels otherwise than this module does."""


def _squeezed(text: str) -> str:
    return "".join(text.split())


def protocol_problem(cuda: bool = True) -> str | None:
    """None when the installed Triton (and, with ``cuda``, torch's CUDA side) launches
    kernels as this module does; otherwise what differs, in a few words (the warning quotes
    it)."""
    try:
        import triton
        from triton.runtime.jit import JITFunction
    except ImportError as e:
        return f"triton does not import ({e})"
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if not all(hasattr(runtime, h) for h in ("launch_enter_hook", "launch_exit_hook")):
        return f"triton {triton.__version__} has no triton.knobs.runtime launch hooks"
    try:
        source = inspect.getsource(JITFunction.run)
    except (OSError, TypeError) as e:
        return f"the source of triton's JITFunction.run cannot be read ({e})"
    if _squeezed(TRITON_LAUNCH_CALL) not in _squeezed(source):
        return (f"triton {triton.__version__}'s JITFunction.run no longer calls the compiled "
                f"launcher as {TRITON_LAUNCH_CALL}")
    missing = [f for f in ("_cuda_getCurrentRawStream", "_cuda_getDevice")
               if cuda and not hasattr(torch._C, f)]
    if missing:
        return f"torch {torch.__version__} has no torch._C.{missing[0]}"
    return None


_runtime_knobs: list[Any] = []


def hooks_idle() -> bool:
    """True when no launch hook is installed (a profiler's hook needs Triton's own path)."""
    if not _runtime_knobs:
        import triton
        _runtime_knobs.append(triton.knobs.runtime)
    rt = _runtime_knobs[0]
    for hook in (rt.launch_enter_hook, rt.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):   # triton >= 3.6: a HookChain
            return False
    return True


#: current_stream(device) -> the current CUDA stream's handle on ``device``, as Triton's own
#: launch path reads it (None in a torch without CUDA: ``protocol_problem`` says so first)
current_stream: Callable[[int], int] = getattr(torch._C, "_cuda_getCurrentRawStream", None)
#: current_device() -> the current CUDA device's index (a launch goes to its context)
current_device: Callable[[], int] = getattr(torch._C, "_cuda_getDevice", None)


class RecordedLaunch(NamedTuple):
    """One launch kept for a replay: a compiled variant and its grid. Called with the stream
    and the runtime arguments (tensors as addresses, in the kernel's order); the caller
    promises they have the specialisation the variant was compiled for."""
    run: Callable[..., None]             # the compiled kernel's launcher
    function: Any                        # the CUDA function handle
    metadata: Any                        # the compiled kernel's packed metadata
    constexprs: tuple                    # constexpr values, in parameter order
    grid: tuple[int, int, int]

    def __call__(self, stream: int, *values: object) -> None:
        g = self.grid
        self.run(g[0], g[1], g[2], stream, self.function, self.metadata, None, None, None,
                 *values, *self.constexprs)


class Variant(NamedTuple):
    """One compiled specialisation of a kernel, launched without Triton's dispatch."""
    compiled: Any                        # what ``kernel[grid](...)`` returned
    run: Callable[..., None]             # its launcher
    function: Any                        # the CUDA function handle
    metadata: Any                        # packed metadata, as the launcher takes it
    constexprs: tuple                    # constexpr values, in parameter order

    def launch(self, grid: tuple[int, ...], stream: int, values: list) -> None:
        """``kernel[grid](*values, **constexprs)`` for this variant, ``values`` as ints."""
        g = (*grid, 1, 1)
        self.run(g[0], g[1], g[2], stream, self.function, self.metadata, None, None, None,
                 *values, *self.constexprs)

    def recorded(self, grid: tuple[int, ...]) -> RecordedLaunch:
        return RecordedLaunch(self.run, self.function, self.metadata, self.constexprs,
                              (*grid, 1, 1)[:3])


def variant(kernel: Any, compiled: Any, n_runtime: int, constexprs: dict[str, Any]
            ) -> Variant | None:
    """The ``Variant`` of what ``kernel[grid](...)`` just compiled and launched, given
    ``n_runtime`` runtime arguments and ``constexprs`` by name; None when the constexprs
    are not all of the kernel's parameters after the runtime ones (one left to its default:
    the launcher would miss it). Raises ``ProtocolChanged`` when ``compiled`` lacks what a
    launcher call needs."""
    names = getattr(kernel, "arg_names", None)
    rest = None if names is None else tuple(names[n_runtime:])
    if rest is None or set(rest) != set(constexprs) or len(rest) != len(constexprs):
        return None
    try:
        return Variant(compiled, compiled.run, compiled.function, compiled.packed_metadata,
                       tuple(constexprs[name] for name in rest))
    except AttributeError as e:
        raise ProtocolChanged(f"triton's compiled kernel has changed: {e}") from None
