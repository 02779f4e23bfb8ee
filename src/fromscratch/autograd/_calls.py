"""How an entry calls its Function: which form of it, and the kernels' when they run.

* On the ``ops`` path, ``function(Fn)``: ``Fn`` itself inside a torch.func transform, else
  ``everyday(Fn)``, the same Function in the classic form, cheaper on the host.
* On the Triton path, ``run_kernels(kernels().LayerNormFn, "layer_norm", ...)``: the kernels'
  Function eagerly, their custom op (``kernels.library``) under torch.compile.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

from ..ops._xp import functorch_stack


@functools.lru_cache(maxsize=None)              # one class per (fn, public), made once
def everyday(fn: type, public: int) -> type:
    """``fn`` in the classic form: ``forward(ctx, *inputs)`` runs ``fn.forward``, hands ``ctx``
    to ``fn.setup_context`` itself and returns the first ``public`` outputs (a tuple, as
    ``fn``'s); the backward is ``fn``'s. Same maths, same saved tensors. Why: with
    ``setup_context`` defined, ``Function.apply`` binds the arguments with
    ``inspect.signature`` on every call (~12 us) and materialises zero gradients for the
    statistics; at small sizes that was a quarter of a step. torch.func transforms need
    ``fn`` itself (``ops._xp.functorch_stack()`` tells)."""
    def forward(ctx: Any, *inputs: Any) -> Any:
        outputs = fn.forward(*inputs)
        fn.setup_context(ctx, inputs, outputs)
        return outputs[:public]

    def backward(ctx: Any, *grads: Any) -> Any:
        return fn.backward(ctx, *grads, *([None] * (fn.OUTPUTS - public)))
    # the same name, so the graph shows LayerNormFnBackward either way
    return type(fn.__name__, (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward),
                 "__doc__": fn.__doc__, "__module__": fn.__module__})


def function(fn: type, public: int = 1) -> type:
    """``fn`` inside a torch.func transform, else its cheaper classic form (``everyday``)
    returning the first ``public`` outputs."""
    return fn if functorch_stack() else everyday(fn, public)


_kernel_functions: list = []      # fromscratch.kernels.autograd once imported


def kernels() -> Any:
    """The kernels' autograd Functions (``fromscratch.kernels.autograd``, which also holds
    their custom ops as ``.library``), imported on first use: it imports triton, which the
    other backends do not need. A list lookup afterwards, cheaper than an import statement on
    every call."""
    if not _kernel_functions:
        from ..kernels import autograd
        _kernel_functions.append(autograd)
    return _kernel_functions[0]


def run_kernels(fn: type, traced: str, *args: object) -> Any:
    """``fn.apply(*args)`` for a Function of the Triton kernels; under torch.compile the same
    through ``kernels.library.<traced>``: custom ops that a compiled graph holds as single
    operators (no graph break; CUDA graphs of mode="reduce-overhead" capture them). Eagerly
    the Function is cheaper on the host."""
    if torch.compiler.is_compiling():
        library = kernels().library
        if library is None:                    # it did not load (a warning said why)
            return _outside_graph(fn, *args)
        return getattr(library, traced)(*args)
    return fn.apply(*args)


@torch.compiler.disable
def _outside_graph(fn: type, *args: object) -> object:
    return fn.apply(*args)
