#!/usr/bin/env python3
"""Compile every Triton kernel of fromscratch for a GPU architecture, without a GPU.

    PYTHONPATH=src python3 benchmarks/kernel_compile_check.py              # benchmark shapes
    PYTHONPATH=src python3 benchmarks/kernel_compile_check.py --all-configs --arch 90

The host functions of ``fromscratch.kernels`` run on ``meta`` tensors (no memory, no
device); each kernel launch they make is captured instead of run, specialised the way
Triton's JIT would specialise it (pointer and integer arguments divisible by 16, integers
equal to 1 folded) and compiled with Triton's bundled ptxas for ``sm_<arch>``. The table
gives registers per thread, spilled bytes and the programs per multiprocessor those
registers allow: what decides how many loads are in flight in a memory-bound kernel.

This catches what Triton's interpreter cannot (the interpreter runs NumPy, not the
compiler), and it is how the launch configurations in ``kernels/_common.py`` and
``kernels/batch_norm.py`` were sized. It must run without ``TRITON_INTERPRET``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("kernel_compile_check.py compiles kernels: run it without TRITON_INTERPRET")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # triton >= 3.9 warns when unset

import torch  # noqa: E402
import triton  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

_DT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
       torch.float64: "fp64", torch.int64: "i64", torch.int32: "i32", torch.bool: "i1"}


class Capture:
    """Replaces ``JITFunction.run`` while active: records (kernel, args, kwargs)."""

    def __init__(self) -> None:
        self.launches: list[tuple[JITFunction, tuple, dict]] = []
        self._orig = JITFunction.run

    def __enter__(self) -> "Capture":
        launches = self.launches

        def run(fn, *args, grid, warmup, **kwargs):  # noqa: ARG001
            launches.append((fn, args, kwargs))
        JITFunction.run = run
        return self

    def __exit__(self, *exc: object) -> None:
        JITFunction.run = self._orig


def specialise(fn: JITFunction, args: tuple, kwargs: dict) -> tuple[dict, dict, dict, int]:
    """(signature, constexprs, attrs, num_warps) as the JIT would build them."""
    sig: dict[str, str] = {}
    consts: dict[str, Any] = {}
    attrs: dict[tuple[int, ...], list] = {}
    values = dict(zip([p.name for p in fn.params], args))
    values.update({k: v for k, v in kwargs.items() if k in {p.name for p in fn.params}})
    for i, p in enumerate(fn.params):
        v = values[p.name]
        if p.is_constexpr:
            sig[p.name] = "constexpr"
            consts[p.name] = v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + _DT[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            if v == 1:
                sig[p.name] = "constexpr"
                consts[p.name] = 1
            else:
                sig[p.name] = "i32" if -2**31 <= v < 2**31 else "i64"
                if v % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {p.name} of type {type(v).__name__}")
    return sig, consts, attrs, int(kwargs.get("num_warps", 4))


def resources(cubin: bytes) -> dict[str, int]:
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                             "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if "REG:" in ln)
    return {k: int(v) for k, v in (kv.split(":") for kv in line.split())}


def ptx_body(ptx: str) -> str:
    """The PTX without source locations and debug sections: what the compiler generated,
    so that two versions of a kernel's source can be compared instruction by instruction."""
    keep = []
    for line in ptx.splitlines():
        t = line.strip()
        if t.startswith((".loc", ".file", "//")):
            continue
        if t.startswith(".section") and "debug" in t:
            break                                       # debug sections close the file
        keep.append(line)
    return "\n".join(keep) + "\n"


