"""Functional forms of the layers, with torch.nn.functional's signatures.

Each is defined beside its autograd Function in ``fromscratch.autograd.<op>`` (the input
checks, the choice of backend, the call) and gathered here. ``batch_norm`` is channels-last:
input (N, C) or (N, ..., C), statistics over every dimension but the last.
"""
from __future__ import annotations

from .autograd.batch_norm import batch_norm
from .autograd.dropout import dropout
from .autograd.layer_norm import layer_norm
from .autograd.rms_norm import RMS_CASTS, fused_add_rms_norm, rms_norm

__all__ = ["RMS_CASTS", "batch_norm", "dropout", "fused_add_rms_norm", "layer_norm", "rms_norm"]
