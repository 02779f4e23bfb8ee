"""Kernel tests run on CPU through Triton's interpreter, and on CUDA when a GPU is present.

The interpreter has to be switched on before the kernel modules are first imported (Triton
reads TRITON_INTERPRET when a kernel is decorated); ``make test`` sets it, and this file
sets it for a bare ``pytest tests/kernels`` on a machine without a GPU.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_TRITON = False

DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    if not HAVE_TRITON:
        pytest.skip("triton is not installed (pip install 'fromscratch[kernels]')")
    if request.param == "cpu":
        from fromscratch.kernels._common import interpreting
        if not interpreting():
            pytest.skip("kernels on CPU tensors need TRITON_INTERPRET=1 set before triton "
                        "is imported")
    return torch.device(request.param)
