"""SyncBatchNorm over 2 gloo processes on CPU equals one-process BatchNorm on the
concatenated batch: output, dx, dweight/dbias (summed over ranks), running statistics; and
convert_sync_batchnorm keeps a channels-first BatchNorm2d's layout."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from fromscratch.nn import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm
from fromscratch.nn.sync_batch_norm import SyncBatchNorm1d, SyncBatchNorm2d, SyncBatchNorm3d
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


# --- channels-first: convert_sync_batchnorm keeps the layout -----------------------------------


def test_convert_sync_batchnorm_keeps_the_channels_first_layout():
    """A BatchNorm2d becomes a SyncBatchNorm2d: still a BatchNorm2d, still (N, C, H, W), the
    same numbers; channels-last input is refused as before. torch's BatchNorm2d stays."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), BatchNorm2d(4, momentum=None), nn.BatchNorm2d(4),
                          nn.Flatten(2), BatchNorm1d(4), BatchNorm(9))
    twin = copy.deepcopy(model)
    converted = SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(converted[1]) is SyncBatchNorm2d and isinstance(converted[1], BatchNorm2d)
    assert type(converted[4]) is SyncBatchNorm1d and type(converted[5]) is SyncBatchNorm
    assert type(converted[2]) is nn.BatchNorm2d
    assert converted[1].momentum is None
    for step in range(2):
        x = torch.randn(2, 3, 3, 3, dtype=torch.float32) + step
        assert torch.equal(converted(x), twin(x))
    assert all(torch.equal(a, b) for a, b in zip(converted.state_dict().values(),
                                                 twin.state_dict().values()))
    with pytest.raises(ValueError, match="SyncBatchNorm2d.*channels-last"):
        converted[1](torch.randn(2, 3, 3, 4))
    assert isinstance(SyncBatchNorm.convert_sync_batchnorm(BatchNorm3d(2)), SyncBatchNorm3d)


def channels_first_worker(rank: int, out: str) -> None:
    """Rank r trains a converted BatchNorm2d on its rows of channels_first_data()."""
    xs, dys = channels_first_data()
    layer = SyncBatchNorm.convert_sync_batchnorm(BatchNorm2d(3, dtype=torch.float64))
    rows = slice(3 * rank, 3 * rank + 3 - rank)            # 3 rows, then 2
    record = {}
    for step, (x, dy) in enumerate(zip(xs, dys)):
        xr = x[rows].clone().requires_grad_()
        layer(xr).backward(dy[rows])
        record[f"dx{step}"] = xr.grad
    record["running"] = [layer.running_mean, layer.running_var]
    record["eval"] = layer.eval()(xs[0][rows]).detach()
    torch.save(record, Path(out) / f"channels_first_rank{rank}.pt")


def channels_first_data():
    g = torch.Generator().manual_seed(0)
    return ([torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64) * 2 + 1 for _ in "ab"],
            [torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64) for _ in "ab"])


@pytest.mark.distributed
def test_two_gloo_processes_channels_first_equal_torch_on_the_concatenation(tmp_path):
    launch(channels_first_worker, 2, str(tmp_path), timeout_s=120)
    got = [torch.load(tmp_path / f"channels_first_rank{r}.pt") for r in range(2)]
    ref = nn.BatchNorm2d(3, dtype=torch.float64)
    xs, dys = channels_first_data()
    for step, (x, dy) in enumerate(zip(xs, dys)):
        x = x.clone().requires_grad_()
        ref(x).backward(dy)
        close(f"dx{step}", torch.cat([g[f"dx{step}"] for g in got]), x.grad)
    for g in got:
        close("running_mean", g["running"][0], ref.running_mean)
        close("running_var", g["running"][1], ref.running_var)
    close("eval", torch.cat([g["eval"] for g in got]), ref.eval()(xs[0]).detach())
