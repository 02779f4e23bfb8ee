"""Hidden sizes past 65536 (docs/kernels.md: up to at least 65536), not a power of two:
the norms' looped kernels, BatchNorm's channels and dropout, each against its float64
reference. A few rows keep the interpreter quick."""
from __future__ import annotations

import pytest
import torch

from tests.kernels import test_batch_norm as bn_tests
from tests.kernels import test_layer_norm as ln_tests
from tests.kernels import test_rms_norm as rms_tests
from tests.kernels._helpers import close, param, rows

N = 65537


def test_layer_norm(device):
    x = rows(2, N, torch.bfloat16, device)
    w, b = param(N, torch.float32, device, 1, shift=1.0), param(N, torch.bfloat16, device, 2)
    dy = rows(2, N, torch.bfloat16, device, seed=3, shifted=False)
    ln_tests.check_all(ln_tests.run_kernel(x, w, b, dy), ln_tests.reference(x, w, b, dy), x,
                       torch.bfloat16, torch.float32)


def test_rms_norm(device):
    x = rows(2, N, torch.float16, device)
    w = param(N, torch.float16, device, 1, shift=1.0)
    dy = rows(2, N, torch.float16, device, seed=3, shifted=False)
    rms_tests.check_all(rms_tests.run_kernel(x, w, dy), rms_tests.reference(x, w, dy), 2,
                        torch.float16)


def test_dropout(device):
    from fromscratch.kernels import dropout as K
    x = rows(2, N, torch.float32, device, shifted=False)
    seed, p = 11, 0.25
    keep = K.uniforms(x.numel(), seed, device=device).reshape(x.shape) >= p
    close(K.apply(x, p, seed), torch.where(keep, x.double() / (1 - p), 0.0), "y",
          torch.float32)


@pytest.mark.slow                     # ~15 s in the interpreter: a program per channel tile
def test_batch_norm(device):
    x = rows(4, N, torch.bfloat16, device)
    w, b = param(N, torch.float32, device, 1, shift=1.0), param(N, torch.bfloat16, device, 2)
    dy = rows(4, N, torch.bfloat16, device, seed=3, shifted=False)
    bn_tests.check_all(bn_tests.run_kernel(x, w, b, dy), bn_tests.reference(x, w, b, dy), x,
                       torch.bfloat16)