def compile_one(fn: JITFunction, args: tuple, kwargs: dict, arch: int) -> dict[str, Any]:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig, consts, attrs, warps = specialise(fn, args, kwargs)
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    options = {"num_warps": warps}
    if "num_stages" in kwargs:
        options["num_stages"] = int(kwargs["num_stages"])
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    res = resources(k.asm["cubin"])
    threads = 32 * warps
    regs = max(res["REG"], 1)
    per_warp = -(-regs * 32 // 256) * 256                 # registers are given per warp
    shared = int(res.get("SHARED", 0))
    blocks = min(65536 // (per_warp * warps), 2048 // threads, 32,
                 (228 * 1024) // (shared + 1024) if shared else 32)
    shown = {k: v for k, v in consts.items() if k.isupper()}
    if "num_stages" in kwargs:
        shown["num_stages"] = int(kwargs["num_stages"])
    shown["async_copy"] = "async_copy" in k.asm.get("ttgir", "")
    return {"kernel": fn.__name__, "config": shown, "warps": warps, "regs": res["REG"],
            "spill": res["LOCAL"] + res["STACK"], "shared": res["SHARED"], "blocks": blocks,
            "ptx": ptx_body(k.asm["ptx"])}


def launches_for(shape: tuple[int, int], all_configs: bool, sms: int) -> list:
    """Run every host function once on meta tensors of ``shape``; return the launches."""
    from fromscratch.kernels import (_common, _row_backward, _tune, batch_norm, dropout,
                                     layer_norm, residual_rms_norm, rms_norm)
    m, n = shape
    meta = torch.device("meta")
    x = torch.empty(m, n, dtype=torch.bfloat16, device=meta)
    w = torch.empty(n, dtype=torch.bfloat16, device=meta)
    wf = torch.empty(n, dtype=torch.float32, device=meta)
    stats = torch.empty(m, dtype=torch.float32, device=meta)
    orig_choose, orig_sms = _tune.choose, _common.num_sms

    def every(key, candidates, launch, device, reps=5):       # noqa: ARG001
        for c in candidates[1:]:
            launch(c)
        return candidates[0]
    patched = [(_tune, "choose", every if all_configs else orig_choose)]
    for mod in (_common, _row_backward, layer_norm, rms_norm, batch_norm):
        if hasattr(mod, "num_sms"):
            patched.append((mod, "num_sms", lambda device: sms))
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patched]
    for mod, name, value in patched:
        setattr(mod, name, value)
    try:
        with Capture() as cap:
            layer_norm.forward(x, w, w, 1e-5)
            layer_norm.backward(x, x, w, True, stats, stats, torch.bfloat16)
            rms_norm.forward(x, w, 1e-6)
            rms_norm.backward(x, x, w, stats)
            s, _, rstd, _ = residual_rms_norm.forward(x, x, w, 1e-6)
            residual_rms_norm.backward(x, x, s, w, rstd)
            dropout.apply(x, 0.1, seed=3)
            rm, rv = torch.empty(n, device=meta), torch.empty(n, device=meta)
            _, mean, _, r, _ = batch_norm.forward(x, wf, wf, 1e-5, True, rm, rv, 0.1)
            batch_norm.backward(x, x, wf, True, mean, r, True, torch.float32)
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)
        _tune.choose = orig_choose
        _common.num_sms = orig_sms
    return cap.launches


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability, 90 = H100/H200")
    ap.add_argument("--shapes", default="32768x4096,16384x8192,131072x1024")
    ap.add_argument("--all-configs", action="store_true",
                    help="every candidate the tuner may pick, not only the defaults")
    ap.add_argument("--sms", type=int, default=132, help="multiprocessors (grid sizes)")
    ap.add_argument("--dump", type=Path, default=None,
                    help="write each variant's PTX (without source locations) to this folder, "
                         "one file per variant, to diff two versions of the source")
    args = ap.parse_args(argv)
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
    seen: set[tuple] = set()
    failures = 0
    print(f"triton {triton.__version__}, sm_{args.arch}")
    print(f"{'kernel':22} {'warps':>5} {'regs':>5} {'spill':>6} {'smem':>6} {'prog/SM':>7}  config")
    for shape in args.shapes.split(","):
        m, n = (int(v) for v in shape.lower().split("x"))
        for i, (fn, a, kw) in enumerate(launches_for((m, n), args.all_configs, args.sms)):
            sig = specialise(fn, a, kw)
            key = (fn.__name__, str(sig))
            if key in seen:
                continue
            seen.add(key)
            try:
                r = compile_one(fn, a, kw, args.arch)
            except Exception as e:                      # noqa: BLE001 - report every failure
                failures += 1
                print(f"{fn.__name__:22} FAILED to compile: {type(e).__name__}: {e}")
                continue
            if args.dump:
                # named by shape and launch order: the same host calls make the same
                # launches, so a refactored kernel's PTX lands in the same file
                (args.dump / f"{shape}-{i:03d}.ptx").write_text(r["ptx"])
            print(f"{r['kernel']:22} {r['warps']:5d} {r['regs']:5d} {r['spill']:6d} "
                  f"{r['shared']:6d} {r['blocks']:7d}  {r['config']}", flush=True)
    print(f"{len(seen)} kernel variants, {failures} failed to compile")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
