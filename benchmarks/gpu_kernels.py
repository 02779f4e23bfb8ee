#!/usr/bin/env python3
"""GPU benchmark of fromscratch's Triton kernels against the peers, in one process on one card.

    PYTHONPATH=src python3 benchmarks/gpu_kernels.py --out results/gpu_results.md
    PYTHONPATH=src python3 benchmarks/gpu_kernels.py --quick --out /tmp/gpu.md   # shorter
    PYTHONPATH=src python3 benchmarks/gpu_kernels.py --smoke                      # CPU, interpreter

1. Checks ours against the ``ops`` reference (float32, same GPU) at every benchmark shape,
   bf16, forward and backward, and once past 2**31 elements (int64 offsets).
2. Measures the copy bandwidth: ``y.copy_(x)`` on 2**27 bf16 elements, bytes = 2 * numel * 2.
3. Times, for LayerNorm, RMSNorm, Dropout (p=0.1), BatchNorm channels-last and the fused
   residual add + RMSNorm, forward and forward+backward of: ours (backend="triton"),
   torch eager, torch.compile (dynamic=False, one compiled function per op and shape;
   LayerNorm and RMSNorm only), Liger-Kernel when importable, and the seed
   notebook's formula. ``triton.testing.do_bench`` (CUDA events, L2 flushed before every
   call, median); each configuration is measured ``--runs`` times, interleaved, and the
   table shows the median run and the spread (min-max) across runs.
4. Byte model (docs/kernels.md, "Byte model and benchmark"): forward reads x and writes y, 2 M N elements; forward+backward
   adds reading x and dy and writing dx, 5 M N; dropout's backward reads dy and a 1-byte mask
   and writes dx, so its forward+backward is 4 M N elements + M N bytes; BatchNorm as the
   norms. The fused residual RMSNorm (ours, not a peer's op) reads x and residual and writes s and
   y (4 M N), and its backward reads s, dy, ds and writes d(sum) (4 M N): 8 M N in all.
   GB/s = bytes / median time; % = GB/s / copy bandwidth.

Writes a markdown report to ``--out`` and the raw numbers beside it (same name, .json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch  # triton and the kernels are imported in main(), after TRITON_INTERPRET is set

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _floor import grad_step  # noqa: E402

SHAPES = [(32768, 4096), (16384, 8192), (131072, 1024)]
SMOKE_SHAPES = [(64, 96), (24, 130)]
DROP_P = 0.1

# The targets (docs/kernels.md): % of copy bandwidth, bf16, at every shape.
TARGETS = {("layer_norm", "fwd+bwd"): 85, ("rms_norm", "fwd+bwd"): 85,
           ("dropout", "fwd+bwd"): 95, ("batch_norm", "fwd+bwd"): 55,
           ("layer_norm", "fwd"): 93, ("rms_norm", "fwd"): 93}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_results.md", help="markdown report (json beside it)")
    ap.add_argument("--runs", type=int, default=None, help="runs per configuration (default 5)")
    ap.add_argument("--quick", action="store_true", help="3 runs, 2 shapes, no torch.compile")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU under TRITON_INTERPRET=1, tiny shapes, one run: checks the script")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--no-int64", action="store_true", help="skip the >2**31-element check")
    ap.add_argument("--no-graph", action="store_true",
                    help="skip the forward+backward timed as a replayed CUDA graph")
    ap.add_argument("--ops", default="layer_norm,rms_norm,dropout,batch_norm,fused_add_rms_norm")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="after the first run, stop measuring once this many seconds passed "
                         "(and in the first run at 1.6 times that)")
    ap.add_argument("--no-tune", action="store_true",
                    help="FROMSCRATCH_TUNE=0: default launch configurations, no tuning")
    return ap.parse_args(argv)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------
# The seed notebook's formulas, as written except `//` -> `/` (floor division has no
# gradient) and dropout's uniforms created on x's device (as written they are on the CPU).
# ----------------------------------------------------------------------------------------

def seed_layer_norm(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    variance = x.var(dim=-1, keepdim=True, unbiased=False)
    return gamma * ((x - mean) / torch.sqrt(variance + eps)) + beta


def seed_rms_norm(x, gamma, eps=1e-6):
    rms = torch.sqrt(torch.mean(x.pow(2), dim=-1, keepdim=True) + eps)
    return gamma * (x / rms)


def seed_dropout(x, p=DROP_P):
    mask = (torch.randn(x.shape, device=x.device) > p).float()
    return mask * x / (1.0 - p)


def seed_batch_norm(x, gamma, beta, running_mean, running_var, eps=1e-5, momentum=0.1):
    batch_mean = x.mean(dim=0, keepdim=True)
    batch_var = x.var(dim=0, keepdim=True)
    running_mean = (1 - momentum) * running_mean + momentum * batch_mean  # noqa: F841
    running_var = (1 - momentum) * running_var + momentum * batch_var  # noqa: F841
    return gamma * ((x - batch_mean) / torch.sqrt(batch_var + eps)) + beta


# ----------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace):
        import torch
        import torch.nn.functional as TF

        from fromscratch import functional as FS
        self.torch, self.TF, self.FS = torch, TF, FS
        self.args = args
        self.device = torch.device("cpu" if args.smoke else "cuda")
        self.dtype = torch.bfloat16
        self.t0 = time.time()
        self.liger = self._import_liger()
        self.compiled: dict[tuple, Callable] = {}
        self.checks: list[dict[str, Any]] = []
        self.tag = ""                   # prefixed to each check's name (the checks after timing)

    # --- timing ---------------------------------------------------------------------------
    def time_ms(self, fn: Callable[[], Any]) -> float:
        if self.device.type == "cuda":
            from triton.testing import do_bench
            return float(do_bench(fn, warmup=10, rep=60, return_mode="median"))
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    def host_us(self, fn: Callable[[], Any], steps: int = 50) -> float:
        """Host wall time per call of ``fn``, ``steps`` calls issued back to back with no sync
        between (the GPU idle at the start): what it costs the host to issue one step."""
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        issued = time.perf_counter() - start
        self.sync()
        return issued / steps * 1e6

    def graph_ms(self, fn: Callable[[], Any]) -> float | None:
        """Median ms of replaying ``fn`` captured in a CUDA graph, timed as ``time_ms`` times
        (None off CUDA or when ``fn`` cannot be captured): the device time of ``fn`` with no
        host in the way."""
        torch = self.torch
        if self.device.type != "cuda":
            return None
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):                  # warm: tuner choices, allocator pools
                    fn()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            return self.time_ms(graph.replay)
        except Exception as e:                      # noqa: BLE001 - report, go on
            log(f"  CUDA graph capture failed: {type(e).__name__}: {str(e)[:200]}")
            return None

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def copy_bandwidth(self) -> dict[str, Any]:
        torch = self.torch
        n = 2**27 if self.device.type == "cuda" else 2**16
        x = torch.randn(n, device=self.device, dtype=self.dtype)
        y = torch.empty_like(x)
        runs = [2 * n * x.element_size() / (self.time_ms(lambda: y.copy_(x)) * 1e-3) / 1e9
                for _ in range(5)]
        return {"GBps": statistics.median(runs), "runs": runs, "numel": n}

    def _import_liger(self) -> dict[str, Any] | None:
        if self.args.smoke:                     # its kernels are not written for the interpreter
            return None
        try:
            from liger_kernel.ops.layer_norm import LigerLayerNormFunction
            from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        except Exception:                               # noqa: BLE001 - any import failure
            return None
        return {"layer_norm": LigerLayerNormFunction, "rms_norm": LigerRMSNormFunction}

    # --- problems -------------------------------------------------------------------------
    def inputs(self, op: str, m: int, n: int) -> dict[str, Any]:
        torch, dev, dt = self.torch, self.device, self.dtype
        g = torch.Generator(device=dev).manual_seed(0)

        def rnd(*shape, dtype=dt, scale=1.0, shift=0.0, grad=True):
            t = torch.randn(*shape, generator=g, device=dev, dtype=torch.float32) * scale + shift
            return t.to(dtype).requires_grad_(grad)

        d: dict[str, Any] = {"x": rnd(m, n, shift=0.5), "dy": rnd(m, n, grad=False)}
        if op in ("layer_norm", "rms_norm", "fused_add_rms_norm"):
            d["w"] = rnd(n, scale=0.1, shift=1.0)
        if op == "layer_norm":
            d["b"] = rnd(n, scale=0.1)
        if op == "fused_add_rms_norm":
            d["r"] = rnd(m, n)
            d["ds"] = rnd(m, n, grad=False)
        if op == "batch_norm":                           # parameters and buffers in float32
            d["w"] = rnd(n, dtype=torch.float32, scale=0.1, shift=1.0)
            d["b"] = rnd(n, dtype=torch.float32, scale=0.1)
            d["rm"] = torch.zeros(n, device=dev)
            d["rv"] = torch.ones(n, device=dev)
        return d

    def impls(self, op: str, m: int, n: int, d: dict[str, Any]
              ) -> dict[str, tuple[Callable[[], Any], list, list]]:
        """name -> (forward thunk, tensors to differentiate, grad_outputs)."""
        TF, FS = self.TF, self.FS
        x, dy = d["x"], d["dy"]
        out: dict[str, tuple[Callable[[], Any], list, list]] = {}
        if op == "layer_norm":
            w, b = d["w"], d["b"]
            params = [x, w, b]
            out["ours"] = (lambda: FS.layer_norm(x, (n,), w, b, 1e-5, backend="triton"),
                           params, [dy])
            out["torch"] = (lambda: TF.layer_norm(x, (n,), w, b, 1e-5), params, [dy])
            cf = self._compiled(op, m, n, lambda x, w, b: TF.layer_norm(x, (n,), w, b, 1e-5))
            if cf is not None:
                out["torch.compile"] = (lambda: cf(x, w, b), params, [dy])
            if self.liger:
                L = self.liger["layer_norm"]
                out["liger"] = (lambda: L.apply(x, w, b, 1e-5), params, [dy])
            out["seed"] = (lambda: seed_layer_norm(x, w, b), params, [dy])
        elif op == "rms_norm":
            w = d["w"]
            params = [x, w]
            out["ours"] = (lambda: FS.rms_norm(x, (n,), w, 1e-6, backend="triton"), params, [dy])
            out["torch"] = (lambda: TF.rms_norm(x, (n,), w, 1e-6), params, [dy])
            cf = self._compiled(op, m, n, lambda x, w: TF.rms_norm(x, (n,), w, 1e-6))
            if cf is not None:
                out["torch.compile"] = (lambda: cf(x, w), params, [dy])
            if self.liger:
                L = self.liger["rms_norm"]
                # in_place=False: Liger's default writes dx into dy, the gradient that every
                # contender and the checks share (its memory saving, the same bytes moved)
                out["liger"] = (lambda: L.apply(x, w, 1e-6, 0.0, "llama", False), params, [dy])
            out["seed"] = (lambda: seed_rms_norm(x, w), params, [dy])
        elif op == "dropout":
            out["ours"] = (lambda: FS.dropout(x, DROP_P, backend="triton"), [x], [dy])
            out["torch"] = (lambda: TF.dropout(x, DROP_P, training=True), [x], [dy])
            out["seed"] = (lambda: seed_dropout(x), [x], [dy])
        elif op == "batch_norm":
            w, b, rm, rv = d["w"], d["b"], d["rm"], d["rv"]
            params = [x, w, b]
            out["ours"] = (lambda: FS.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5,
                                                 backend="triton"), params, [dy])
            out["torch"] = (lambda: TF.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5),
                            params, [dy])
            wb, bb = w.detach().to(self.dtype).requires_grad_(), b.detach().to(self.dtype)
            bb.requires_grad_()
            out["seed"] = (lambda: seed_batch_norm(x, wb, bb, rm, rv), [x, wb, bb], [dy])
        elif op == "fused_add_rms_norm":
            w, r, ds = d["w"], d["r"], d["ds"]
            params = [x, r, w]
            out["ours"] = (lambda: FS.fused_add_rms_norm(x, r, n, w, 1e-6, backend="triton"),
                           params, [ds, dy])

            def two_steps():
                s = x + r
                return s, TF.rms_norm(s, (n,), w, 1e-6)
            out["torch"] = (two_steps, params, [ds, dy])
        return out

    def _compiled(self, op: str, m: int, n: int, fn: Callable) -> Callable | None:
        if self.args.no_compile or self.args.quick or self.args.smoke:
            return None
        key = (op, m, n)
        if key not in self.compiled:                     # a fresh function per shape
            self.compiled[key] = self.torch.compile(fn, dynamic=False)
        return self.compiled[key]

    @staticmethod
    def bytes_moved(op: str, mode: str, m: int, n: int, es: int) -> float:
        mn = m * n
        if op == "dropout":
            return 2 * mn * es if mode == "fwd" else 4 * mn * es + mn
        if op == "fused_add_rms_norm":
            return 4 * mn * es if mode == "fwd" else 8 * mn * es
        return 2 * mn * es if mode == "fwd" else 5 * mn * es

    # --- correctness ----------------------------------------------------------------------
    def fingerprint(self, d: dict[str, Any]) -> dict[str, tuple[float, float]]:
        """name -> (sum, sum of squares) in float64 of each input a step only reads (the
        running statistics, which BatchNorm updates by design, left out): a contender that
        writes into a shared input would corrupt every later step and check."""
        out = {}
        for name, t in d.items():
            if name not in ("rm", "rv"):
                v = t.detach().double()
                out[name] = (float(v.sum()), float((v * v).sum()))
        return out

    def check_untouched(self, op: str, shape: tuple[int, int], impl: str, d: dict[str, Any],
                        before: dict[str, tuple[float, float]]) -> None:
        """A failed check, naming ``impl``, for each input of ``d`` it changed."""
        for name, fp in self.fingerprint(d).items():
            if not all(a == b or a != a and b != b for a, b in zip(fp, before[name])):
                self.checks.append({"op": op, "shape": list(shape), "ok": False,
                                    "max_err": 0.0, "kind": "exact",
                                    "what": f"{impl} wrote into the shared input {name}"})
                log(f"  CHECK FAILED {op} {shape}: {impl} wrote into the shared input {name}")
                before[name] = fp                      # report each change once (NaN too)

    def _record(self, op: str, shape: tuple[int, int], what: str, mine, ref,
                reduced: bool = False, tol: float = 2e-2) -> None:
        """|mine - ref| <= tol (1 + |ref|) elementwise; for sums over rows (``reduced``)
        max|mine - ref| <= tol / 2 max|ref|. tol: 2e-2 bf16, 4e-3 fp16, 1e-4 fp32."""
        torch = self.torch
        a, r = mine.detach().float(), ref.detach().float()
        diff = (a - r).abs()
        if reduced:                                      # sums over rows: relative to the max
            err = float(diff.max() / r.abs().max().clamp_min(1e-30))
            ok = err <= tol / 2
        else:
            err = float(diff.max())
            ok = bool(torch.all(diff <= tol + tol * r.abs()))
        what = self.tag + what
        self.checks.append({"op": op, "shape": list(shape), "what": what, "ok": ok,
                            "max_err": err, "kind": "rel-to-max" if reduced else "abs"})
        if not ok:
            log(f"  CHECK FAILED {op} {shape} {what}: err {err:.3g}")

    def check(self, op: str, m: int, n: int, d: dict[str, Any]) -> None:
        """Ours (bf16) against the ops reference run in float32 on the same device."""
        torch, FS = self.torch, self.FS
        shape = (m, n)

        def f32(t):
            return t.detach().float().requires_grad_(t.requires_grad)

        x, dy = d["x"], d["dy"]
        if op == "layer_norm":
            args = [x, d["w"], d["b"]]
            ours = FS.layer_norm(x, n, d["w"], d["b"], backend="triton")
            ref_args = [f32(t) for t in args]
            ref = FS.layer_norm(ref_args[0], n, ref_args[1], ref_args[2], backend="torch")
            self._compare_grads(op, shape, ours, ref, args, ref_args, [dy], ("x", "w", "b"))
        elif op == "rms_norm":
            args = [x, d["w"]]
            ours = FS.rms_norm(x, n, d["w"], 1e-6, backend="triton")
            ref_args = [f32(t) for t in args]
            ref = FS.rms_norm(ref_args[0], n, ref_args[1], 1e-6, backend="torch")
            self._compare_grads(op, shape, ours, ref, args, ref_args, [dy], ("x", "w"))
        elif op == "fused_add_rms_norm":
            args = [x, d["r"], d["w"]]
            ours = FS.fused_add_rms_norm(x, d["r"], n, d["w"], 1e-6, backend="triton")
            ref_args = [f32(t) for t in args]
            s_ref = (ref_args[0] + ref_args[1]).to(self.dtype).float()   # the rounded stream
            ref = (s_ref, FS.rms_norm(s_ref, n, ref_args[2], 1e-6, backend="torch"))
            self._record(op, shape, "s", ours[0], ref[0])
            self._record(op, shape, "y", ours[1], ref[1])
            g_ours = torch.autograd.grad(ours, args, [d["ds"], dy])
            s_leaf = s_ref.detach().requires_grad_()
            y_ref = FS.rms_norm(s_leaf, n, ref_args[2], 1e-6, backend="torch")
            ds_ref, dw_ref = torch.autograd.grad(y_ref, [s_leaf, ref_args[2]], [dy.float()])
            self._record(op, shape, "d(sum)", g_ours[0], ds_ref + d["ds"].float())
            self._record(op, shape, "dresidual", g_ours[1], ds_ref + d["ds"].float())
            self._record(op, shape, "dweight", g_ours[2], dw_ref, reduced=True)
        elif op == "dropout":
            from fromscratch.kernels import dropout as KD
            seed = 1234
            y = KD.apply(x.detach(), DROP_P, seed)
            keep = y != 0
            u = KD.uniforms(x.numel(), seed, device=x.device).view(x.shape)
            nonzero = x.detach() != 0
            ok_mask = bool(torch.all((keep == (u >= DROP_P)) | ~nonzero))
            rate = float(keep.float().mean())
            sd = math.sqrt(DROP_P * (1 - DROP_P) / x.numel())
            self.checks.append({"op": op, "shape": list(shape), "what": "mask == (u >= p)",
                                "ok": ok_mask, "max_err": 0.0, "kind": "exact"})
            self.checks.append({"op": op, "shape": list(shape), "what": "keep rate",
                                "ok": abs(rate - (1 - DROP_P)) < 6 * sd + 1e-3,
                                "max_err": abs(rate - (1 - DROP_P)), "kind": "abs"})
            self._record(op, shape, "y", y, x.detach().float() * keep / (1 - DROP_P))
            del u
            # The backward through autograd must regenerate the forward's mask. The reference
            # mask is u >= p from the uniforms themselves, never y != 0: x has exact zeros
            # (kept zeros give y == 0; the input below plants some, as a ReLU output would).
            from fromscratch.kernels.autograd import DropoutFn as KDropoutFn
            seed2, offset2 = 4321, 2**32 - 2**12           # counters run across 2**32
            xz = x.detach().clone()
            xz.view(-1)[::997] = 0
            xz.requires_grad_(True)
            y = KDropoutFn.apply(xz, DROP_P, seed2, offset2)
            (dx,) = torch.autograd.grad(y, [xz], [dy])
            keep = KD.uniforms(x.numel(), seed2, offset2, device=x.device).view(x.shape) >= DROP_P
            self._record(op, shape, "dx (regenerated mask)", dx,
                         dy.float() * keep / (1 - DROP_P))
            self._record(op, shape, "y (offset past 2**32 counters)", y,
                         xz.detach().float() * keep / (1 - DROP_P))
            del keep, xz
        elif op == "batch_norm":
            args = [x, d["w"], d["b"]]
            rm, rv = d["rm"].clone(), d["rv"].clone()
            ours = FS.batch_norm(x, rm, rv, d["w"], d["b"], True, 0.1, 1e-5, backend="triton")
            ref_args = [f32(t) for t in args]
            rm2, rv2 = d["rm"].clone(), d["rv"].clone()
            ref = FS.batch_norm(ref_args[0], rm2, rv2, ref_args[1], ref_args[2], True, 0.1, 1e-5,
                                backend="torch")
            self._compare_grads(op, shape, ours, ref, args, ref_args, [dy], ("x", "w", "b"))
            self._record(op, shape, "running_mean", rm, rm2)
            self._record(op, shape, "running_var", rv, rv2)

    def _compare_grads(self, op, shape, ours, ref, args, ref_args, grads, names) -> None:
        torch = self.torch
        self._record(op, shape, "y", ours, ref)
        g_ours = torch.autograd.grad(ours, args, grads)
        g_ref = torch.autograd.grad(ref, ref_args, [g.float() for g in grads])
        for name, a, b in zip(names, g_ours, g_ref):
            self._record(op, shape, f"d{name}", a, b, reduced=(name != "x"))

    def check_small(self) -> None:
        """The masked and looped code paths the benchmark shapes (powers of two) never take:
        hidden sizes 130, 1537 and 20000 (rows wider than the register kernels), float32 /
        float16 / bfloat16 inputs with float32 weights, a column slice of a wider tensor."""
        from fromscratch.kernels import _tune
        enabled, _tune.ENABLED = _tune.ENABLED, False      # default configs: fewer compiles
        try:
            self._check_small()
        finally:
            _tune.ENABLED = enabled

    def _check_small(self) -> None:
        torch, FS = self.torch, self.FS
        from fromscratch.kernels import dropout as KD
        dev = self.device
        tols = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}
        g = torch.Generator(device=dev).manual_seed(1)

        def rnd(*shape, dtype=torch.float32, shift=0.0):
            return (torch.randn(*shape, generator=g, device=dev) + shift).to(dtype)

        def grads(fn, args, ref_args, outs_grad):
            a = [t.detach().clone().requires_grad_() for t in args]
            r = [t.detach().float().requires_grad_() for t in ref_args]
            ya, yr = fn(a, "triton"), fn(r, "torch")
            ya, yr = (ya if isinstance(ya, tuple) else (ya,)), (yr if isinstance(yr, tuple)
                                                                  else (yr,))
            ga = torch.autograd.grad(ya, a, outs_grad)
            gr = torch.autograd.grad(yr, r, [o.float() for o in outs_grad])
            return ya, yr, ga, gr

        big = 1000 if dev.type == "cuda" else 9                # the interpreter is slow
        cases = [(37, 130, torch.float32), (big, 1537, torch.bfloat16),
                 (6, 20000, torch.float16)]
        for m, n, dt in cases:
            tol = tols[dt]
            x = rnd(m, n, dtype=dt, shift=3.0)
            w, b = rnd(n) * 0.1 + 1, rnd(n) * 0.1
            dy = rnd(m, n, dtype=dt)
            ya, yr, ga, gr = grads(lambda t, be: FS.layer_norm(t[0], n, t[1], t[2], backend=be),
                                   [x, w, b], [x, w, b], [dy])
            self._record("layer_norm", (m, n), f"small {dt} y", ya[0], yr[0], tol=tol)
            for name, a_, r_ in zip(("dx", "dw", "db"), ga, gr):
                self._record("layer_norm", (m, n), f"small {dt} {name}", a_, r_,
                             reduced=name != "dx", tol=tol)
            ya, yr, ga, gr = grads(lambda t, be: FS.rms_norm(t[0], n, t[1], 1e-6, backend=be),
                                   [x, w], [x, w], [dy])
            self._record("rms_norm", (m, n), f"small {dt} y", ya[0], yr[0], tol=tol)
            self._record("rms_norm", (m, n), f"small {dt} dx", ga[0], gr[0], tol=tol)
            self._record("rms_norm", (m, n), f"small {dt} dw", ga[1], gr[1], reduced=True,
                         tol=tol)
            r = rnd(m, n, dtype=dt)
            s_ours, y_ours = FS.fused_add_rms_norm(x, r, n, w, 1e-6, backend="triton")
            s_ref = (x.float() + r.float()).to(dt)
            self._record("fused_add_rms_norm", (m, n), f"small {dt} s", s_ours, s_ref, tol=tol)
            self._record("fused_add_rms_norm", (m, n), f"small {dt} y", y_ours,
                         FS.rms_norm(s_ref.float(), n, w, 1e-6, backend="torch"), tol=tol)
            if n <= 2048:
                xb = rnd(m, n, dtype=dt, shift=50.0)
                ya, yr, ga, gr = grads(
                    lambda t, be: FS.batch_norm(t[0], None, None, t[1], t[2], True,
                                                backend=be), [xb, w, b], [xb, w, b], [dy])
                self._record("batch_norm", (m, n), f"small {dt} y", ya[0], yr[0], tol=tol)
                for name, a_, r_ in zip(("dx", "dw", "db"), ga, gr):
                    self._record("batch_norm", (m, n), f"small {dt} {name}", a_, r_,
                                 reduced=name != "dx", tol=tol)
            yd = KD.apply(x, DROP_P, 99)
            u = KD.uniforms(x.numel(), 99, device=dev).view(x.shape)
            ok = bool(torch.all(((yd != 0) == (u >= DROP_P)) | (x == 0)))
            self.checks.append({"op": "dropout", "shape": [m, n], "what": f"small {dt} mask",
                                "ok": ok, "max_err": 0.0, "kind": "exact"})
        wide = rnd(big, 2000, dtype=torch.bfloat16)
        xs, n = wide[:, 100:1637], 1537                     # row stride 2000, read in place
        w = rnd(n) * 0.1 + 1
        dy = rnd(big, n, dtype=torch.bfloat16)
        ya, yr, ga, gr = grads(lambda t, be: FS.layer_norm(t[0], n, t[1], backend=be),
                               [xs, w], [xs, w], [dy])
        self._record("layer_norm", (big, n), "column slice y", ya[0], yr[0])
        self._record("layer_norm", (big, n), "column slice dx", ga[0], gr[0])

    def check_int64(self, m: int = 2**31 // 1024 + 64, n: int = 1024,
                    chunk: int = 2**17) -> None:
        """LayerNorm, Dropout and BatchNorm on a tensor of more than 2**31 elements (by
        default; --smoke runs the same code on a small one).

        References are computed in chunks of rows, so the check needs ~6 such tensors."""
        torch, FS = self.torch, self.FS
        from fromscratch.kernels import dropout as KD
        shape = (m, n)
        log(f"int64 check on {m}x{n} = {m * n} elements ({m * n / 2**31:.3f} x 2**31)")
        x = torch.randn(m, n, device=self.device, dtype=self.dtype)
        x.requires_grad_(True)
        w = torch.ones(n, device=self.device, dtype=self.dtype, requires_grad=True)
        y = FS.layer_norm(x, n, w, None, backend="triton")
        dy = torch.randn_like(y)
        dx, dw = torch.autograd.grad(y, [x, w], [dy])
        for rows in (slice(0, 64), slice(m - 64, m)):
            xs = x.detach()[rows].float().requires_grad_()
            ws = w.detach().float().requires_grad_()
            yr = FS.layer_norm(xs, n, ws, None, backend="torch")
            (dxr,) = torch.autograd.grad(yr, [xs], [dy[rows].float()])
            self._record("layer_norm", shape, f"int64 y rows {rows.start}:", y[rows], yr)
            self._record("layer_norm", shape, f"int64 dx rows {rows.start}:", dx[rows], dxr)
        dw_t = torch.zeros(n, device=self.device, dtype=torch.float64)
        for r0 in range(0, m, chunk):
            xh = torch.nn.functional.layer_norm(x.detach()[r0:r0 + chunk].float(), (n,))
            dw_t += (dy[r0:r0 + chunk].float() * xh).sum(0).double()
        self._record("layer_norm", shape, "int64 dweight", dw, dw_t, reduced=True)
        del y, dy, dx, dw, dw_t
        xf = x.detach()
        seed, tail = 77, 4096
        yd = KD.apply(xf, DROP_P, seed)
        start = (xf.numel() - tail) // 8 * 8              # element e uses counter e // 8
        tail = xf.numel() - start
        u = KD.uniforms(tail, seed, offset=start // 8, device=self.device)
        ok = bool(torch.all(((yd.view(-1)[start:] != 0) == (u >= DROP_P))
                            | (xf.view(-1)[start:] == 0)))
        self.checks.append({"op": "dropout", "shape": list(shape), "what": "int64 tail mask",
                            "ok": ok, "max_err": 0.0, "kind": "exact"})
        del yd
        rm, rv = torch.zeros(n, device=self.device), torch.ones(n, device=self.device)
        yb = FS.batch_norm(xf, rm, rv, None, None, True, 1.0, 1e-5, backend="triton")
        s1 = torch.zeros(n, device=self.device, dtype=torch.float64)
        s2 = torch.zeros_like(s1)
        for r0 in range(0, m, chunk):
            xc = xf[r0:r0 + chunk].double()
            s1 += xc.sum(0)
            s2 += (xc * xc).sum(0)
        mean = s1 / m
        var = (s2 - m * mean * mean) / (m - 1)               # x ~ N(0, 1): no cancellation
        self._record("batch_norm", shape, "int64 running_mean (batch mean)", rm, mean)
        self._record("batch_norm", shape, "int64 running_var (unbiased)", rv, var)
        ref_tail = (xf[-64:].double() - mean) / torch.sqrt(var * (m - 1) / m + 1e-5)
        self._record("batch_norm", shape, "int64 y last rows", yb[-64:], ref_tail)
        del x, xf, yb, w


def fmt_cell(res: dict[str, Any] | None) -> str:
    if res is None:
        return "-"
    if "error" in res:
        return "error"
    pcts = res["pct_runs"]
    med = statistics.median(pcts)
    spread = f" ({min(pcts):.0f}-{max(pcts):.0f})" if len(pcts) > 1 else ""
    return f"{res['GBps']:.0f} GB/s, **{med:.0f}%**{spread}"


def report(meta: dict[str, Any], results: dict[str, Any], checks: list[dict[str, Any]],
           shapes: list[tuple[int, int]], ops: list[str], chosen: dict) -> str:
    lines = ["# GPU kernels: fromscratch vs peers", "",
             f"- card: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}, "
             f"CUDA {meta['cuda']}, Python {meta['python']}",
             f"- date: {meta['date']}; wall time {meta['wall_s']:.0f} s; runs per configuration: "
             f"{meta['runs']} (median run; spread min-max across runs)",
             f"- copy bandwidth (y.copy_(x), {meta['copy_numel']} bf16 elements): "
             f"**{meta['copy_GBps']:.0f} GB/s** "
             f"(runs: {', '.join(f'{v:.0f}' for v in meta['copy_runs'])})",
             "- bf16 activations; byte model of docs/kernels.md (see benchmarks/gpu_kernels.py); "
             f"timing: {meta['timer']}",
             f"- steps that replayed their launches (fromscratch.kernels._fast_path), per op: "
             f"{meta['replays'] or 'none'}",
             f"- Liger-Kernel: {'installed' if meta['liger'] else 'not installed'}; "
             f"torch.compile: {meta['compile']}", ""]
    bad = [c for c in checks if not c["ok"]]
    lines.append(f"Correctness against the ops reference: {len(checks) - len(bad)} of "
                 f"{len(checks)} checks pass" + ("" if not bad else ", FAILED: " + "; ".join(
                     f"{c['op']} {tuple(c['shape'])} {c['what']} (err {c['max_err']:.3g})"
                     for c in bad)))
    lines.append("")
    head = "| op | impl | " + " | ".join(f"{m}x{n}" for m, n in shapes) + " |"
    sep = "|---|---|" + "---|" * len(shapes)
    for mode in ("fwd+bwd", "fwd", GRAPH):
        if not any(k[2] == mode for k in results):
            continue
        title = (f"## {mode}: GB/s and % of copy bandwidth (median run, spread)" if mode != GRAPH
                 else f"## {mode}: the step captured once and replayed (device time, no host "
                 "in the way; one run)")
        lines += [title, "", head, sep]
        for op in ops:
            impls = sorted({k[1] for k in results if k[0] == op and k[2] == mode},
                           key=lambda s: ["ours", "torch", "torch.compile", "liger",
                                          "seed"].index(s))
            for impl in impls:
                cells = [fmt_cell(results.get((op, impl, mode, m, n))) for m, n in shapes]
                name = f"**{impl}**" if impl == "ours" else impl
                lines.append(f"| {op} | {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += host_table(results, shapes, ops)
    lines += ["## Targets (ours, % of copy bandwidth, median run)", "",
              "| op | mode | target | " + " | ".join(f"{m}x{n}" for m, n in shapes) + " | met |",
              "|---|---|---|" + "---|" * len(shapes) + "---|"]
    for (op, mode), target in TARGETS.items():
        if op not in ops:
            continue
        vals = []
        for m, n in shapes:
            r = results.get((op, "ours", mode, m, n))
            vals.append(None if r is None or "error" in r else statistics.median(r["pct_runs"]))
        met = all(v is not None and v >= target for v in vals)
        lines.append(f"| {op} | {mode} | >= {target} | " + " | ".join(
            "-" if v is None else f"{v:.0f}" for v in vals) + f" | {'yes' if met else 'NO'} |")
    lines += ["", "Launch configurations chosen by the tuner (first call per size):", ""]
    for key, cfg in chosen.items():
        lines.append(f"- {key}: {cfg}")
    return "\n".join(lines) + "\n"


GRAPH = "fwd+bwd, CUDA graph"


def host_table(results: dict[tuple, dict[str, Any]], shapes: list[tuple[int, int]],
               ops: list[str]) -> list[str]:
    """Ours' forward+backward run by run: % of copy bandwidth, and the host's us to issue one
    step measured right after (20 steps back to back). A step whose host time is above the
    GPU's (the graph's time plus the L2 flush) is timed with the GPU's wait for the host in
    it (docs/kernels.md, "When does the GPU wait?")."""
    rows = []
    for op in ops:
        for m, n in shapes:
            r = results.get((op, "ours", "fwd+bwd", m, n))
            if r is None or "host_us_runs" not in r:
                continue
            g = results.get((op, "ours", GRAPH, m, n))
            graph = "-" if g is None or "ms" not in g else f"{g['ms'] * 1e3:.0f}"
            runs = ", ".join(f"{p:.0f}% / {h:.0f}" for p, h in zip(r["pct_runs"],
                                                                   r["host_us_runs"]))
            rows.append(f"| {op} | {m}x{n} | {graph} | {runs} |")
    if not rows:
        return []
    return ["## fwd+bwd, ours, run by run: % of copy bandwidth / host us per step", "",
            "| op | shape | graph us (device) | runs |", "|---|---|---:|---|", *rows, ""]


def graph_step(bench: Bench, problems: dict, results: dict, shapes: list[tuple[int, int]],
               ops: list[str], copy_gbps: float) -> None:
    """Each implementation's forward+backward captured once in a CUDA graph and replayed
    (mode ``GRAPH``): what the GPU itself takes, with the host's launch and autograd costs out
    of the way. One measurement per configuration; an implementation that cannot be
    captured (our Triton dropout refuses: its seed is drawn on the host) gets no cell."""
    for m, n in shapes:
        for op in ops:
            for impl, (fwd, params, grads) in bench.impls(op, m, n, problems[(op, m, n)]).items():
                if impl == "seed":
                    continue
                ms = bench.graph_ms(grad_step(fwd, params, grads))
                if ms is not None:
                    gbps = bench.bytes_moved(op, "fwd+bwd", m, n, 2) / (ms * 1e-3) / 1e9
                    results[(op, impl, GRAPH, m, n)] = {"ms_runs": [ms],
                                                        "pct_runs": [100 * gbps / copy_gbps]}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.no_tune:
        os.environ["FROMSCRATCH_TUNE"] = "0"
    import triton
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke for the CPU interpreter check", file=sys.stderr)
        return 2
    bench = Bench(args)
    shapes = SMOKE_SHAPES if args.smoke else (SHAPES[::2] if args.quick else SHAPES)
    runs = args.runs or (1 if args.smoke else 3 if args.quick else 5)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    dev_name = "CPU (Triton interpreter)" if args.smoke else torch.cuda.get_device_name()
    log(f"{dev_name}; torch {torch.__version__}, triton {triton.__version__}; "
        f"shapes {shapes}; runs {runs}; ops {ops}")
    log(f"Liger-Kernel: {'installed' if bench.liger else 'not installed'}")

    copy = bench.copy_bandwidth()
    log(f"copy bandwidth {copy['GBps']:.0f} GB/s")

    # inputs per (op, shape) stay allocated for the whole run
    problems: dict[tuple[str, int, int], dict[str, Any]] = {}
    for m, n in shapes:
        for op in ops:
            d = bench.inputs(op, m, n)
            problems[(op, m, n)] = d
            log(f"check {op} {m}x{n}")
            try:
                bench.check(op, m, n, d)
            except Exception as e:                      # noqa: BLE001 - report, go on
                bench.checks.append({"op": op, "shape": [m, n], "ok": False, "max_err": 0.0,
                                     "what": f"{type(e).__name__}: {str(e)[:300]}",
                                     "kind": "error"})
                log(f"  check {op} {m}x{n} raised {type(e).__name__}: {str(e)[:300]}")
    log("check small, masked and looped shapes")
    try:
        bench.check_small()
    except Exception as e:                              # noqa: BLE001 - report, go on
        bench.checks.append({"op": "small", "shape": [], "ok": False, "max_err": 0.0,
                             "what": f"{type(e).__name__}: {str(e)[:300]}", "kind": "error"})
        log(f"  small checks raised {type(e).__name__}: {str(e)[:300]}")
    n_bad = sum(not c["ok"] for c in bench.checks)
    log(f"correctness: {len(bench.checks) - n_bad}/{len(bench.checks)} checks pass")

    results: dict[tuple, dict[str, Any]] = {}
    warm: set[tuple] = set()
    deadline = bench.t0 + args.budget_s
    done_runs = 0
    stop = False
    hard_deadline = bench.t0 + 1.6 * args.budget_s
    for run in range(runs):
        for m, n in shapes:
            if (run > 0 and time.time() > deadline) or time.time() > hard_deadline:
                log(f"time budget (--budget-s {args.budget_s:.0f}) reached in run {run + 1}; "
                    "reporting what was measured")
                stop = True
                break
            for op in ops:
                d = problems[(op, m, n)]
                before = bench.fingerprint(d) if run == 0 else None
                for impl, (fwd, params, grads) in bench.impls(op, m, n, d).items():
                    for mode in ("fwd", "fwd+bwd"):
                        key = (op, impl, mode, m, n)
                        if key in results and "error" in results[key]:
                            continue
                        fn = fwd if mode == "fwd" else grad_step(fwd, params, grads)
                        try:
                            if key not in warm:              # compile, tune, warm
                                t = time.time()
                                fn()
                                bench.sync()
                                warm.add(key)
                                if time.time() - t > 2:
                                    log(f"  warm-up {op} {impl} {mode} {m}x{n}: "
                                        f"{time.time() - t:.1f} s")
                            ms = bench.time_ms(fn)
                        except Exception as e:              # noqa: BLE001 - report, go on
                            results[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
                            log(f"  {op} {impl} {mode} {m}x{n}: {results[key]['error']}")
                            continue
                        gbps = bench.bytes_moved(op, mode, m, n, 2) / (ms * 1e-3) / 1e9
                        r = results.setdefault(key, {"ms_runs": [], "pct_runs": []})
                        r["ms_runs"].append(ms)
                        r["pct_runs"].append(100 * gbps / copy["GBps"])
                        if impl == "ours" and mode == "fwd+bwd":    # the host, this run
                            r.setdefault("host_us_runs", []).append(
                                bench.host_us(fn, 3 if args.smoke else 20))
                    if before is not None:                  # first run: inputs unchanged?
                        bench.check_untouched(op, (m, n), impl, d, before)
        if stop:
            break
        done_runs = run + 1
        log(f"run {run + 1}/{runs} done ({time.time() - bench.t0:.0f} s)")
    # The checks above ran each op's first steps; every later step replayed its launches
    # (fromscratch.kernels._fast_path). Check those again, on the same tensors, now.
    log("check again after timing (the steps now replay their launches)")
    bench.tag = "after timing: "
    for m, n in shapes:
        for op in [o for o in ops if o != "dropout"]:       # dropout does not replay
            try:
                bench.check(op, m, n, problems[(op, m, n)])
            except Exception as e:                      # noqa: BLE001 - report, go on
                bench.checks.append({"op": op, "shape": [m, n], "ok": False, "max_err": 0.0,
                                     "what": f"after timing: {type(e).__name__}: "
                                             f"{str(e)[:300]}", "kind": "error"})
    bench.tag = ""
    if not args.no_graph and time.time() < hard_deadline:
        log("fwd+bwd in a CUDA graph (device time, no host in the way)")
        graph_step(bench, problems, results, shapes, ops, copy["GBps"])
    for key, r in results.items():
        if "ms_runs" in r:
            r["ms"] = statistics.median(r["ms_runs"])
            r["GBps"] = bench.bytes_moved(key[0], key[2], key[3], key[4], 2) / r["ms"] * 1e-6

    problems.clear()
    if not (args.quick or args.no_int64):
        if bench.device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            bench.check_int64(**({"m": 70, "n": 64, "chunk": 16} if args.smoke else {}))
        except Exception as e:                          # noqa: BLE001 - report, keep results
            bench.checks.append({"op": "int64", "shape": [], "what": f"{type(e).__name__}: "
                                 f"{str(e)[:200]}", "ok": isinstance(
                                     e, torch.cuda.OutOfMemoryError), "max_err": 0.0,
                                 "kind": "skipped (out of memory)" if isinstance(
                                     e, torch.cuda.OutOfMemoryError) else "error"})
            log(f"int64 check: {type(e).__name__}: {str(e)[:200]}")
    n_bad = sum(not c["ok"] for c in bench.checks)

    from fromscratch.kernels import _common, _fast_path, _tune
    meta = {"device": dev_name, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "wall_s": time.time() - bench.t0,
            "runs": max([len(r.get("ms_runs", [])) for r in results.values()], default=0),
            "complete_runs": done_runs,
            "copy_GBps": copy["GBps"], "copy_runs": copy["runs"], "copy_numel": copy["numel"],
            "liger": bench.liger is not None,
            "timer": "perf_counter on CPU (smoke: the numbers mean nothing)" if args.smoke
            else "triton.testing.do_bench, CUDA events, median, L2 flushed before each call",
            "replays": dict(_fast_path.replays),
            "compile": "off" if (args.no_compile or args.quick or args.smoke)
            else "dynamic=False, per shape, LayerNorm and RMSNorm"}
    chosen = {str(k): v for k, v in _tune.chosen().items()}
    chosen.update({f"programs per SM {k}": v for k, v in _common._resident.items()})
    chosen.update({f"tuner median ms per candidate {k}": [round(v, 4) for v in ms]
                   for k, ms in _tune.timings().items()})
    text = report(meta, results, bench.checks, shapes, ops, chosen)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    raw = {"meta": meta, "checks": bench.checks, "tuned": chosen,
           "results": [{"op": k[0], "impl": k[1], "mode": k[2], "M": k[3], "N": k[4], **v}
                       for k, v in results.items()]}
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    print(text.split("\nLaunch configurations")[0], flush=True)   # those are in the file
    log(f"wrote {out} and {out.with_suffix('.json')}")
    return 0 if n_bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
