"""Replaying a backward's launches: the work of issuing it done once, ahead.

For CUDA tensors autograd runs a backward on its own worker thread, where our Python was
measured about three times slower per operation than on the calling thread (an H200
machine's host: ``benchmarks/gpu_diagnose.py``). A backward wrapper spends ~80 operations
working out what is the same at every step (geometry, tuned configuration, the
specialisation facts of every argument), and the GPU waited for it. So:

1. the forward, on the calling thread, calls the op's ``prepare``: the *facts* of what the
   backward will read (shapes, strides, dtypes, device) and their addresses;
2. the second backward with the same facts (and gradient facts) records its launches as
   ``_launch.Bound`` objects, a *recipe* (the first one tunes and measures occupancy);
3. from then on a backward with those facts allocates its outputs and calls the recipe's
   launches with this step's addresses: ~20 operations.

The row norms' forwards and BatchNorm's training forward replay the same way (their facts
computed on the spot): cheaper on the calling thread too.

The facts are everything the launches' variants were keyed on and every value the recipe
bakes in, so a replay launches exactly what the full path would. The addresses are the
forward's: a backward checks that autograd hands it the same tensors (``unmoved``), since a
saved-tensor hook (offloading, checkpointing) hands over copies elsewhere. Alignment is not a fact
here: ``prepared`` returns None for any misaligned address or strided last dimension (the
full path handles those).
This module keeps the bookkeeping; each op writes its own ``prepare`` and replay, with its
kernels' arguments spelled out in order.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from . import _launch

_recipes: dict[tuple, Any] = {}
_seen: set[tuple] = set()     # keys run once: that call tunes and measures
#: more distinct keys than this (say, a row count that changes every step) start both over
MAX_KEYS = 4096
#: replays so far by the name that opens the facts ("layer_norm", "layer_norm_fwd", ...)
replays: Counter[str] = Counter()


def prepared(facts: tuple, *tensors: torch.Tensor) -> tuple | None:
    """(facts, device index, addresses of ``tensors``), or None where replay does not apply
    to them: the launch shortcut is off for the first (CPU, interpreter, switched off), a
    tensor's last dimension is strided, or an address is not 16-byte aligned."""
    first = tensors[0]
    if not _launch.enabled_for(first):
        return None
    for t in tensors:
        if t.stride(-1) != 1:
            return None
    return handed_over(facts, first.get_device(), *[t.data_ptr() for t in tensors])


def handed_over(facts: tuple, index: int, *ptrs: int) -> tuple | None:
    """(facts, device index, *ptrs), None if an address is not 16-byte aligned: the end of
    ``prepared``, and what a forward that has just replayed its own launch hands its backward
    (it knows the device and the addresses already; its inputs passed its own ``prepared``)."""
    bits = 0
    for p in ptrs:
        bits |= p
    return None if bits & 15 else (facts, index, *ptrs)


def saved(x: torch.Tensor, weight: torch.Tensor | None, mean: torch.Tensor | None,
          rstd: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors a norm's backward recipe holds the addresses of, in order: x, the weight
    (x stands in for a missing one, never read), the mean (RMSNorm's rstd stands in) and
    rstd."""
    return x, weight if weight is not None else x, mean if mean is not None else rstd, rstd


def unmoved(prep: tuple, x: torch.Tensor, weight: torch.Tensor | None,
            mean: torch.Tensor | None, rstd: torch.Tensor) -> bool:
    """Whether the tensors autograd hands a backward are where its forward prepared the
    replay for (``prep``'s addresses, in ``saved``'s order) and x keeps its row stride.
    A saved-tensor hook (offloading with ``torch.autograd.graph.save_on_cpu``,
    non-reentrant checkpointing) hands over copies at other addresses, while the originals'
    memory may already hold other tensors: the addresses must then be worked out again from
    the copies. (A copy at the very address of its original has its shape and dtype, as
    those hooks make them; a contiguous copy of a row-strided x shows in the stride.)"""
    _, _, px, pw, pm, pr = prep
    return (x.data_ptr() == px and rstd.data_ptr() == pr and x.stride(0) == prep[0][3]
            and x.stride(1) == 1 and (weight is None or weight.data_ptr() == pw)
            and (mean is None or mean.data_ptr() == pm))


def backward_facts(op: str, x: torch.Tensor, weight: torch.Tensor | None, has_bias: bool,
                   bias_dtype: torch.dtype | None, flag: bool) -> tuple:
    """What a norm's backward recipe is keyed on besides its gradients: the geometry and
    dtypes of x and the parameters, and the op's one flag (the row norms' ``has_ds``,
    BatchNorm's ``batch_stats``)."""
    m, n = x.shape
    return (op, m, n, x.stride(0), x.dtype, None if weight is None else weight.dtype, has_bias,
            bias_dtype or x.dtype, flag)


def begin(prep: tuple, *grads: torch.Tensor | None) -> tuple[tuple, Any, list | None]:
    """(key, recipe to replay or None, list to record this call's launches into or None)
    for a backward given ``prep`` (from the forward) and its incoming gradients; a forward
    (which gets ``prepared`` in the same call) passes no gradients."""
    key = (prep[0], prep[1], *[None if g is None else
                      (g.dtype, g.get_device(), g.stride(0), g.stride(-1),
                       not g.data_ptr() & 15) for g in grads])
    recipe = _recipes.get(key)
    if recipe is not None:
        if _launch.replayable(prep[1]):
            replays[prep[0][0]] += 1
            return key, recipe, None
        return key, None, None
    record = None
    if all(g is None or g.stride(-1) == 1 for g in grads):   # no copy in the full path
        if key in _seen:
            record = []
        elif len(_seen) >= MAX_KEYS:
            _seen.clear()
            _recipes.clear()
        _seen.add(key)
    return key, None, record


def aligned(n: int) -> int:
    """``n`` float32 elements rounded up to whole 16 bytes. A replay puts two scratch buffers
    in one allocation, the second ``aligned(len(first))`` elements in: its address is then
    16-byte aligned, as the separate allocation the launch was recorded with was, so the
    recorded variant's specialisation holds."""
    return -(-n // 4) * 4


def keep(key: tuple, record: list | None, expected: int, make: Any) -> None:
    """Store ``make(*record)`` as the recipe for ``key`` when the call recorded
    ``expected`` launches, each of which can be replayed."""
    if record is not None and len(record) == expected and None not in record:
        _recipes[key] = make(*record)
