"""What accumulation does NOT make equal to one large batch (docs/accumulation.md):
BatchNorm's statistics are the micro-batch's, and dropout's masks come from a random
stream consumed in another order. Each is shown to differ, and to differ for that reason."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fromscratch.nn import BatchNorm
from fromscratch.train import fit

from .helpers import max_diff, params

K, MICRO, STEPS = 2, 6, 3     # equal micro-batches, no short window: nothing else differs


def data():
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(MICRO, 4, generator=g, dtype=torch.float64) * 2 + 1,
             torch.randn(MICRO, 1, generator=g, dtype=torch.float64)) for _ in range(K * STEPS)]


def model(*middle: Callable[[], nn.Module]) -> nn.Module:
    """Linear, the layers ``middle`` builds, Tanh, Linear; initialised from seed 0."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), *(f() for f in middle), nn.Tanh(),
                         nn.Linear(8, 1)).double()


def mse_sum(out, y):
    return F.mse_loss(out, y, reduction="sum"), y.numel()


def accumulated(net: nn.Module, batches) -> nn.Module:
    fit(net, batches, mse_sum, torch.optim.SGD(net.parameters(), lr=0.1), accumulation_steps=K,
        progress=False)
    return net


def large(net: nn.Module, batches) -> nn.Module:
    merged = [tuple(torch.cat(t) for t in zip(*batches[i:i + K])) for i in range(0, len(batches), K)]
    fit(net, merged, mse_sum, torch.optim.SGD(net.parameters(), lr=0.1), progress=False)
    return net


def test_the_setting_is_otherwise_exact():
    a = accumulated(model(), data())
    b = large(model(), data())
    assert max_diff(params(a), params(b)) < 1e-12


def test_batch_norm_sees_micro_batch_statistics():
    batches = data()
    a = accumulated(model(lambda: BatchNorm(8)), batches)
    b = large(model(lambda: BatchNorm(8)), batches)
    diff = max_diff({k: v for k, v in params(a).items() if "num_batches" not in k},
                    {k: v for k, v in params(b).items() if "num_batches" not in k})
    print(f"BatchNorm: accumulated vs large batch differ by {diff:.3g}")
    assert diff > 1e-4
    # running statistics are updated once per micro-batch, k times per optimizer step
    assert int(a[1].num_batches_tracked) == K * STEPS and int(b[1].num_batches_tracked) == STEPS


class GhostBatchNorm(BatchNorm):
    """BatchNorm that normalises each consecutive block of ``ghost`` rows on its own."""

    def __init__(self, n: int, ghost: int):
        super().__init__(n)
        self.ghost = ghost

    def forward(self, x):
        return torch.cat([super(GhostBatchNorm, self).forward(c) for c in x.split(self.ghost)])


def test_accumulating_through_batch_norm_is_ghost_batch_norm():
    """What accumulation computes instead: one large batch whose BatchNorm normalises each
    micro-batch with its own statistics (ghost batch normalisation), exactly."""
    batches = data()
    a = accumulated(model(lambda: BatchNorm(8)), batches)
    g = large(model(lambda: GhostBatchNorm(8, MICRO)), batches)
    weights = lambda m: {k: v for k, v in params(m).items() if "running" not in k  # noqa: E731
                         and "num_batches" not in k}
    assert max_diff(weights(a), weights(g)) < 1e-12


def two_dropouts(p: float) -> list[Callable[[], nn.Module]]:
    return [lambda: nn.Dropout(p), nn.Tanh, lambda: nn.Linear(8, 8), lambda: nn.Dropout(p)]


def test_dropout_masks_depend_on_the_grouping():
    """Same seed, same data: the masks each item gets depend on the order in which the
    random stream is consumed (layer 1 then 2 per micro-batch, or per whole batch)."""
    batches = data()
    torch.manual_seed(1)
    a = accumulated(model(*two_dropouts(0.5)), batches)
    torch.manual_seed(1)
    b = large(model(*two_dropouts(0.5)), batches)
    diff = max_diff(params(a), params(b))
    print(f"Dropout: accumulated vs large batch differ by {diff:.3g}")
    assert diff > 1e-4
    a = accumulated(model(*two_dropouts(0.0)), batches)
    b = large(model(*two_dropouts(0.0)), batches)
    assert max_diff(params(a), params(b)) < 1e-12     # p = 0: the stream is not used
