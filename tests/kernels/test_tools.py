"""The GPU benchmark scripts' CPU smoke modes, and the compile check for sm_90 (no GPU needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    for heading in ("## fwd+bwd", "## fwd:", "## Targets", "copy bandwidth",
                    "## fwd+bwd, ours, run by run"):
        assert heading in text
    ours = [r for r in raw["results"] if r["impl"] == "ours" and r["mode"] == "fwd+bwd"]
    assert ours and all(len(r["host_us_runs"]) == len(r["pct_runs"]) and
                        min(r["host_us_runs"]) > 0 for r in ours), ours
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
    timeline = {}
    for line in text.split("## The host's timeline")[1].splitlines():
        if line.startswith(("| layer_norm", "| batch_norm")):
            cells = [c.strip() for c in line.split("|")[1:-1]]
            timeline.setdefault((cells[0], cells[1]), []).append(cells[2:])
    assert set(timeline) == {(op, impl) for op in ("layer_norm", "batch_norm")
                             for impl in ("ours", "floor")}
    for (op, impl), rows in timeline.items():
        assert len(rows) == 2, rows                 # worker thread (as asked), calling thread
        for thread, *phases, total, in_launches in rows:
            assert thread == "caller"               # CPU tensors: autograd has no worker
            # the floor launches nothing in its forward
            shown = phases[:1] + phases[2:] if impl == "floor" else phases
            assert phases[1] == "-" if impl == "floor" else "-" not in phases, (op, impl)
            assert sum(map(float, shown)) <= float(total) * 1.5, (op, impl, phases, total)
            # the interpreter runs the kernels inside the launch calls: most of the step
            assert (float(in_launches) > float(total) / 2 if impl == "ours"
                    else float(in_launches) == 0), (op, impl, in_launches, total)


def test_timeline_splits_a_step_at_its_marks():
    """The phases are the gaps between the marks, launches counted where they happen; a step
    that never entered a marked Function gives nothing."""
    _timeline = benchmark_script("_timeline")
    events = [("forward", 10_000, 1), ("launch", 13_000, 1), ("launched", 13_500, 1),
              ("launch", 14_000, 1), ("launched", 14_250, 1), ("forward end", 15_000, 1),
              ("backward", 40_000, 2), ("launch", 42_000, 2), ("launched", 43_000, 2),
              ("launch", 47_000, 2), ("backward end", 48_000, 2)]
    phases, worker = _timeline._phases(events, 0, 50_000, caller=1)
    assert worker
    assert phases == {"to forward": 10.0, "forward to launch": 3.0, "forward rest": 2.0,
                      "to backward": 25.0, "backward to launch": 2.0,
                      "backward launches": 5.0, "after backward": 3.0, "total": 50.0,
                      "in launch calls": 1.75}  # a launch that never returned: not counted
    assert _timeline._phases(events[:3], 0, 50_000, caller=1) is None
    assert not _timeline._phases(events, 0, 50_000, caller=2)[1]


def test_timeline_marks_are_removed_after(device):
    """``marked()`` puts back every Function's forward and backward and the launch entry
    points, so nothing is left instrumented after a measurement."""
    _timeline = benchmark_script("_timeline")
    from fromscratch.kernels import _fast_path, autograd
    before = (vars(autograd.LayerNormFn)["forward"], vars(autograd.BatchNormFn)["backward"],
              _fast_path.launch, _fast_path.RecordedLaunch.__call__)
    x = torch.randn(4, 8, device=device, requires_grad=True)
    med, thread = _timeline.timeline(lambda: _timeline.Floor.apply(x).sum().backward(),
                                     lambda: None, steps=3, round_steps=3)
    assert med["forward to launch"] is None and med["total"] > 0
    assert thread == ("caller" if device.type == "cpu" else "worker")
    after = (vars(autograd.LayerNormFn)["forward"], vars(autograd.BatchNormFn)["backward"],
             _fast_path.launch, _fast_path.RecordedLaunch.__call__)
    assert all(a is b for a, b in zip(before, after))
