"""Small helpers every kernel file shares: launch geometry, layout, devices.

Nothing here knows any formula. The conventions the kernels rely on:

* a 2-D tensor handed to a kernel has a unit stride along its last dimension; its row
  stride is passed to the kernel, so row slices of wider tensors need no copy;
* row indices are cast to int64 inside the kernels before they multiply a stride, so
  tensors past 2**31 elements address correctly;
* maths is float32 whatever the storage dtype; outputs are cast once on store.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable

import torch

#: dtypes the kernels accept for activations (weights may be any of these too).
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton runs kernels in its NumPy interpreter (``TRITON_INTERPRET=1``).

    Triton reads the variable when a kernel is decorated, i.e. when this package is
    first imported, so it must be set before that."""
    return _INTERPRET


_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << (max(int(n), 1) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive ints. Plain Python: ``triton.cdiv`` is a constexpr function
    in recent Triton, and a host call of it costs ~1.4 us (triton 3.9), several per launch."""
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Multiprocessors on ``device``; a small stand-in under the interpreter (CPU)."""
    if device.type == "cuda":
        return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4


def unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last stride is 1 (rows may still be strided), else a copy.

    The kernels read rows as contiguous runs of memory; a tensor whose columns are strided
    (a transpose, ``x[:, ::2]``, an expanded gradient) is copied, never read wrongly.
    Inputs are only read, so a row stride of 0 (a broadcast row) is fine as it is."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def flat_contiguous(t: torch.Tensor) -> torch.Tensor:
    """A contiguous version of ``t`` (a no-op when it already is)."""
    return t if t.is_contiguous() else t.contiguous()


def vector(t: torch.Tensor | None) -> torch.Tensor | None:
    """A per-feature parameter as the kernels read it, ``W + cols``: contiguous (a strided
    one, such as ``weight[::2]`` or a column of a packed tensor, is copied); None stays."""
    return t if t is None or t.is_contiguous() else t.contiguous()


def same_device(op: str, *tensors: torch.Tensor | None) -> torch.device:
    """The one device all given tensors live on; ``ValueError`` naming them otherwise."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise ValueError(f"{op}: tensors are on different devices ({names}); move them to one")
    return devices.pop()


def check_dtype(op: str, t: torch.Tensor, name: str = "input") -> None:
    if t.dtype not in DTYPES:
        raise TypeError(f"{op}: the Triton kernels take float32, float16 or bfloat16 {name}, "
                        f"got {t.dtype}; use backend='torch' for it")


_DOUBLE_BACKWARD = ("the Triton kernels' backward is not differentiable (double backward, "
                    "create_graph=True); use backend='torch' for it")


def refuse_double_backward() -> None:
    """Raise when a backward of the kernels runs with ``create_graph=True``: their gradients
    carry no graph of their own, and a second derivative through them would silently miss
    their dependence on x."""
    if torch.is_grad_enabled():
        raise RuntimeError(_DOUBLE_BACKWARD)


def once_differentiable(backward: Callable) -> Callable:
    """For an autograd Function's backward: ``refuse_double_backward`` first (inlined: it
    runs at every backward)."""
    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Any):
        if torch.is_grad_enabled():
            raise RuntimeError(_DOUBLE_BACKWARD)
        return backward(ctx, *grads)
    return wrapper


class on_device:
    """Make ``t``'s CUDA device current while launching (Triton launches on the current one)."""

    def __init__(self, t: torch.Tensor):
        self.index = t.device.index if t.device.type == "cuda" else None
        self.prev: int | None = None

    def __enter__(self) -> None:
        if self.index is not None:
            cur = torch.cuda.current_device()
            if cur != self.index:
                self.prev = cur
                torch.cuda.set_device(self.index)

    def __exit__(self, *exc: object) -> None:
        if self.prev is not None:
            torch.cuda.set_device(self.prev)


