"""The launch shortcut (``kernels._fast_path.launch``): after one launch through
``kernel[grid]`` a variant is launched through its compiled launcher, and only when
everything Triton specialises on is the same. On CPU a stand-in kernel records which path
each call took; on a GPU the real kernels are checked against the reference through the
shortcut."""
from __future__ import annotations

from typing import Iterator

import pytest
import torch

from fromscratch.kernels import _fast_path, _triton_internals

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


class FakeCompiled:
    function, packed_metadata = "cu-function", "packed-metadata"

    def __init__(self) -> None:
        self.launches: list[tuple] = []

    def run(self, *args: object) -> None:                  # the compiled launcher
        self.launches.append(args)


class FakeKernel:
    """A ``@triton.jit`` kernel ``(X, Y, n, scale, BLOCK: constexpr)``."""
    arg_names = ["X", "Y", "n", "scale", "BLOCK"]

    def __init__(self) -> None:
        self.compiled = FakeCompiled()
        self.slow: list[tuple] = []

    def __getitem__(self, grid: tuple):
        def launch(*args: object, **kwargs: object) -> FakeCompiled:
            self.slow.append((grid, args, kwargs))
            return self.compiled
        return launch


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The shortcut switched on for CPU tensors, the stream handle a constant."""
    monkeypatch.setattr(_triton_internals, "hooks_idle", lambda: True)
    with _fast_path.taken_by_cpu_tensors(stream=7):
        yield


def test_second_launch_takes_the_compiled_launcher(fast: None) -> None:
    k = FakeKernel()
    x, y = torch.zeros(64), torch.zeros(64)
    _fast_path.launch(k, (4,), x, y, 64, 0.5, BLOCK=16, num_warps=2)
    assert len(k.slow) == 1 and k.slow[0][2] == {"num_warps": 2, "BLOCK": 16}
    assert k.compiled.launches == []
    _fast_path.launch(k, (5,), x, y, 64, 0.25, BLOCK=16, num_warps=2)
    assert len(k.slow) == 1
    # grid padded to 3-D, stream, function, metadata, no hooks, then every argument in the
    # kernel's order (the constexpr too)
    # tensors as their addresses (the launcher then skips its per-pointer driver query)
    assert k.compiled.launches == [(5, 1, 1, 7, "cu-function", "packed-metadata", None, None,
                                    None, x.data_ptr(), y.data_ptr(), 64, 0.25, 16)]


@pytest.mark.parametrize("change", ["misaligned", "int-not-16", "int-one", "int64",
                                    "dtype", "constexpr", "warps", "stages"])
def test_a_changed_specialisation_goes_through_triton(fast: None, change: str) -> None:
    k = FakeKernel()
    base = torch.zeros(80)
    x, y = base[:64], torch.zeros(64)
    args, opts = [x, y, 64, 0.5], {"BLOCK": 16, "num_warps": 4}
    _fast_path.launch(k, (1,), *args, **opts)
    if change == "misaligned":
        args[0] = base[1:65]                          # 4 bytes past a 16-byte boundary
    elif change == "int-not-16":
        args[2] = 40
    elif change == "int-one":
        args[2] = 1
    elif change == "int64":
        args[2] = 2**31 + 16                          # a multiple of 16 that needs int64
    elif change == "dtype":
        args[1] = torch.zeros(64, dtype=torch.float16)
    elif change == "constexpr":
        opts["BLOCK"] = 32
    elif change == "warps":
        opts["num_warps"] = 8
    else:
        opts["num_stages"] = 2
    _fast_path.launch(k, (1,), *args, **opts)
    assert len(k.slow) == 2, f"{change}: a new specialisation must be compiled by Triton"
    _fast_path.launch(k, (1,), *args, **opts)               # and that variant is kept in turn
    assert len(k.slow) == 2 and len(k.compiled.launches) == 1


def test_launch_hooks_and_missing_constexprs_keep_triton_s_path(
        fast: None, monkeypatch: pytest.MonkeyPatch) -> None:
    k = FakeKernel()
    x = torch.zeros(64)
    monkeypatch.setattr(_triton_internals, "hooks_idle", lambda: False)   # a profiler's hook
    for _ in range(3):
        _fast_path.launch(k, (1,), x, x, 64, 0.5, BLOCK=16)
    assert len(k.slow) == 3 and k.compiled.launches == []
    monkeypatch.setattr(_triton_internals, "hooks_idle", lambda: True)
    k2 = FakeKernel()
    for _ in range(3):                                # BLOCK left to a default: not cached
        _fast_path.launch(k2, (1,), x, x, 64, 0.5)
    assert len(k2.slow) == 3 and k2.compiled.launches == []


def test_without_the_shortcut_every_launch_goes_through_triton(fast: None) -> None:
    assert not _fast_path.set_enabled(False)
    k = FakeKernel()
    x = torch.zeros(64)
    for _ in range(2):
        _fast_path.launch(k, (1,), x, x, 64, 0.5, BLOCK=16)
    assert len(k.slow) == 2


def test_facts() -> None:
    f = _fast_path.specialisation
    assert f(torch.zeros(8)) == (torch.float32, -1, True)      # dtype, device index, aligned
    assert f(torch.zeros(8)[1:]) == (torch.float32, -1, False)
    assert f(1) == (True, False, True) and f(32) == (False, True, True)
    assert f(2**31) == (False, True, False) and f(-5) == (False, False, True)
    assert f(True) == (bool, True) and f(0.5) is float and f(None) is type(None)


@cuda_only
def test_shortcut_on_cuda_matches_the_reference() -> None:
    """The real kernels, launched again and again through the shortcut (and, from the third
    step, the backward's replay) with aligned and misaligned rows, a row stride that is not
    a multiple of 16, and row counts that cross tuner buckets: every result, gradients
    included, equals the reference, for LayerNorm, RMSNorm, the fused residual form and
    BatchNorm."""
    from fromscratch import functional as FS
    torch.manual_seed(0)
    dev, n = "cuda", 300
    before, replays_before = _fast_path.fast_launches, sum(_fast_path.replays.values())
    wf, bf = torch.randn(n, device=dev), torch.randn(n, device=dev)
    buf = torch.randn(70 * 304 + 8, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, device=dev, dtype=torch.bfloat16)
    views = {"aligned": buf[:64 * 304].view(64, 304)[:, :n],
             "misaligned": buf[1:1 + 64 * 304].view(64, 304)[:, :n],
             "odd stride": buf[:70 * 301].view(70, 301)[:, :n],
             "few rows": buf[:3 * 304].view(3, 304)[:, :n]}
    def run(fn: str, backend: str, x: torch.Tensor, r: torch.Tensor, dy: torch.Tensor,
            ds: torch.Tensor) -> list[torch.Tensor]:
        leaves = [t.detach().requires_grad_() for t in
                  ((x, w, b) if fn == "layer_norm" else (x, r, w) if fn == "fused" else
                   (x, wf, bf) if fn == "batch_norm" else (x, w))]
        if fn == "layer_norm":
            outs, grads = [FS.layer_norm(leaves[0], n, *leaves[1:], backend=backend)], [dy]
        elif fn == "rms_norm":
            outs, grads = [FS.rms_norm(leaves[0], n, leaves[1], backend=backend)], [dy]
        elif fn == "fused":
            outs = list(FS.fused_add_rms_norm(*leaves[:2], n, leaves[2], backend=backend))
            grads = [ds, dy]
        else:
            rm, rv = torch.zeros(n, device=dev), torch.ones(n, device=dev)
            outs = [FS.batch_norm(leaves[0], rm, rv, *leaves[1:], True, backend=backend), rm,
                    rv]
            grads = [dy, None, None]
        return [*outs, *torch.autograd.grad(outs[0] if fn == "batch_norm" else outs, leaves,
                                            grads[0] if fn == "batch_norm" else grads)]

    for _ in range(4):
        for name, x in views.items():
            dy, r, ds = (torch.randn(x.shape, device=dev, dtype=x.dtype) for _ in range(3))
            for fn in ("layer_norm", "rms_norm", "fused", "batch_norm"):
                outs = [run(fn, backend, x, r, dy, ds) for backend in ("triton", "torch")]
                for mine, ref in zip(*outs):      # bf16; sums over rows scale with max|ref|
                    atol = 4e-2 * max(1.0, float(ref.detach().abs().max()))
                    torch.testing.assert_close(mine.float(), ref.float(), atol=atol, rtol=2e-2,
                                               msg=lambda m: f"{fn} {name}: {m}")
    assert _fast_path.fast_launches > before, "the shortcut was never taken"
    assert sum(_fast_path.replays.values()) > replays_before, "nothing was replayed"


@cuda_only
@pytest.mark.parametrize("hook", ["save_on_cpu", "checkpoint"])
def test_replay_on_cuda_with_offloading_and_checkpointing(hook: str) -> None:
    """``torch.autograd.graph.save_on_cpu`` and non-reentrant ``torch.utils.checkpoint``
    hand the backward copies of the saved tensors at new addresses, the originals freed:
    between forward and backward, NaN-filled tensors of the statistics' sizes take the
    freed memory, so a backward that read the forward's addresses would return NaN. Over
    five steps, replays included, every gradient equals the reference's, for the four
    norms."""
    from torch.utils.checkpoint import checkpoint

    from fromscratch import functional as FS
    torch.manual_seed(0)
    dev, m, n = "cuda", 256, 320
    w, b = torch.randn(n, device=dev), torch.randn(n, device=dev)
    fns = {"layer_norm": lambda x, w, b, backend: FS.layer_norm(x, n, w, b, backend=backend),
           "rms_norm": lambda x, w, b, backend: FS.rms_norm(x, n, w, backend=backend),
           "fused": lambda x, w, b, backend: sum(FS.fused_add_rms_norm(x, 2 * x, n, w,
                                                                       backend=backend)),
           "batch_norm": lambda x, w, b, backend: FS.batch_norm(x, None, None, w, b, True,
                                                                backend=backend)}
    for _ in range(5):
        x = torch.randn(m, n, device=dev, dtype=torch.bfloat16) * 2 + 1
        dy = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
        for name, fn in fns.items():
            results = []
            for backend in ("triton", "torch"):
                leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
                f = lambda *t: fn(*t, backend) * 1.0        # noqa: E731 - a node after ours
                if hook == "checkpoint":
                    y = checkpoint(f, *leaves, use_reentrant=False)
                else:
                    with torch.autograd.graph.save_on_cpu():
                        y = f(*leaves)
                junk = [torch.full((k,), float("nan"), device=dev)      # the freed blocks
                        for k in (m, n) for _ in range(4)]
                grads = torch.autograd.grad(y, leaves, dy, allow_unused=True)
                del junk
                results.append([y, *(g for g in grads if g is not None)])
            for mine, ref in zip(*results):
                atol = 4e-2 * max(1.0, float(ref.detach().abs().max()))
                torch.testing.assert_close(mine.float(), ref.float(), atol=atol, rtol=2e-2,
                                           msg=lambda msg: f"{name}, {hook}: {msg}")
