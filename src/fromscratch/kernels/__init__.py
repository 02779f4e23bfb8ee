"""Fused Triton kernels for LayerNorm, RMSNorm (also fused with a residual add), Dropout and
channels-last BatchNorm, forward and backward. Design and byte model: docs/kernels.md.

The front-ends (``fromscratch.functional``, ``fromscratch.nn``) choose them with
``backend="auto" | "triton" | "torch"`` (see ``dispatch``). Importing this package does not
import triton; the kernel modules (``layer_norm``, ``rms_norm``, ``residual_rms_norm``,
``dropout``, ``batch_norm``, ``autograd``) do, and need it installed.
"""
from .dispatch import BACKENDS, check_backend, triton_available, use_kernels

__all__ = ["BACKENDS", "check_backend", "triton_available", "use_kernels"]