# ---------------------------------------------------------------------------------------
# Launch configurations for the row-wise kernels (LayerNorm, RMSNorm). The first entry is
# the heuristic default; the others are what the tuner (``_tune``) may pick on a GPU.
# ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def row_fwd_configs(block_n: int) -> tuple[tuple[int, int], ...]:
    """(rows per program, num_warps) for a forward that keeps each row in registers.

    A program handles ~4096 values (short rows are grouped), ~32 per thread: compiled for
    sm_90 these take 30-130 registers, so 2-9 programs share a multiprocessor and keep
    48-80 KiB of loads in flight on it."""
    bm = max(1, min(16, 4096 // block_n))
    w = max(4, min(16, bm * block_n // 1024))
    cands = [(bm, w), (2 * bm, min(16, 2 * w)), (bm, min(16, 2 * w))]
    if bm * block_n // (32 * (w // 2)) <= 64 and w >= 8:
        cands.append((bm, w // 2))
    return tuple(dict.fromkeys(cands))


@functools.lru_cache(maxsize=None)
def row_bwd_configs(block_n: int) -> tuple[tuple[int, int, int, bool, int], ...]:
    """(rows per tile, num_warps, waves, prefetch, stages) for the persistent backward.

    Each program walks tiles of BLOCK_M rows, G apart, and keeps dweight (and dbias)
    partials of length N in float32 registers: at most ~16 per thread, hence
    num_warps >= N / 512. Those registers cap the programs a multiprocessor holds at once
    (compiled for sm_90: 3-6 for N = 1024, 2 for N = 4096, 1 for N = 8192); the grid is
    ``waves`` times that many per multiprocessor, measured from the compiled kernel, so
    every program runs at the same time. So few programs keep too few loads in flight to
    cover the memory latency on their own; two ways to keep more in flight, which the tuner
    compares on the card: ``prefetch`` loads the next tile into registers before the current
    one is computed, and ``stages`` > 1 lets Triton's software pipeliner stage the loads of
    the next tiles through shared memory (registers stay free for the accumulators)."""
    bm = max(1, min(16, 4096 // block_n))
    w = max(4, min(16, max(bm * block_n // 1024, block_n // 512)))
    cands = [(bm, w, 1, True, 1), (bm, w, 1, False, 3), (bm, w, 1, False, 4),
             (bm, min(16, 2 * w), 1, True, 1), (bm, w, 2, True, 1)]
    cands.append((max(1, bm // 2), w, 1, False, 3) if bm > 1
                 else (bm, max(4, w // 2), 1, True, 1))
    return tuple(dict.fromkeys(cands))


def interleaved_grid(m: int, block_m: int, programs: int) -> int:
    """Programs of a persistent grid whose program p takes the row tiles p, p + G, p + 2G, ...:
    ``programs`` (those that fit on the GPU at once), or fewer when there are fewer tiles."""
    return max(1, min(programs, cdiv(m, block_m)))


def partials(prev: torch.Tensor | None, shape: tuple[int, ...], device: torch.device
             ) -> torch.Tensor:
    """An uninitialised float32 buffer of per-program partial sums (``prev`` when it fits:
    the tuner launches several candidates in one call)."""
    if prev is not None and tuple(prev.shape) == tuple(shape):
        return prev
    return torch.empty(shape, dtype=torch.float32, device=device)


_resident: dict[tuple, int] = {}


def resident_programs(key: tuple, default: int = 2) -> int:
    """How many programs of the kernel variant ``key`` fit on one multiprocessor at once,
    as measured by ``note_resident`` after its first launch (``default`` before that)."""
    return _resident.get(key, default)


def note_resident(key: tuple, compiled: object, num_warps: int, device: torch.device) -> None:
    """Record the occupancy of a just-launched kernel from its compiled register and shared
    memory use, as the CUDA occupancy calculator does (a persistent grid of exactly that many
    programs per multiprocessor runs in one wave, with no tail)."""
    if key in _resident or device.type != "cuda":
        return
    regs = getattr(compiled, "n_regs", None)
    if not regs:
        return
    props = torch.cuda.get_device_properties(device)
    reg_file = getattr(props, "regs_per_multiprocessor", 65536)
    max_threads = getattr(props, "max_threads_per_multi_processor", 2048)
    smem = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
    per_warp = -(-int(regs) * 32 // 256) * 256           # registers are granted per warp
    by_regs = (reg_file // per_warp) // num_warps
    by_threads = max_threads // (32 * num_warps)
    shared = int(getattr(getattr(compiled, "metadata", None), "shared", 0) or 0)
    by_smem = smem // (shared + 1024) if shared else 32
    _resident[key] = max(1, min(by_regs, by_threads, by_smem, 32))


def persistent_grid(m: int, block_m: int, programs: int) -> tuple[int, int]:
    """(grid size G, rows per program): contiguous row blocks, a multiple of ``block_m`` each."""
    programs = max(1, min(programs, cdiv(m, block_m)))
    rows = cdiv(cdiv(m, programs), block_m) * block_m
    return cdiv(m, rows), rows
