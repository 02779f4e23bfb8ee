"""The GPU benchmark scripts' CPU smoke modes, and the compile check for sm_90 (no GPU needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._benchmarks import benchmark_script

ROOT = Path(__file__).resolve().parents[2]


def smoke_script(name: str, device):
    """The benchmark script ``name`` as a module, for its --smoke (CPU) mode."""
    if device.type != "cpu":
        pytest.skip("--smoke is the CPU mode")
    return benchmark_script(name)


def test_gpu_benchmark_smoke_mode(device, tmp_path):
    """benchmarks/gpu_kernels.py --smoke: checks pass and the report has every table."""
    gpu_kernels = smoke_script("gpu_kernels", device)
    out = tmp_path / "gpu.md"
    rc = gpu_kernels.main(["--smoke", "--ops", "layer_norm,dropout,batch_norm",
                           "--out", str(out)])
    text = out.read_text()
    raw = json.loads(out.with_suffix(".json").read_text())
    assert rc == 0, [c for c in raw["checks"] if not c["ok"]]
    for heading in ("## fwd+bwd", "## fwd:", "## Targets", "copy bandwidth"):
        assert heading in text
    impls = {(r["op"], r["impl"]) for r in raw["results"]}
    assert {("layer_norm", "ours"), ("layer_norm", "torch"), ("dropout", "seed"),
            ("batch_norm", "ours")} <= impls
    assert all("error" not in r for r in raw["results"]), raw["results"]


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90():
    """Triton's compiler (not the interpreter) accepts every kernel variant the host code
    launches, compiled for H100/H200 with the ptxas bundled in the triton wheel."""
    triton = pytest.importorskip("triton")
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("this triton build has no bundled ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_compile_check.py"),
                           "--shapes", "256x130,64x4096,4x20000"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " 0 failed to compile" in proc.stdout


def test_gpu_diagnose_smoke_mode(device, tmp_path):
    """benchmarks/gpu_diagnose.py --smoke: every op's row for ours and torch, and ours'
    kernel table (the CUDA graph column is GPU-only; the others are times)."""
    gpu_diagnose = smoke_script("gpu_diagnose", device)
    out = tmp_path / "diag.md"
    assert gpu_diagnose.main(["--smoke", "--ops", "layer_norm,batch_norm",
                              "--out", str(out)]) == 0
    text = out.read_text()
    for op in ("layer_norm", "batch_norm"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {op} | ours |"))
        cells = [c.strip() for c in row.split("|")[3:-1]]
        do_bench, one_thread, graph, kernels = cells[:4]
        assert graph == "-" and "-" not in (do_bench, one_thread, kernels), row
        assert f"## {op}, ours: kernels of one step" in text
