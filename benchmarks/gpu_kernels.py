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
from typing import Any, Callable, NamedTuple

import torch  # triton and the kernels are imported by main(), after TRITON_INTERPRET is set

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _floor import grad_step  # noqa: E402

SHAPES = [(32768, 4096), (16384, 8192), (131072, 1024)]
SMOKE_SHAPES = [(64, 96), (24, 130)]
DROP_P = 0.1
GRAPH = "fwd+bwd, CUDA graph"            # the mode of the forward+backward replayed in a graph
IMPL_ORDER = ["ours", "torch", "torch.compile", "liger", "seed"]     # the tables' rows, per op

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


# name -> (forward thunk, tensors to differentiate, grad_outputs)
Impls = dict[str, tuple[Callable[[], Any], list, list]]


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

    def impls(self, op: str, m: int, n: int, d: dict[str, Any]) -> Impls:
        """name -> (forward thunk, tensors to differentiate, grad_outputs): the contenders of
        ``op`` on its inputs ``d`` at (m, n), ours first; none for an op not listed."""
        contenders = {"layer_norm": self._layer_norm_impls, "rms_norm": self._rms_norm_impls,
                      "dropout": self._dropout_impls, "batch_norm": self._batch_norm_impls,
                      "fused_add_rms_norm": self._fused_add_rms_norm_impls}.get(op)
        return {} if contenders is None else contenders(m, n, d)

    def _layer_norm_impls(self, m: int, n: int, d: dict[str, Any]) -> Impls:
        """Ours, torch, torch.compile, Liger (when importable), the seed notebook's."""
        TF, FS = self.TF, self.FS
        x, dy, w, b = d["x"], d["dy"], d["w"], d["b"]
        params = [x, w, b]
        out: Impls = {}
        out["ours"] = (lambda: FS.layer_norm(x, (n,), w, b, 1e-5, backend="triton"),
                       params, [dy])
        out["torch"] = (lambda: TF.layer_norm(x, (n,), w, b, 1e-5), params, [dy])
        cf = self._compiled("layer_norm", m, n,
                            lambda x, w, b: TF.layer_norm(x, (n,), w, b, 1e-5))
        if cf is not None:
            out["torch.compile"] = (lambda: cf(x, w, b), params, [dy])
        if self.liger:
            L = self.liger["layer_norm"]
            out["liger"] = (lambda: L.apply(x, w, b, 1e-5), params, [dy])
        out["seed"] = (lambda: seed_layer_norm(x, w, b), params, [dy])
        return out

    def _rms_norm_impls(self, m: int, n: int, d: dict[str, Any]) -> Impls:
        """Ours, torch, torch.compile, Liger (when importable), the seed notebook's."""
        TF, FS = self.TF, self.FS
        x, dy, w = d["x"], d["dy"], d["w"]
        params = [x, w]
        out: Impls = {}
        out["ours"] = (lambda: FS.rms_norm(x, (n,), w, 1e-6, backend="triton"), params, [dy])
        out["torch"] = (lambda: TF.rms_norm(x, (n,), w, 1e-6), params, [dy])
        cf = self._compiled("rms_norm", m, n, lambda x, w: TF.rms_norm(x, (n,), w, 1e-6))
        if cf is not None:
            out["torch.compile"] = (lambda: cf(x, w), params, [dy])
        if self.liger:
            L = self.liger["rms_norm"]
            # in_place=False: Liger's default writes dx into dy, the gradient that every
            # contender and the checks share (its memory saving, the same bytes moved)
            out["liger"] = (lambda: L.apply(x, w, 1e-6, 0.0, "llama", False), params, [dy])
        out["seed"] = (lambda: seed_rms_norm(x, w), params, [dy])
        return out

    def _dropout_impls(self, m: int, n: int, d: dict[str, Any]) -> Impls:
        """Ours, torch, the seed notebook's (p = DROP_P)."""
        TF, FS = self.TF, self.FS
        x, dy = d["x"], d["dy"]
        return {"ours": (lambda: FS.dropout(x, DROP_P, backend="triton"), [x], [dy]),
                "torch": (lambda: TF.dropout(x, DROP_P, training=True), [x], [dy]),
                "seed": (lambda: seed_dropout(x), [x], [dy])}

    def _batch_norm_impls(self, m: int, n: int, d: dict[str, Any]) -> Impls:
        """Ours, torch, the seed notebook's (on bf16 copies of the weight and bias)."""
        TF, FS = self.TF, self.FS
        x, dy, w, b, rm, rv = d["x"], d["dy"], d["w"], d["b"], d["rm"], d["rv"]
        params = [x, w, b]
        out: Impls = {}
        out["ours"] = (lambda: FS.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5,
                                             backend="triton"), params, [dy])
        out["torch"] = (lambda: TF.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5),
                        params, [dy])
        wb, bb = w.detach().to(self.dtype).requires_grad_(), b.detach().to(self.dtype)
        bb.requires_grad_()
        out["seed"] = (lambda: seed_batch_norm(x, wb, bb, rm, rv), [x, wb, bb], [dy])
        return out

    def _fused_add_rms_norm_impls(self, m: int, n: int, d: dict[str, Any]) -> Impls:
        """Ours, and torch's two steps (the add, then RMSNorm)."""
        TF, FS = self.TF, self.FS
        x, dy, w, r, ds = d["x"], d["dy"], d["w"], d["r"], d["ds"]
        params = [x, r, w]

        def two_steps():
            s = x + r
            return s, TF.rms_norm(s, (n,), w, 1e-6)
        return {"ours": (lambda: FS.fused_add_rms_norm(x, r, n, w, 1e-6, backend="triton"),
                         params, [ds, dy]),
                "torch": (two_steps, params, [ds, dy])}

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
        """Ours (bf16) against the ops reference run in float32 on the same device, on the
        inputs ``d`` of ``op`` at (m, n); nothing for an op not listed."""
        check = {"layer_norm": self._check_layer_norm, "rms_norm": self._check_rms_norm,
                 "fused_add_rms_norm": self._check_fused_add_rms_norm,
                 "dropout": self._check_dropout, "batch_norm": self._check_batch_norm}.get(op)
        if check is not None:
            check(m, n, d)

    @staticmethod
    def _f32(t):
        """A float32 copy of ``t``, a leaf that requires grad when ``t`` does."""
        return t.detach().float().requires_grad_(t.requires_grad)

    def _check_layer_norm(self, m: int, n: int, d: dict[str, Any]) -> None:
        FS = self.FS
        args = [d["x"], d["w"], d["b"]]
        ours = FS.layer_norm(d["x"], n, d["w"], d["b"], backend="triton")
        ref_args = [self._f32(t) for t in args]
        ref = FS.layer_norm(ref_args[0], n, ref_args[1], ref_args[2], backend="torch")
        self._compare_grads("layer_norm", (m, n), ours, ref, args, ref_args, [d["dy"]],
                            ("x", "w", "b"))

    def _check_rms_norm(self, m: int, n: int, d: dict[str, Any]) -> None:
        FS = self.FS
        args = [d["x"], d["w"]]
        ours = FS.rms_norm(d["x"], n, d["w"], 1e-6, backend="triton")
        ref_args = [self._f32(t) for t in args]
        ref = FS.rms_norm(ref_args[0], n, ref_args[1], 1e-6, backend="torch")
        self._compare_grads("rms_norm", (m, n), ours, ref, args, ref_args, [d["dy"]],
                            ("x", "w"))

    def _check_fused_add_rms_norm(self, m: int, n: int, d: dict[str, Any]) -> None:
        """s = x + residual rounded to bf16, y = RMSNorm(s); the reference normalizes that
        rounded s, and its gradients add ds to the one through y."""
        torch, FS = self.torch, self.FS
        op, shape, dy = "fused_add_rms_norm", (m, n), d["dy"]
        args = [d["x"], d["r"], d["w"]]
        ours = FS.fused_add_rms_norm(d["x"], d["r"], n, d["w"], 1e-6, backend="triton")
        ref_args = [self._f32(t) for t in args]
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

    def _check_dropout(self, m: int, n: int, d: dict[str, Any]) -> None:
        """The forward's mask and output, then the backward's regenerated mask."""
        self._check_dropout_mask((m, n), d["x"])
        self._check_dropout_backward((m, n), d["x"], d["dy"])

    def _check_dropout_mask(self, shape: tuple[int, int], x) -> None:
        """The forward's mask is u >= p of the uniforms drawn for its seed, kept at a rate
        within 6 standard deviations of 1 - p; y = x * mask / (1 - p)."""
        torch = self.torch
        from fromscratch.kernels import dropout as KD
        op, seed = "dropout", 1234
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

    def _check_dropout_backward(self, shape: tuple[int, int], x, dy) -> None:
        """The backward through autograd must regenerate the forward's mask. The reference
        mask is u >= p from the uniforms themselves, never y != 0: x has exact zeros (kept
        zeros give y == 0; the input below plants some, as a ReLU output would)."""
        torch = self.torch
        from fromscratch.kernels import dropout as KD
        from fromscratch.kernels.autograd import DropoutFn as KDropoutFn
        seed2, offset2 = 4321, 2**32 - 2**12           # counters run across 2**32
        xz = x.detach().clone()
        xz.view(-1)[::997] = 0
        xz.requires_grad_(True)
        y = KDropoutFn.apply(xz, DROP_P, seed2, offset2)
        (dx,) = torch.autograd.grad(y, [xz], [dy])
        keep = KD.uniforms(x.numel(), seed2, offset2, device=x.device).view(x.shape) >= DROP_P
        self._record("dropout", shape, "dx (regenerated mask)", dx,
                     dy.float() * keep / (1 - DROP_P))
        self._record("dropout", shape, "y (offset past 2**32 counters)", y,
                     xz.detach().float() * keep / (1 - DROP_P))

    def _check_batch_norm(self, m: int, n: int, d: dict[str, Any]) -> None:
        """Training mode: y, the gradients, and the running statistics it updates (each side
        on its own copy of them)."""
        FS = self.FS
        op, shape, x = "batch_norm", (m, n), d["x"]
        args = [x, d["w"], d["b"]]
        rm, rv = d["rm"].clone(), d["rv"].clone()
        ours = FS.batch_norm(x, rm, rv, d["w"], d["b"], True, 0.1, 1e-5, backend="triton")
        ref_args = [self._f32(t) for t in args]
        rm2, rv2 = d["rm"].clone(), d["rv"].clone()
        ref = FS.batch_norm(ref_args[0], rm2, rv2, ref_args[1], ref_args[2], True, 0.1, 1e-5,
                            backend="torch")
        self._compare_grads(op, shape, ours, ref, args, ref_args, [d["dy"]], ("x", "w", "b"))
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
        torch = self.torch
        dev = self.device
        g = torch.Generator(device=dev).manual_seed(1)

        def rnd(*shape, dtype=torch.float32, shift=0.0):
            return (torch.randn(*shape, generator=g, device=dev) + shift).to(dtype)

        big = 1000 if dev.type == "cuda" else 9                # the interpreter is slow
        cases = [(37, 130, torch.float32), (big, 1537, torch.bfloat16),
                 (6, 20000, torch.float16)]
        for m, n, dt in cases:
            self._check_small_case(m, n, dt, rnd)
        self._check_column_slice(big, rnd)

    def _check_small_case(self, m: int, n: int, dt, rnd: Callable) -> None:
        """LayerNorm, RMSNorm, the fused residual RMSNorm, BatchNorm (up to 2048 columns) and
        Dropout's mask at (m, n) in ``dt``, ours against torch's; ``rnd`` draws the inputs."""
        torch, FS = self.torch, self.FS
        from fromscratch.kernels import dropout as KD
        tol = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}[dt]
        shape, label = (m, n), f"small {dt}"
        x = rnd(m, n, dtype=dt, shift=3.0)
        w, b = rnd(n) * 0.1 + 1, rnd(n) * 0.1
        dy = rnd(m, n, dtype=dt)
        self._small_against_torch(
            "layer_norm", shape, label, tol, ("dx", "dw", "db"), [x, w, b], [dy],
            lambda t, be: FS.layer_norm(t[0], n, t[1], t[2], backend=be))
        self._small_against_torch(
            "rms_norm", shape, label, tol, ("dx", "dw"), [x, w], [dy],
            lambda t, be: FS.rms_norm(t[0], n, t[1], 1e-6, backend=be))
        r = rnd(m, n, dtype=dt)
        s_ours, y_ours = FS.fused_add_rms_norm(x, r, n, w, 1e-6, backend="triton")
        s_ref = (x.float() + r.float()).to(dt)
        self._record("fused_add_rms_norm", shape, f"{label} s", s_ours, s_ref, tol=tol)
        self._record("fused_add_rms_norm", shape, f"{label} y", y_ours,
                     FS.rms_norm(s_ref.float(), n, w, 1e-6, backend="torch"), tol=tol)
        if n <= 2048:
            xb = rnd(m, n, dtype=dt, shift=50.0)
            self._small_against_torch(
                "batch_norm", shape, label, tol, ("dx", "dw", "db"), [xb, w, b], [dy],
                lambda t, be: FS.batch_norm(t[0], None, None, t[1], t[2], True, backend=be))
        yd = KD.apply(x, DROP_P, 99)
        u = KD.uniforms(x.numel(), 99, device=self.device).view(x.shape)
        ok = bool(torch.all(((yd != 0) == (u >= DROP_P)) | (x == 0)))
        self.checks.append({"op": "dropout", "shape": [m, n], "what": f"{label} mask",
                            "ok": ok, "max_err": 0.0, "kind": "exact"})

    def _small_against_torch(self, op: str, shape: tuple[int, int], label: str, tol: float,
                             names: tuple[str, ...], args: list, outs_grad: list,
                             fn: Callable) -> None:
        """Records ``fn``'s y and the gradients ``names`` (those of the weights, sums over
        rows, relative to the max), ours against torch's, as "<label> y", "<label> dx"..."""
        ya, yr, ga, gr = self._grads_against_torch(fn, args, args, outs_grad)
        self._record(op, shape, f"{label} y", ya[0], yr[0], tol=tol)
        for name, a_, r_ in zip(names, ga, gr):
            self._record(op, shape, f"{label} {name}", a_, r_, reduced=name != "dx", tol=tol)

    def _check_column_slice(self, big: int, rnd: Callable) -> None:
        """LayerNorm reading a column slice of a wider tensor in place (row stride 2000)."""
        torch, FS = self.torch, self.FS
        wide = rnd(big, 2000, dtype=torch.bfloat16)
        xs, n = wide[:, 100:1637], 1537                     # row stride 2000, read in place
        w = rnd(n) * 0.1 + 1
        dy = rnd(big, n, dtype=torch.bfloat16)
        ya, yr, ga, gr = self._grads_against_torch(
            lambda t, be: FS.layer_norm(t[0], n, t[1], backend=be), [xs, w], [xs, w], [dy])
        self._record("layer_norm", (big, n), "column slice y", ya[0], yr[0])
        self._record("layer_norm", (big, n), "column slice dx", ga[0], gr[0])

    def _grads_against_torch(self, fn: Callable, args: list, ref_args: list,
                             outs_grad: list) -> tuple:
        """``fn(tensors, backend)`` run with backend "triton" on copies of ``args`` and with
        "torch" on float32 copies of ``ref_args``: (ours' outputs, the reference's, ours'
        gradients, the reference's)."""
        torch = self.torch
        a = [t.detach().clone().requires_grad_() for t in args]
        r = [t.detach().float().requires_grad_() for t in ref_args]
        ya, yr = fn(a, "triton"), fn(r, "torch")
        ya, yr = (ya if isinstance(ya, tuple) else (ya,)), (yr if isinstance(yr, tuple)
                                                              else (yr,))
        ga = torch.autograd.grad(ya, a, outs_grad)
        gr = torch.autograd.grad(yr, r, [o.float() for o in outs_grad])
        return ya, yr, ga, gr

    def check_int64(self, m: int = 2**31 // 1024 + 64, n: int = 1024,
                    chunk: int = 2**17) -> None:
        """LayerNorm, Dropout and BatchNorm on a tensor of more than 2**31 elements (by
        default; --smoke runs the same code on a small one).

        References are computed in chunks of rows, so the check needs ~6 such tensors."""
        torch = self.torch
        log(f"int64 check on {m}x{n} = {m * n} elements ({m * n / 2**31:.3f} x 2**31)")
        x = torch.randn(m, n, device=self.device, dtype=self.dtype)
        x.requires_grad_(True)
        self._int64_layer_norm(x, chunk)
        xf = x.detach()
        self._int64_dropout(xf)
        self._int64_batch_norm(xf, chunk)
        del x, xf

    def _int64_layer_norm(self, x, chunk: int) -> None:
        """y and dx on the first and the last 64 rows; dweight summed in chunks of rows."""
        torch, FS = self.torch, self.FS
        m, n = x.shape
        shape = (m, n)
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

    def _int64_dropout(self, xf) -> None:
        """The mask of the last elements (counters past 2**31 // 8) is u >= p."""
        torch = self.torch
        from fromscratch.kernels import dropout as KD
        seed, tail = 77, 4096
        yd = KD.apply(xf, DROP_P, seed)
        start = (xf.numel() - tail) // 8 * 8              # element e uses counter e // 8
        tail = xf.numel() - start
        u = KD.uniforms(tail, seed, offset=start // 8, device=self.device)
        ok = bool(torch.all(((yd.view(-1)[start:] != 0) == (u >= DROP_P))
                            | (xf.view(-1)[start:] == 0)))
        self.checks.append({"op": "dropout", "shape": list(xf.shape), "what": "int64 tail mask",
                            "ok": ok, "max_err": 0.0, "kind": "exact"})

    def _int64_batch_norm(self, xf, chunk: int) -> None:
        """The running statistics (momentum 1: the batch's mean and unbiased variance, summed
        in float64 in chunks of rows) and y of the last rows."""
        torch, FS = self.torch, self.FS
        m, n = xf.shape
        shape = (m, n)
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
    """The markdown report: the run's facts, the checks, a table of GB/s and % of the copy
    bandwidth per mode, ours run by run, the targets, the tuner's choices."""
    lines = header_lines(meta) + [checks_line(checks), ""]
    for mode in ("fwd+bwd", "fwd", GRAPH):
        lines += speed_table(mode, results, shapes, ops)
    lines += host_table(results, shapes, ops)
    lines += targets_table(results, shapes, ops)
    lines += ["Launch configurations chosen by the tuner (first call per size):", ""]
    lines += [f"- {key}: {cfg}" for key, cfg in chosen.items()]
    return "\n".join(lines) + "\n"


def header_lines(meta: dict[str, Any]) -> list[str]:
    """The title and the run's facts: card, versions, date, runs, copy bandwidth, timer."""
    return ["# GPU kernels: fromscratch vs peers", "",
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


def checks_line(checks: list[dict[str, Any]]) -> str:
    """How many checks pass, and each failed one with its error."""
    bad = [c for c in checks if not c["ok"]]
    return (f"Correctness against the ops reference: {len(checks) - len(bad)} of "
            f"{len(checks)} checks pass" + ("" if not bad else ", FAILED: " + "; ".join(
                f"{c['op']} {tuple(c['shape'])} {c['what']} (err {c['max_err']:.3g})"
                for c in bad)))


def speed_table(mode: str, results: dict[tuple, dict[str, Any]],
                shapes: list[tuple[int, int]], ops: list[str]) -> list[str]:
    """The table of ``mode``: a row per op and implementation, a cell per shape (fmt_cell);
    none when nothing was measured in that mode."""
    if not any(k[2] == mode for k in results):
        return []
    title = (f"## {mode}: GB/s and % of copy bandwidth (median run, spread)" if mode != GRAPH
             else f"## {mode}: the step captured once and replayed (device time, no host "
             "in the way; one run)")
    lines = [title, "", "| op | impl | " + " | ".join(f"{m}x{n}" for m, n in shapes) + " |",
             "|---|---|" + "---|" * len(shapes)]
    for op in ops:
        impls = sorted({k[1] for k in results if k[0] == op and k[2] == mode},
                       key=IMPL_ORDER.index)
        for impl in impls:
            cells = [fmt_cell(results.get((op, impl, mode, m, n))) for m, n in shapes]
            name = f"**{impl}**" if impl == "ours" else impl
            lines.append(f"| {op} | {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def targets_table(results: dict[tuple, dict[str, Any]], shapes: list[tuple[int, int]],
                  ops: list[str]) -> list[str]:
    """Ours' median-run % of the copy bandwidth against TARGETS, per shape, and whether every
    shape meets it."""
    lines = ["## Targets (ours, % of copy bandwidth, median run)", "",
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
    return lines + [""]


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


# ----------------------------------------------------------------------------------------
# The script: main() and its steps
# ----------------------------------------------------------------------------------------

Problems = dict[tuple[str, int, int], dict[str, Any]]    # (op, M, N) -> that op's inputs
Results = dict[tuple, dict[str, Any]]                     # (op, impl, mode, M, N) -> timings


class Plan(NamedTuple):
    """What this invocation measures and where: the shapes, the runs per configuration and
    the ops (from the flags), the device's name and Triton's version."""
    shapes: list[tuple[int, int]]
    runs: int
    ops: list[str]
    device: str
    triton: str


def import_triton(args: argparse.Namespace):
    """Triton, imported once the environment that it and our kernels read on import is set:
    --smoke runs the kernels in Triton's interpreter (TRITON_INTERPRET=1 unless set),
    --no-tune sets FROMSCRATCH_TUNE=0 (default launch configurations)."""
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.no_tune:
        os.environ["FROMSCRATCH_TUNE"] = "0"
    import triton
    return triton


def make_plan(args: argparse.Namespace, triton_version: str) -> Plan:
    """--smoke: the tiny shapes, one run, on the CPU; --quick: every other shape, 3 runs;
    otherwise every shape, 5 runs (--runs overrides); --ops, comma-separated."""
    shapes = SMOKE_SHAPES if args.smoke else (SHAPES[::2] if args.quick else SHAPES)
    runs = args.runs or (1 if args.smoke else 3 if args.quick else 5)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    device = "CPU (Triton interpreter)" if args.smoke else torch.cuda.get_device_name()
    return Plan(shapes, runs, ops, device, triton_version)


def log_plan(bench: Bench, plan: Plan) -> None:
    """The device, the versions, the plan, and whether Liger-Kernel is installed."""
    log(f"{plan.device}; torch {torch.__version__}, triton {plan.triton}; "
        f"shapes {plan.shapes}; runs {plan.runs}; ops {plan.ops}")
    log(f"Liger-Kernel: {'installed' if bench.liger else 'not installed'}")


def failed_check(op: str, shape: list, e: Exception, prefix: str = "") -> dict[str, Any]:
    """The failed check recorded for a check that raised ``e``."""
    return {"op": op, "shape": shape, "ok": False, "max_err": 0.0,
            "what": f"{prefix}{type(e).__name__}: {str(e)[:300]}", "kind": "error"}


def check_before_timing(bench: Bench, plan: Plan) -> Problems:
    """The inputs of every op at every shape, checked there against the ops reference
    (Bench.check), then the small, masked and looped shapes (Bench.check_small); a check
    that raises is a failed check. Returns the inputs: they stay allocated for the whole
    run, and the timing, the checks after it and the graph step use them."""
    problems: Problems = {}
    for m, n in plan.shapes:
        for op in plan.ops:
            d = bench.inputs(op, m, n)
            problems[(op, m, n)] = d
            log(f"check {op} {m}x{n}")
            try:
                bench.check(op, m, n, d)
            except Exception as e:                      # noqa: BLE001 - report, go on
                bench.checks.append(failed_check(op, [m, n], e))
                log(f"  check {op} {m}x{n} raised {type(e).__name__}: {str(e)[:300]}")
    log("check small, masked and looped shapes")
    try:
        bench.check_small()
    except Exception as e:                              # noqa: BLE001 - report, go on
        bench.checks.append(failed_check("small", [], e))
        log(f"  small checks raised {type(e).__name__}: {str(e)[:300]}")
    n_bad = sum(not c["ok"] for c in bench.checks)
    log(f"correctness: {len(bench.checks) - n_bad}/{len(bench.checks)} checks pass")
    return problems


def hard_deadline(bench: Bench) -> float:
    """When measuring stops, even in the first run: 1.6 times --budget-s after the start."""
    return bench.t0 + 1.6 * bench.args.budget_s


def budget_spent(bench: Bench, run: int) -> bool:
    """After the first run, --budget-s seconds since the start; in any run, the hard
    deadline."""
    deadline = bench.t0 + bench.args.budget_s
    return (run > 0 and time.time() > deadline) or time.time() > hard_deadline(bench)


class Timings:
    """The timed measurements, ``results``: (op, impl, mode, M, N) ->
    {"ms_runs", "pct_runs"} (ours' forward+backward also "host_us_runs"), or {"error"} once
    the configuration raised (it is then not timed again). A configuration is called once
    untimed before its first timing (compile, tune, warm)."""

    def __init__(self, bench: Bench, problems: Problems, copy_gbps: float):
        self.bench, self.problems, self.copy_gbps = bench, problems, copy_gbps
        self.results: Results = {}
        self.warm: set[tuple] = set()

    def run(self, run: int, plan: Plan) -> bool:
        """Run number ``run`` (from 0) over every shape and op; False when the time budget
        stopped it before a shape (logged)."""
        for m, n in plan.shapes:
            if budget_spent(self.bench, run):
                log(f"time budget (--budget-s {self.bench.args.budget_s:.0f}) reached in run "
                    f"{run + 1}; reporting what was measured")
                return False
            for op in plan.ops:
                self.problem(op, m, n, first_run=run == 0)
        return True

    def problem(self, op: str, m: int, n: int, first_run: bool) -> None:
        """Every implementation of ``op`` at (m, n), forward then forward+backward; in the
        first run, a failed check for each shared input an implementation wrote into."""
        d = self.problems[(op, m, n)]
        before = self.bench.fingerprint(d) if first_run else None
        for impl, (fwd, params, grads) in self.bench.impls(op, m, n, d).items():
            for mode in ("fwd", "fwd+bwd"):
                self.measure((op, impl, mode, m, n), fwd, params, grads)
            if before is not None:                  # first run: inputs unchanged?
                self.bench.check_untouched(op, (m, n), impl, d, before)

    def measure(self, key: tuple, fwd: Callable[[], Any], params: list, grads: list) -> None:
        """One timing of the configuration ``key``: ``fwd``, or in mode "fwd+bwd" the step
        through autograd (grad_step); an exception is its result from then on (logged)."""
        op, impl, mode, m, n = key
        if key in self.results and "error" in self.results[key]:
            return
        fn = fwd if mode == "fwd" else grad_step(fwd, params, grads)
        try:
            self.warm_up(key, fn)
            ms = self.bench.time_ms(fn)
        except Exception as e:                      # noqa: BLE001 - report, go on
            self.results[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
            log(f"  {op} {impl} {mode} {m}x{n}: {self.results[key]['error']}")
            return
        self.add(key, fn, ms)

    def warm_up(self, key: tuple, fn: Callable[[], Any]) -> None:
        """The first call of a configuration, untimed: compile, tune, warm (logged when it
        takes over 2 s)."""
        if key in self.warm:
            return
        t = time.time()
        fn()
        self.bench.sync()
        self.warm.add(key)
        if time.time() - t > 2:
            op, impl, mode, m, n = key
            log(f"  warm-up {op} {impl} {mode} {m}x{n}: {time.time() - t:.1f} s")

    def add(self, key: tuple, fn: Callable[[], Any], ms: float) -> None:
        """A timing of ``key``, in ms and in % of the copy bandwidth; for ours'
        forward+backward also the host's us per step, measured right after."""
        op, impl, mode, m, n = key
        gbps = self.bench.bytes_moved(op, mode, m, n, 2) / (ms * 1e-3) / 1e9
        r = self.results.setdefault(key, {"ms_runs": [], "pct_runs": []})
        r["ms_runs"].append(ms)
        r["pct_runs"].append(100 * gbps / self.copy_gbps)
        if impl == "ours" and mode == "fwd+bwd":    # the host, this run
            r.setdefault("host_us_runs", []).append(
                self.bench.host_us(fn, 3 if self.bench.args.smoke else 20))


def time_runs(bench: Bench, plan: Plan, problems: Problems,
              copy_gbps: float) -> tuple[Results, int]:
    """Every configuration timed ``plan.runs`` times, interleaved (each run goes through
    every shape, op, implementation and mode), until the time budget is spent. Returns the
    measurements (Timings.results) and the number of runs completed."""
    timings = Timings(bench, problems, copy_gbps)
    done_runs = 0
    for run in range(plan.runs):
        if not timings.run(run, plan):
            break
        done_runs = run + 1
        log(f"run {run + 1}/{plan.runs} done ({time.time() - bench.t0:.0f} s)")
    return timings.results, done_runs


def check_after_timing(bench: Bench, plan: Plan, problems: Problems) -> None:
    """The checks again, on the same inputs, their names prefixed "after timing: ": the
    checks before timing ran each op's first steps, and every later step replayed its
    launches (fromscratch.kernels._fast_path). Dropout does not replay."""
    log("check again after timing (the steps now replay their launches)")
    bench.tag = "after timing: "
    for m, n in plan.shapes:
        for op in [o for o in plan.ops if o != "dropout"]:  # dropout does not replay
            try:
                bench.check(op, m, n, problems[(op, m, n)])
            except Exception as e:                      # noqa: BLE001 - report, go on
                bench.checks.append(failed_check(op, [m, n], e, "after timing: "))
    bench.tag = ""


def graph_step(bench: Bench, problems: Problems, results: Results,
               shapes: list[tuple[int, int]], ops: list[str], copy_gbps: float) -> None:
    """Each implementation's forward+backward captured once in a CUDA graph and replayed
    (mode ``GRAPH``): what the GPU itself takes, with the host's launch and autograd costs out
    of the way. One measurement per configuration; an implementation that cannot be
    captured (our Triton dropout refuses: its seed is drawn on the host) gets no cell."""
    log("fwd+bwd in a CUDA graph (device time, no host in the way)")
    for m, n in shapes:
        for op in ops:
            for impl, (fwd, params, grads) in bench.impls(op, m, n, problems[(op, m, n)]).items():
                if impl == "seed":
                    continue
                ms = bench.graph_ms(grad_step(fwd, params, grads))
                if ms is None:
                    continue
                gbps = bench.bytes_moved(op, "fwd+bwd", m, n, 2) / (ms * 1e-3) / 1e9
                results[(op, impl, GRAPH, m, n)] = {"ms_runs": [ms],
                                                    "pct_runs": [100 * gbps / copy_gbps]}


def add_medians(bench: Bench, results: Results) -> None:
    """Each configuration's median ms across its runs ("ms"), and the GB/s at it."""
    for key, r in results.items():
        if "ms_runs" in r:
            r["ms"] = statistics.median(r["ms_runs"])
            r["GBps"] = bench.bytes_moved(key[0], key[2], key[3], key[4], 2) / r["ms"] * 1e-6


def check_int64_offsets(bench: Bench) -> None:
    """Unless --quick or --no-int64: Bench.check_int64 (a small tensor under --smoke), after
    emptying the CUDA cache. Out of memory is a passed check of kind "skipped (out of
    memory)"; any other exception a failed one."""
    args = bench.args
    if args.quick or args.no_int64:
        return
    if bench.device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        bench.check_int64(**({"m": 70, "n": 64, "chunk": 16} if args.smoke else {}))
    except Exception as e:                          # noqa: BLE001 - report, keep results
        oom = isinstance(e, torch.cuda.OutOfMemoryError)
        bench.checks.append({"op": "int64", "shape": [], "what": f"{type(e).__name__}: "
                             f"{str(e)[:200]}", "ok": oom, "max_err": 0.0,
                             "kind": "skipped (out of memory)" if oom else "error"})
        log(f"int64 check: {type(e).__name__}: {str(e)[:200]}")


def metadata(bench: Bench, plan: Plan, results: Results, done_runs: int,
             copy: dict[str, Any]) -> dict[str, Any]:
    """The run's facts, for the report's header and the json's "meta" (wall time: until
    now)."""
    from fromscratch.kernels import _fast_path
    args = bench.args
    return {"device": plan.device, "torch": torch.__version__, "triton": plan.triton,
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


def tuner_choices() -> dict[str, Any]:
    """The launch configurations the tuner chose, the programs per SM, and the tuner's
    median ms per candidate."""
    from fromscratch.kernels import _common, _tune
    chosen = {str(k): v for k, v in _tune.chosen().items()}
    chosen.update({f"programs per SM {k}": v for k, v in _common._resident.items()})
    chosen.update({f"tuner median ms per candidate {k}": [round(v, 4) for v in ms]
                   for k, ms in _tune.timings().items()})
    return chosen


def write_report(out: Path, meta: dict[str, Any], checks: list[dict[str, Any]],
                 results: Results, plan: Plan, chosen: dict[str, Any]) -> None:
    """The markdown report to ``out``, the raw numbers beside it (.json), and the report
    up to the tuner's choices on stdout."""
    text = report(meta, results, checks, plan.shapes, plan.ops, chosen)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    raw = {"meta": meta, "checks": checks, "tuned": chosen,
           "results": [{"op": k[0], "impl": k[1], "mode": k[2], "M": k[3], "N": k[4], **v}
                       for k, v in results.items()]}
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    print(text.split("\nLaunch configurations")[0], flush=True)   # those are in the file
    log(f"wrote {out} and {out.with_suffix('.json')}")


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, set up, check ours at every (op, shape), time every implementation
    run after run, check again, time the CUDA graphs, check past 2**31 elements, report.
    Returns 0 when every check passed, 1 when one failed, 2 with no CUDA device (and no
    --smoke)."""
    args = parse(argv)
    triton = import_triton(args)
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke for the CPU interpreter check", file=sys.stderr)
        return 2
    bench = Bench(args)
    plan = make_plan(args, triton.__version__)
    log_plan(bench, plan)
    copy = bench.copy_bandwidth()
    log(f"copy bandwidth {copy['GBps']:.0f} GB/s")
    problems = check_before_timing(bench, plan)
    results, done_runs = time_runs(bench, plan, problems, copy["GBps"])
    check_after_timing(bench, plan, problems)
    if not args.no_graph and time.time() < hard_deadline(bench):
        graph_step(bench, problems, results, plan.shapes, plan.ops, copy["GBps"])
    add_medians(bench, results)
    problems.clear()                                    # memory for the int64 check
    check_int64_offsets(bench)
    meta = metadata(bench, plan, results, done_runs, copy)
    write_report(Path(args.out), meta, bench.checks, results, plan, tuner_choices())
    return 0 if all(c["ok"] for c in bench.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
