"""The kernels' fast path: how a launch skips Triton's dispatch, and how a repeated forward or
backward skips its own Python, by replaying the launches it made before.

Why: a norm's forward+backward at 32768x4096 is ~0.3 ms of GPU time, and every microsecond
the host spends issuing it is one the GPU may wait. ``kernel[grid](...)`` binds the
arguments, works out their specialisation and looks the compiled kernel up on every call,
and autograd runs a CUDA backward's Python on its own thread, about three times slower
(measured on an H200 machine's host: ``benchmarks/gpu_diagnose.py``).

**Every launch** goes through ``launch(kernel, grid, *args, **constexprs)``. Its first call
for a variant goes through ``kernel[grid](...)``, and the compiled kernel is kept under a key
of what Triton specialises on, read cheaply from the arguments (``specialisation``): a
tensor's dtype, device and 16-byte alignment; an int's being 1, a multiple of 16, within
int32; the constexprs, num_warps and num_stages. Equal keys mean equal specialisations, so a
later call with the same key calls the compiled launcher directly.

**The life of a call** of a forward or backward that can replay (LayerNorm, RMSNorm, the
fused residual RMSNorm, BatchNorm in training; Dropout cannot: its seed changes every call).
The op names what its launches depend on, its *signature* (shapes, strides, dtypes, flags),
and asks ``look_up``:

1. the first call with a signature runs the full path, which tunes (``_tune``: it times the
   candidate configurations) and measures the kernels' occupancy;
2. the second runs the full path again, with a *recorder*: each ``launch`` appends a
   ``RecordedLaunch`` (compiled variant, grid, constexprs), and ``keep`` stores them, with
   whatever else the op needs, as the signature's *recording*;
3. every later call finds the recording and *replays* it: the op allocates its outputs and
   calls the recorded launches with this call's addresses, in the kernel's argument order.
   That is ~20 operations on the host instead of ~80.

In an op's file (``layer_norm.forward``, in short):

    call = _fast_path.replayable(signature, x, w, b)     # None: these tensors never replay
    found = _fast_path.look_up(call)
    if found.recording is not None:                      # 3.
        x_at, w_at, b_at = call.addresses
        found.recording.launch(stream, x_at, y.data_ptr(), w_at, b_at, ...)
        return y
    ... the full path; every launch(..., recorder=found.recorder) ...       # 1. and 2.
    _fast_path.keep(found, 1, lambda launch: ForwardRecording(launch, ...))   # 2.

So a mistake in a replay shows from the third call on: the tests run five
(``tests/kernels/test_replay.py``). A forward also tells its backward how to replay
(``Replayable``: the backward's signature, the device, the addresses of the saved tensors),
and a backward first checks that autograd handed it those very tensors (``moved_by_hook``):
a saved-tensor hook (offloading, checkpointing) hands over copies elsewhere. A gradient with
other strides, a misaligned address, a strided weight, another current device or a launch
hook (a profiler's) takes the full path.

Triton's private launcher API is used in ``_triton_internals`` only; when it has changed,
the fast path turns itself off with a warning and every launch goes through
``kernel[grid](...)``, with the same results. Under the interpreter, for CPU tensors and
with ``FROMSCRATCH_FAST_LAUNCH=0`` it is off as well.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from typing import Any, Callable, Iterator, NamedTuple

import torch

from . import _triton_internals as triton_internals
from ._common import interpreting
from ._triton_internals import RecordedLaunch, Variant

ENABLED = os.environ.get("FROMSCRATCH_FAST_LAUNCH", "1") != "0"
_Tensor = torch.Tensor
_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1

#: launches that skipped Triton's dispatch (the tests read it)
fast_launches = 0
#: replays so far by the name that opens the signature ("layer_norm", "layer_norm_fwd", ...)
replays: Counter[str] = Counter()


# --- on or off ----------------------------------------------------------------------------

#: [whether the fast path is on], decided on first use (``_decide``)
_on: list[bool] = []


def _off_with_warning(reason: str) -> None:
    """Turn the fast path off for the process, saying why (once)."""
    _on[:] = [False]
    _variants.clear()
    _recordings.clear()
    warnings.warn(f"fromscratch.kernels: the fast launch path is off because {reason}; every "
                  "kernel now launches through triton's kernel[grid](...), with the same results "
                  "and more host time per launch (FROMSCRATCH_FAST_LAUNCH=0 silences this)",
                  RuntimeWarning, stacklevel=3)


def _decide(on: bool, cuda: bool = True) -> bool:
    """Whether the fast path may be on (``on``) and Triton (and, with ``cuda``, torch's
    CUDA side) launches as it expects."""
    _on[:] = [False]
    if on:
        problem = triton_internals.protocol_problem(cuda)
        if problem is not None:
            _off_with_warning(problem)
        else:
            _on[:] = [True]
    return _on[0]


def _takes(t: torch.Tensor) -> bool:
    """Whether a launch whose first argument is ``t`` may take the fast path (CUDA only)."""
    return t.is_cuda


def enabled_for(t: torch.Tensor) -> bool:
    """Whether launches with ``t`` as first argument take the fast path."""
    if not _on:
        _decide(ENABLED and not interpreting())
    return _on[0] and _takes(t)


def set_enabled(on: bool) -> bool:
    """Switch the fast path on (when Triton allows it) or off; returns whether it is on.
    (``benchmarks/gpu_diagnose.py`` times both.)"""
    return _decide(on and ENABLED and not interpreting())


current_stream = triton_internals.current_stream
_current_device = triton_internals.current_device


@contextlib.contextmanager
def taken_by_cpu_tensors(stream: int = 0) -> Iterator[None]:
    """For tests and ``benchmarks/host_overhead.py``: CPU tensors take the fast path as CUDA
    ones do, with ``stream`` for the stream handle and -1 (a CPU tensor's) for the current
    device, and what was compiled or recorded before is set aside meanwhile; the check
    of Triton's launcher protocol still runs first. The kernels must be stand-ins whose
    compiled kernels' launchers take addresses (under the interpreter nothing compiles).
    ``FROMSCRATCH_FAST_LAUNCH=0`` does not apply here."""
    global current_stream, _current_device, _takes
    saved = (current_stream, _current_device, _takes, list(_on), dict(_variants),
             dict(_recordings), set(_tuned))
    current_stream, _current_device = (lambda device: stream), (lambda: -1)
    _takes = lambda t: True                                                  # noqa: E731
    _variants.clear()
    _recordings.clear()
    _tuned.clear()
    try:
        _decide(True, cuda=False)
        yield
    finally:
        current_stream, _current_device, _takes = saved[:3]
        _on[:] = saved[3]
        for live, kept in zip((_variants, _recordings, _tuned), saved[4:]):
            live.clear()
            live.update(kept)


# --- every launch ---------------------------------------------------------------------------

#: specialisation key -> the compiled ``Variant``. Kernels are keyed by id() (a JITFunction's
#: own hash takes a lock); they are module globals that live as long as the process.
_variants: dict[tuple, Variant] = {}


def specialisation(a: object) -> object:
    """What Triton's specialisation can depend on, for one runtime argument (``launch``
    computes the same inline for tensors and ints)."""
    if isinstance(a, _Tensor):
        return (a.dtype, a.get_device(), not a.data_ptr() & 15)
    if type(a) is int:
        return (a == 1, not a & 15, _I32_MIN <= a <= _I32_MAX)
    return (type(a), a) if type(a) is bool else type(a)


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, num_warps: int = 4,
           num_stages: int | None = None, recorder: list | None = None,
           **constexprs: Any) -> Any:
    """``kernel[grid](*args, num_warps=..., num_stages=..., **constexprs)``: the runtime
    arguments positionally, in the kernel's order, then every constexpr by name. Returns the
    compiled kernel. With a ``recorder`` (from ``look_up``), a ``RecordedLaunch`` of this
    launch is appended to it (None when it cannot be replayed)."""
    global fast_launches
    first = args[0]
    key = variant = None
    if enabled_for(first):
        device = first.device.index
        items: list[object] = [id(kernel), device, num_warps, num_stages, *constexprs.items()]
        values: list[object] = []         # what the launcher gets: tensors as their addresses
        for a in args:
            if isinstance(a, _Tensor):
                address = a.data_ptr()
                items.append((a.dtype, a.get_device(), not address & 15))
                values.append(address)
            else:
                items.append((a == 1, not a & 15, _I32_MIN <= a <= _I32_MAX)
                             if type(a) is int else specialisation(a))
                values.append(a)
        key = tuple(items)
        variant = _variants.get(key)
        if variant is not None and triton_internals.hooks_idle():
            variant.launch(grid, current_stream(device), values)
            fast_launches += 1
            if recorder is not None:
                recorder.append(variant.recorded(grid))
            return variant.compiled
    options = {"num_warps": num_warps}
    if num_stages is not None:
        options["num_stages"] = num_stages
    compiled = kernel[grid](*args, **options, **constexprs)
    if key is not None and variant is None:
        try:
            variant = triton_internals.variant(kernel, compiled, len(args), constexprs)
        except triton_internals.ProtocolChanged as e:
            _off_with_warning(str(e))
        if variant is not None and _on[0]:
            _variants[key] = variant
    if recorder is not None:
        recorder.append(None if variant is None or not _on[0]
                        or not triton_internals.hooks_idle() else variant.recorded(grid))
    return compiled


# --- replay ---------------------------------------------------------------------------------

class Replayable(NamedTuple):
    """What a forward or backward needs to replay: the signature its recording is keyed on
    (a tuple opening with the op's name), its device, and the addresses of the tensors its
    launches read (for a backward, ``SavedAddresses``)."""
    signature: tuple
    device: int
    addresses: tuple[int, ...]


class SavedAddresses(NamedTuple):
    """Where the tensors a norm's backward reads live: x, the weight (x's address stands in
    for a missing one, never read), the mean (RMSNorm's rstd stands in) and rstd."""
    x: int
    weight: int
    mean: int
    rstd: int


class BackwardSignature(NamedTuple):
    """What a norm's backward recording is keyed on, besides its gradients."""
    op: str                              # "layer_norm", "rms_norm" or "batch_norm"
    rows: int
    cols: int
    row_stride: int                      # x's
    dtype: torch.dtype                   # x's
    weight_dtype: torch.dtype | None     # None without a weight
    has_bias: bool
    bias_dtype: torch.dtype              # x's dtype without a bias
    has_ds: bool                         # the fused residual RMSNorm: dx += ds
    batch_stats: bool                    # BatchNorm in training (mean and rstd are functions of x)


def backward_signature(op: str, x: torch.Tensor, weight: torch.Tensor | None, has_bias: bool,
                       bias_dtype: torch.dtype | None, has_ds: bool = False,
                       batch_stats: bool = False) -> BackwardSignature:
    m, n = x.shape
    return BackwardSignature(op, m, n, x.stride(0), x.dtype,
                             None if weight is None else weight.dtype, has_bias,
                             bias_dtype or x.dtype, has_ds, batch_stats)


#: the records below are made on every replayed call, with tuple.__new__: a NamedTuple's own
#: constructor is a Python call, several times slower (the same tuple either way)
_new = tuple.__new__


def replayable(signature: tuple, *tensors: torch.Tensor) -> Replayable | None:
    """The ``Replayable`` of a call whose launches read ``tensors``, or None where replay
    does not apply to them: the fast path is off for the first (CPU, interpreter, switched
    off), a tensor's last dimension is strided, or an address is not 16-byte aligned."""
    first = tensors[0]
    if not enabled_for(first):
        return None
    for t in tensors:
        if t.stride(-1) != 1:
            return None
    addresses = tuple([t.data_ptr() for t in tensors])
    bits = 0
    for p in addresses:
        bits |= p
    return None if bits & 15 else _new(Replayable, (signature, first.get_device(), addresses))


def backward_replayable_at(signature: BackwardSignature, device: int, x: int, weight: int,
                           mean: int, rstd: int) -> Replayable | None:
    """A norm's backward's ``Replayable`` from the addresses of what it will read (x's for a
    missing weight, rstd's for RMSNorm's mean), None if one is not 16-byte aligned: what a
    forward that has just replayed hands its backward (it holds them already)."""
    if (x | weight | mean | rstd) & 15:
        return None
    return _new(Replayable, (signature, device, _new(SavedAddresses, (x, weight, mean, rstd))))


def backward_replayable(signature: BackwardSignature, x: torch.Tensor,
                        weight: torch.Tensor | None, mean: torch.Tensor | None,
                        rstd: torch.Tensor) -> Replayable | None:
    """``replayable`` for a norm's backward, its addresses as ``SavedAddresses``."""
    w = weight if weight is not None else x
    mu = mean if mean is not None else rstd
    if (not enabled_for(x) or x.stride(-1) != 1 or w.stride(-1) != 1 or mu.stride(-1) != 1
            or rstd.stride(-1) != 1):
        return None
    return backward_replayable_at(signature, x.get_device(), x.data_ptr(), w.data_ptr(),
                                  mu.data_ptr(), rstd.data_ptr())


def moved_by_hook(call: Replayable, x: torch.Tensor, weight: torch.Tensor | None,
                  mean: torch.Tensor | None, rstd: torch.Tensor) -> bool:
    """Whether the tensors autograd hands a backward are not where its forward prepared the
    replay for (``call``), or x's row stride changed. A saved-tensor hook (offloading with
    ``torch.autograd.graph.save_on_cpu``, non-reentrant checkpointing) hands over copies at
    other addresses, while the originals' memory may already hold other tensors: the
    addresses must then be worked out again from the copies. (A copy at the very address of
    its original has its shape and dtype, as those hooks make them; a contiguous copy of a
    row-strided x shows in the stride.)"""
    at = call.addresses
    return not (x.data_ptr() == at.x and rstd.data_ptr() == at.rstd
                and x.stride(0) == call.signature.row_stride and x.stride(1) == 1
                and (weight is None or weight.data_ptr() == at.weight)
                and (mean is None or mean.data_ptr() == at.mean))


class Lookup(NamedTuple):
    """What ``look_up`` found for a call."""
    key: tuple                           # signature, device and the gradients' layouts
    recording: Any | None                # replay this (the third and later calls)
    recorder: list | None                # the second call: record its launches into this


#: key -> the ``Lookup`` that replays it: its recording, whatever the op's ``make`` built
#: from the recorded launches (made once, so that a replay allocates no lookup of its own)
_recordings: dict[tuple, Lookup] = {}
#: keys whose first call, the one that tunes, has run
_tuned: set[tuple] = set()
#: more distinct keys than this (say, a row count that changes every step) start both over
MAX_KEYS = 4096


def look_up(call: Replayable, *grads: torch.Tensor | None) -> Lookup:
    """Where a call with ``call``'s signature stands: the first (run the full path), the
    second (run it with ``recorder`` passed to every launch, then ``keep``) or a later one
    (replay ``recording``). A backward passes its incoming gradients, part of its key; a
    forward passes none."""
    key = (call.signature, call.device, *[None if g is None else
                      (g.dtype, g.get_device(), g.stride(0), g.stride(-1),
                       not g.data_ptr() & 15) for g in grads])
    replay = _recordings.get(key)
    if replay is not None:
        # recorded launches run only while the fast path is on, no launch hook is installed
        # and the call's device is the current one (a launch goes to its context)
        if _on[0] and triton_internals.hooks_idle() and _current_device() == call.device:
            replays[call.signature[0]] += 1
            return replay
        return _new(Lookup, (key, None, None))
    recorder = None
    if all(g is None or g.stride(-1) == 1 for g in grads):   # no copy in the full path
        if key in _tuned:
            recorder = []
        elif len(_tuned) >= MAX_KEYS:
            _tuned.clear()
            _recordings.clear()
        _tuned.add(key)
    return _new(Lookup, (key, None, recorder))


def keep(found: Lookup, launches: int, make: Callable[..., Any]) -> None:
    """Store ``make(*recorded)`` as the recording of ``found.key`` when this call recorded
    ``launches`` launches, each of which can be replayed."""
    recorded = found.recorder
    if recorded is not None and len(recorded) == launches and None not in recorded:
        _recordings[found.key] = Lookup(found.key, make(*recorded), None)


def padded_to_16_bytes(n: int) -> int:
    """``n`` float32 elements rounded up to whole 16 bytes. A replay puts two scratch buffers
    in one allocation, the second ``padded_to_16_bytes(len(first))`` elements in: its address
    is then 16-byte aligned, as the separate allocation the launch was recorded with was, so
    the recorded variant's specialisation holds."""
    return -(-n // 4) * 4


class ForwardRecording(NamedTuple):
    """A row norm's forward, recorded: its one launch, and the signature of its backward (a
    replayed forward hands it on without working it out again)."""
    launch: RecordedLaunch
    backward: BackwardSignature
