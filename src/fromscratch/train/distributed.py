"""torch.distributed for ``fit``: who am I, dealing micro-batches, DDP, summing counts.

Dealing is round-robin: every process iterates the same loader, and global micro-batch i
goes to rank ``i mod W``. A window of W*k consecutive micro-batches then gives each rank
k of them, so W processes with accumulation k take exactly the steps of one process with
accumulation W*k. In the last, shorter window a rank may get fewer micro-batches, or
none; it runs empty micro-batches (zero rows, zero weight) instead, so that every rank
makes the same forward and backward calls and the collectives inside them (DDP's gradient
all-reduce, SyncBatchNorm's all-gather) line up.
"""
from __future__ import annotations

import datetime
import gc
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world(group: Any = None) -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    if not is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def uses_gpu() -> bool:
    """Should this process put its model on its GPU? Not when the group is gloo on a
    machine with fewer GPUs than processes."""
    if not torch.cuda.is_available():
        return False
    return not is_initialized() or dist.get_backend() == "nccl"


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over every process (float64, so counts stay exact)."""
    if not is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_object(obj: Any) -> list[Any]:
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in DistributedDataParallel when torch.distributed is initialised."""
    if not is_initialized() or isinstance(model, DistributedDataParallel):
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def no_sync(model: nn.Module, sync: bool) -> ContextManager[Any]:
    """Skip DDP's gradient all-reduce unless ``sync`` (the window's last micro-batch)."""
    if sync or not isinstance(model, DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


def deal(window: list[Any], rank: int, world_size: int) -> list[Any]:
    """This rank's share of a window of global micro-batches, padded with empty ones.

    Micro-batch i goes to rank i mod W; every rank returns ceil(len(window) / W) items,
    the missing ones replaced by ``empty_like(window[0])``.
    """
    mine = window[rank::world_size]
    calls = -(-len(window) // world_size)
    return mine + [empty_like(window[0])] * (calls - len(mine))


def empty_like(batch: Any) -> Any:
    """The same structure with zero rows: every tensor sliced to ``[:0]``."""
    if isinstance(batch, torch.Tensor):
        return batch[:0]
    if isinstance(batch, (tuple, list)):
        return type(batch)(empty_like(b) for b in batch)
    if isinstance(batch, dict):
        return {k: empty_like(v) for k, v in batch.items()}
    raise TypeError(f"an uneven last window under torch.distributed needs micro-batches made "
                    f"of tensors (to build an empty one), got {type(batch).__name__}")


def read_window(it: Iterator[Any], size: int) -> list[Any]:
    """The next ``size`` micro-batches (fewer at the end of the epoch)."""
    window = []
    for batch in it:
        window.append(batch)
        if len(window) == size:
            break
    return window


# --- starting processes ---------------------------------------------------------------

def init_from_env(timeout_s: float = 300.0) -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    NCCL when every local process has a GPU of its own (GPU number LOCAL_RANK), gloo on
    the CPU otherwise. Returns False, and does nothing, outside torchrun.
    """
    if is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(local_rank + 1)))
    backend = "nccl" if torch.cuda.device_count() >= local_world else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def finish() -> None:
    """Leave the process group together: a rank that tears its connections down while
    another is still writing files can abort the other one (gloo). Garbage goes first:
    DDP wrappers sit in reference cycles, and one freed only at interpreter exit, after its
    process group, can abort the process ("terminate called without an active exception")."""
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def _entry(rank: int, fn: Callable[..., Any], world_size: int, store: str, backend: str,
           timeout_s: float, args: tuple[Any, ...]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
    fn(rank, *args)
    finish()
    # The work is done, written and synchronised: leave without the interpreter's teardown,
    # where C++ threads of torch.distributed have been seen to abort an otherwise clean run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(fn: Callable[..., Any], nproc: int, *args: Any, backend: str = "gloo",
           timeout_s: float = 300.0) -> None:
    """Run ``fn(rank, *args)`` in ``nproc`` fresh processes joined in one process group.

    ``fn`` must be importable (a module-level function). Raises if a process fails, and
    TimeoutError (after stopping them all) if they are not done in ``timeout_s`` seconds,
    so a hang fails instead of blocking. The processes meet through a file in a fresh
    temporary folder, not a TCP port: a port found free here can be taken by someone else
    before the first process binds it.
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="fromscratch-launch-") as folder:
        store = os.path.join(folder, "store")
        ctx = mp.start_processes(_entry, args=(fn, nproc, store, backend, timeout_s, args),
                                 nprocs=nproc, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        while not ctx.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                raise TimeoutError(f"{nproc} processes running {fn.__name__} did not finish "
                                   f"in {timeout_s:.0f} s")
