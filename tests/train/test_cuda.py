"""The same guarantees on a GPU: CUDA tensors, fp16 autocast with a GradScaler, NCCL.
Skipped without CUDA (run on a GPU machine: ``pytest tests/train/test_cuda.py``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fromscratch.train import fit
from fromscratch.train.cli import main as train_main
from fromscratch.train.distributed import launch

from .helpers import (ce_sum, fit_worker, make_optimizer, max_diff, params, token_batches,
                      token_model)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")


def run(device, k=3, epochs=2, dtype=torch.float64, **kw):
    model = token_model().to(device, dtype)
    opt, sched = make_optimizer("sgd", model)
    batches = [(x.to(dtype), y) for x, y in token_batches(11)]
    history = fit(model, batches, ce_sum, opt, scheduler=sched, epochs=epochs,
                  accumulation_steps=k, progress=False, **kw)
    return model, history, sched


def test_cuda_equals_cpu_in_float64():
    gpu, h_gpu, _ = run(CUDA)
    cpu, h_cpu, _ = run("cpu")
    diff = max_diff({k: v.cpu() for k, v in params(gpu).items()}, params(cpu))
    assert diff < 1e-10, f"{diff:.3g}"
    assert h_gpu.loss == pytest.approx(h_cpu.loss, rel=1e-10)


def test_fp16_autocast_with_grad_scaler():
    """fp16 forward, float32 master weights: close to the float32 run; an overflowing
    window is skipped together with its scheduler step."""
    ref, h_ref, _ = run(CUDA, dtype=torch.float32)
    amp, h_amp, sched = run(CUDA, dtype=torch.float32, autocast_dtype=torch.float16,
                            scaler=torch.amp.GradScaler("cuda"))
    assert h_amp.skipped == [] and sched.last_epoch == h_amp.steps
    diff = max_diff(params(amp), params(ref))
    print(f"fp16 autocast vs float32: max parameter difference {diff:.3g}")
    assert diff < 5e-3

    bad = [(x.float().clone(), y) for x, y in token_batches(11)]
    bad[4][0][0, 0, 0] = float("inf")
    model = token_model().to(CUDA, torch.float32)
    opt, sched = make_optimizer("sgd", model)
    h = fit(model, bad, ce_sum, opt, scheduler=sched, accumulation_steps=3, progress=False,
            autocast_dtype=torch.float16, scaler=torch.amp.GradScaler("cuda"))
    assert h.skipped == [2] and sched.last_epoch == h.steps - 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_on_cuda(tmp_path):
    whole, h_whole, _ = run(CUDA)

    class Crash(Exception):
        pass

    def crash(step, net, loss):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        run(CUDA, checkpoint_dir=tmp_path, checkpoint_every=1, callback=crash)
    resumed, h_resumed, _ = run(CUDA, checkpoint_dir=tmp_path, resume=True)
    assert h_resumed.resumed_from == 4 and h_resumed.loss == h_whole.loss
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))


def test_nccl_one_process_and_gloo_two_processes_on_one_gpu(tmp_path):
    """NCCL (DDP with device_ids) on the one GPU; and 2 gloo processes sharing it, which
    checks CUDA tensors in every collective fit and SyncBatchNorm make."""
    cfg = dict(n_batches=11, k=2, epochs=2, optimizer="sgd", max_grad_norm=0.5, device="cuda")
    launch(fit_worker, 1, {"nccl": cfg}, str(tmp_path), backend="nccl", timeout_s=180)
    got = torch.load(tmp_path / "fit.pt")["nccl"]
    model, history, _ = run(CUDA, k=2, max_grad_norm=0.5)
    assert max_diff(got["params"], {k: v.cpu() for k, v in params(model).items()}) < 1e-12
    assert got["loss"] == history.loss

    cfgs = {"gloo": {**cfg, "n_batches": 9}, "gloo-sync-bn": {**cfg, "n_batches": 9, "k": 1,
                                                              "norm": "sync"}}
    launch(fit_worker, 2, cfgs, str(tmp_path), backend="gloo", timeout_s=180)
    got = torch.load(tmp_path / "fit.pt")
    ref = token_model().to(CUDA)
    opt, sched = make_optimizer("sgd", ref)
    h = fit(ref, token_batches(9), ce_sum, opt, scheduler=sched, epochs=2, accumulation_steps=4,
            max_grad_norm=0.5, progress=False)
    assert max_diff(got["gloo"]["params"], {k: v.cpu() for k, v in params(ref).items()}) < 1e-12
    assert got["gloo"]["loss"] == pytest.approx(h.loss, rel=1e-12)
    assert len(got["gloo-sync-bn"]["loss"]) == 2 * 5


def test_torchrun_on_the_gpu(tmp_path):
    """`torchrun --nproc_per_node=1 -m fromscratch train` takes the NCCL path."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    common = ["--epochs", "2", "--batch-size", "7", "--dtype", "float64", "--no-progress"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
           "--standalone", "-m", "fromscratch", "train", *common,
           "--accumulation-steps", "2", "--out", str(tmp_path / "gpu")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert train_main([*common, "--accumulation-steps", "2", "--device", "cpu",
                       "--out", str(tmp_path / "cpu")]) == 0
    gpu = torch.load(tmp_path / "gpu" / "model.pt", map_location="cpu")
    cpu = torch.load(tmp_path / "cpu" / "model.pt")
    assert max_diff(gpu, cpu) < 1e-10
