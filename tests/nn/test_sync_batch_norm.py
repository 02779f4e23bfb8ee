"""SyncBatchNorm over 2 gloo processes on CPU equals one-process BatchNorm on the
concatenated batch: output, dx, dweight/dbias (summed over ranks), running statistics."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fromscratch.nn import BatchNorm, SyncBatchNorm
from fromscratch.train.distributed import launch
from tests.train.helpers import sync_bn_data, sync_bn_worker

CASES = [(5, 2), (4, 0), (0, 3), (0, 0)]   # uneven, an empty rank (either one), no rows at all


def reference(sizes):
    xs, dys, w, b = sync_bn_data(sizes)
    layer = BatchNorm(5, momentum=0.3, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    out = {}
    for step, (x, dy) in enumerate(zip(xs, dys)):
        x = x.clone().requires_grad_()
        y = layer(x)
        y.backward(dy)
        out[f"y{step}"], out[f"dx{step}"] = y.detach(), x.grad
        out[f"dw{step}"], out[f"db{step}"] = layer.weight.grad.clone(), layer.bias.grad.clone()
        layer.weight.grad = layer.bias.grad = None
    out["running"] = (layer.running_mean, layer.running_var, int(layer.num_batches_tracked))
    layer.eval()
    out["eval"] = layer(xs[0]).detach()
    return out


def close(name, mine, ref):
    assert mine.shape == ref.shape, f"{name}: shape {tuple(mine.shape)} vs {tuple(ref.shape)}"
    err = float((mine - ref).abs().max()) if mine.numel() else 0.0
    assert err < 1e-12, f"{name}: max |sync - one process| = {err:.3g}"


@pytest.mark.distributed
def test_two_gloo_processes_equal_one_process_on_the_concatenation(tmp_path):
    launch(sync_bn_worker, 2, CASES, str(tmp_path), timeout_s=120)
    ranks = [torch.load(tmp_path / f"sync_bn_rank{r}.pt") for r in range(2)]
    for case, sizes in enumerate(CASES[:3]):
        ref = reference(sizes)
        got = [r[case] for r in ranks]
        for step in range(2):
            for key in ("y", "dx"):       # rows are split: concatenate the ranks' rows
                close(f"{sizes} {key}{step}", torch.cat([g[f"{key}{step}"] for g in got]),
                      ref[f"{key}{step}"])
            for key in ("dw", "db"):      # each rank returns its own sum; DDP combines them
                close(f"{sizes} {key}{step}", sum(g[f"{key}{step}"] for g in got),
                      ref[f"{key}{step}"])
        for g in got:                     # every rank ends with the same running statistics
            close(f"{sizes} running_mean", g["running"][0], ref["running"][0])
            close(f"{sizes} running_var", g["running"][1], ref["running"][1])
            assert g["running"][2] == ref["running"][2] == 2
        close(f"{sizes} eval", torch.cat([g["eval"] for g in got]), ref["eval"])

    for r in ranks:                       # no rows on any rank: the same error on each
        assert "more than 1 value per channel" in r[3]["error"]
        assert "0 over 2 processes" in r[3]["error"]


def test_without_a_process_group_it_is_batch_norm():
    torch.manual_seed(0)
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    a, b = SyncBatchNorm(3, dtype=torch.float64), BatchNorm(3, dtype=torch.float64)
    ya, yb = a(x), b(x)
    assert torch.equal(ya, yb)
    assert torch.equal(a.running_var, b.running_var)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        a(x[:1])


def test_convert_sync_batchnorm_keeps_parameters_and_buffers():
    model = nn.Sequential(nn.Linear(3, 4), BatchNorm(4, momentum=None),
                          nn.Sequential(nn.ReLU(), BatchNorm(4, eps=1e-3)), nn.BatchNorm1d(4))
    model[1].running_mean.fill_(2.0)
    model.eval()
    before = model.state_dict()
    old = model[1]
    converted = SyncBatchNorm.convert_sync_batchnorm(model, process_group="pg")
    assert type(converted[1]) is SyncBatchNorm and type(converted[2][1]) is SyncBatchNorm
    assert type(converted[3]) is nn.BatchNorm1d           # torch's own (channels-first) stays
    assert converted[1].weight is old.weight and converted[1].running_var is old.running_var
    assert converted[1].momentum is None and converted[2][1].eps == 1e-3
    assert converted[1].process_group == "pg" and not converted[1].training
    assert torch.equal(converted[1].running_mean, torch.full((4,), 2.0))
    after = converted.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
