"""fromscratch.nn.swap on small torch models: what it replaces, what it refuses and why, and
that unswap puts everything back."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fromscratch.nn as fnn
from fromscratch.nn import swap, unswap


def tiny(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16, eps=1e-6), nn.Dropout(dropout),
                         nn.RMSNorm(16, eps=1e-5), nn.Linear(16, 4))


def conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, momentum=0.2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 6 * 6, 5))


def test_replaces_with_the_same_settings_and_parameter_objects():
    model = tiny(0.25)
    params = {n: p for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    report = swap(model)
    assert [type(m) for m in model] == [nn.Linear, fnn.LayerNorm, fnn.Dropout, fnn.RMSNorm,
                                        nn.Linear]
    assert (model[1].eps, model[2].p, model[3].eps) == (1e-6, 0.25, 1e-5)
    assert {n: p for n, p in model.named_parameters()} == params      # the same objects
    assert [r.path for r in report.replaced] == ["1", "2", "3"] and not report.refused
    x = torch.randn(5, 8)
    model.eval()(x).sum().backward()
    opt.step()                                   # the optimizer built before still works
    assert "replaced  1: torch.nn.modules.normalization.LayerNorm -> fromscratch.nn.LayerNorm" \
        in str(report)


def test_outputs_gradients_and_state_dicts_agree_with_the_original():
    torch.manual_seed(1)
    ref = tiny()
    model = copy.deepcopy(ref)
    swap(model, backend="torch")
    x = torch.randn(6, 8, dtype=torch.float32)
    y_ref, y = ref(x), model(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    dy = torch.randn_like(y)
    (y_ref * dy).sum().backward()
    (y * dy).sum().backward()
    for (n, p), (_, q) in zip(ref.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=n)
    assert list(model.state_dict()) == list(ref.state_dict())
    model.load_state_dict(ref.state_dict())
    ref.load_state_dict(model.state_dict())


def test_batch_norm_keeps_its_buffers_and_trains_identically():
    ref = conv()
    model = copy.deepcopy(ref)
    report = swap(model, backend="torch")
    assert type(model[1]) is fnn.BatchNorm2d and report.replaced[0].path == "1"
    assert model[1].running_mean is not ref[1].running_mean       # deep copies: own buffers
    for _ in range(3):
        x = torch.randn(4, 3, 8, 8)
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, ref[1].running_var)
    assert int(model[1].num_batches_tracked) == 3


class Scaled(nn.LayerNorm):
    """A subclass with its own forward: the model runs that forward."""
    def forward(self, x):
        return 2 * super().forward(x)


class Plain(nn.LayerNorm):
    """A subclass without its own forward: the same layer."""


def test_a_subclass_with_its_own_forward_is_refused_and_one_without_is_replaced():
    model = nn.Sequential(Scaled(4), Plain(4))
    report = swap(model)
    assert type(model[0]) is Scaled and type(model[1]) is fnn.LayerNorm
    (refused,) = report.refused
    assert refused.path == "0" and "with its own forward" in refused.why


def test_a_module_with_hooks_is_refused():
    model = nn.Sequential(nn.LayerNorm(4))
    model[0].register_forward_hook(lambda m, i, o: None)
    report = swap(model)
    assert type(model[0]) is nn.LayerNorm and "hooks" in report.refused[0].why


def test_verify_refuses_what_differs(monkeypatch):
    """A replacement that would change the output is left alone, with the measured why."""
    from fromscratch.nn import swapping as swap_module
    model = nn.Sequential(nn.LayerNorm(4))

    def wrong_eps(m, backend):
        return fnn.LayerNorm(4, eps=0.5)
    monkeypatch.setattr(swap_module, "_layer_norm", wrong_eps)
    report = swap_module.swap(model)
    assert type(model[0]) is nn.LayerNorm
    assert "verify: on a (3, 5, 4) torch.float32 probe in train mode the outputs differ" \
        in report.refused[0].why
    report = swap_module.swap(nn.Sequential(nn.LayerNorm(4)), verify=False)
    assert len(report.replaced) == 1


def test_kinds_pick_what_is_replaced():
    model = tiny(0.1)
    swap(model, kinds=("dropout",))
    assert [type(m) for m in model][1:4] == [nn.LayerNorm, fnn.Dropout, nn.RMSNorm]
    with pytest.raises(ValueError, match="kinds must be among"):
        swap(model, kinds=("groupnorm",))


def test_unswap_puts_back_the_originals_with_what_was_learnt():
    model = tiny()
    originals = list(model)
    swap(model)
    model[1].weight.data.add_(1.0)               # "training" on the swapped model
    model.double()                               # and a move
    assert unswap(model) == 3
    assert list(model) == originals              # the very same module objects
    assert model[1].weight.dtype == torch.float64 and float(model[1].weight[0].detach()) == 2.0
    assert unswap(model) == 0


def test_swapping_twice_replaces_nothing_more():
    model = tiny()
    swap(model)
    assert swap(model).replaced == []


class BatchNormAct2d(nn.BatchNorm2d):
    """As timm's: a BatchNorm2d subclass whose forward adds an activation."""
    def forward(self, x):
        return torch.relu(super().forward(x))


def test_a_batch_norm_with_a_fused_activation_is_refused():
    model = nn.Sequential(BatchNormAct2d(4), nn.BatchNorm2d(4))
    report = swap(model)
    assert type(model[0]) is BatchNormAct2d and type(model[1]) is fnn.BatchNorm2d
    assert "BatchNormAct2d.forward" in report.refused[0].why


def test_sync_batch_norm_keeps_its_layout_and_group():
    """torch's SyncBatchNorm takes (N, C, ...) of any rank; outside torch.distributed it is
    BatchNorm, and so is the replacement."""
    from fromscratch.nn.sync_batch_norm import ChannelsFirstSyncBatchNorm
    torch.manual_seed(0)
    ref = nn.Sequential(nn.SyncBatchNorm(5, momentum=0.3))
    model = copy.deepcopy(ref)
    report = swap(model)
    assert type(model[0]) is ChannelsFirstSyncBatchNorm and not report.refused
    assert model[0].process_group is None and model[0].momentum == 0.3
    for shape in ((4, 5), (4, 5, 3), (2, 5, 3, 3)):
        x = torch.randn(shape)
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[0].running_var, ref[0].running_var)
