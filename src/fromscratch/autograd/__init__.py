"""Each layer between its front-ends and its formula, one file per op.

Imports run one way, down::

    nn (modules), functional  ->  autograd/<op>.py  ->  ops/<op>.py (the formulas)
                                                  ->  kernels/ (Triton, on CUDA)

``<op>.py`` holds the op's entry (``layer_norm(input, normalized_shape, ...)``: the input
checks, the choice of backend, the call), which ``nn`` and ``functional`` both call, and its
``torch.autograd.Function``, whose backward is the hand-derived one in ``ops`` (fp16/bf16
computed in float32 and cast once; torch.func transforms supported: each forward returns the
statistics its backward needs as extra, non-differentiable outputs that ``setup_context``
saves, so ``torch.func.grad``, ``vmap`` and ``jacrev`` work; double backward rebuilds the
forward's cache with grad enabled, so gradgradcheck passes). What they share:
``_dtypes`` (compute dtype, autocast off), ``_shapes`` (2-D in, the input's shape out),
``_calls`` (the classic form of a Function outside transforms; the kernels' Functions and
custom ops), ``compiled`` (``backend="compile"``: the same ops fused by torch.compile).
Which backend runs is decided in ``kernels.dispatch``.
"""
