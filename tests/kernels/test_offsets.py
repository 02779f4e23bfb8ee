"""Element offsets past 2^31: rows that lie more than 2^31 elements into their storage.

The kernels must compute addresses in int64 (docs/kernels.md: any number of rows, with
offsets past 2^31 elements); an int32 row offset wraps and reads or writes the wrong row.
Three rows a stride of 2^30 + 32 elements apart put the last one past 2^31 without
touching the gigabytes between them: on the CPU the storage is allocated but never written
outside the rows, so its pages are never committed (the interpreter, like a GPU, computes
row * stride in the kernel's integer types, so a wrap shows up here too). x and dy both
lie far; the outputs are ordinary tensors. (On a GPU the storages are real: 4 GiB each.)

Dropout's offsets are int64 too (``dropout._dropout_kernel``), but its kernel walks a
contiguous tensor from element 0: past 2^31 means 2^31 elements processed, too slow for
the interpreter, so it is not tested here.
"""
from __future__ import annotations

import pytest
import torch

from tests.kernels import test_batch_norm as bn_tests
from tests.kernels import test_layer_norm as ln_tests
from tests.kernels import test_rms_norm as rms_tests
from tests.kernels._helpers import close, param, rows

STRIDE = 2**30 + 32                          # row 2 starts at 2^31 + 64


def far_rows(n: int, dtype: torch.dtype, device: torch.device, seed: int = 0,
             shifted: bool = True) -> torch.Tensor:
    """Three (n,) rows of ``rows(3, n, ...)`` at element offsets 0, 2^30 + 32, 2^31 + 64 of
    one storage (row stride ``STRIDE``)."""
    storage = torch.empty(2 * STRIDE + n, dtype=dtype, device=device)
    x = storage.as_strided((3, n), (STRIDE, 1))
    x.copy_(rows(3, n, dtype, device, seed, shifted))
    assert x.storage_offset() + 2 * x.stride(0) > 2**31
    return x


@pytest.mark.parametrize("n", [100, 20000])          # 20000: the looped kernels
def test_layer_norm(device, n):
    x, dy = far_rows(n, torch.bfloat16, device), far_rows(n, torch.bfloat16, device, 3, False)
    w, b = param(n, torch.float32, device, 1, shift=1.0), param(n, torch.float32, device, 2)
    ln_tests.check_all(ln_tests.run_kernel(x, w, b, dy), ln_tests.reference(x, w, b, dy), x,
                       torch.bfloat16, torch.float32)


@pytest.mark.parametrize("n", [100, 10000])          # 10000: the looped backward
def test_rms_norm(device, n):
    x, dy = far_rows(n, torch.float16, device), far_rows(n, torch.float16, device, 3, False)
    w = param(n, torch.float16, device, 1, shift=1.0)
    rms_tests.check_all(rms_tests.run_kernel(x, w, dy), rms_tests.reference(x, w, dy), 3,
                        torch.float16)


def test_fused_add_rms_norm(device):
    from fromscratch.kernels import residual_rms_norm as K
    from fromscratch.ops import rms_norm as rn
    x, r = far_rows(100, torch.float16, device), far_rows(100, torch.float16, device, 5)
    w = param(100, torch.float32, device, 1, shift=1.0)
    s, y, _, _ = K.forward(x, r, w, 1e-6)
    s_ref = x.double().cpu() + r.double().cpu()
    close(s, s_ref, "s", torch.float16)
    close(y, rn.forward(s_ref, w.double().cpu(), 1e-6)[0], "y", torch.float16)


def test_batch_norm(device):
    x, dy = far_rows(24, torch.bfloat16, device), far_rows(24, torch.bfloat16, device, 3, False)
    w, b = param(24, torch.float32, device, 1, shift=1.0), param(24, torch.float32, device, 2)
    bn_tests.check_all(bn_tests.run_kernel(x, w, b, dy), bn_tests.reference(x, w, b, dy), x,
                       torch.bfloat16)
