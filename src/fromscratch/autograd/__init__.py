"""The torch.autograd.Functions of the four layers, between the front-ends and ``ops``.

Imports run one way, down::

    nn (modules)  ->  functional  ->  autograd  ->  ops (the formulas)
                                  ->  kernels (Triton, on CUDA)

``functions``: each layer's Function, whose backward is the hand-derived one in ``ops``
(fp16/bf16 computed in float32 and cast once; torch.func transforms supported).
``compiled``: ``backend="compile"``, the same ops functions fused by torch.compile.
Which of these (or the kernels) runs is decided in ``kernels.dispatch``.
"""
