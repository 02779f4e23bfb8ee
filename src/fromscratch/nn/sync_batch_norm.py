r"""BatchNorm across processes: statistics and gradients of the batch all ranks hold together.

Forward. Each rank has its rows x_r (n_r of them, possibly none). It computes its own
(n_r, mean_r, M2_r), all ranks all-gather them in float64, and every rank combines them
with Chan et al.'s formula (``ops.batch_norm.combine_moments``):

    n = sum n_r     mu = sum n_r mu_r / n     M2 = sum M2_r + sum n_r (mu_r - mu)^2

then normalises its rows with mu and var = M2 / n. That equals BatchNorm on the
concatenation of all ranks' rows, without ever gathering the rows.

Backward. dx needs the two column sums over *all* rows (``ops.batch_norm.dx_from_sums``):

    dx = w r (dy - sum(dy) / n - xhat sum(dy xhat) / n)

so the two sums are all-reduced (one collective). dweight and dbias are returned as this
rank's own sums; DistributedDataParallel then averages parameter gradients over ranks as
it does for every other layer.

Running statistics use the global n (the stored variance is M2 / (n - 1)). Unlike
``torch.nn.SyncBatchNorm`` this runs on CPU tensors with the gloo backend.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from .. import _checks as check
from ..ops import batch_norm as bn
from ..autograd._dtypes import cast, down, own_dtypes, up
from .batch_norm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d


def _world(group: Any) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class SyncBatchNormFn(torch.autograd.Function):
    """x is this rank's (M, C) rows. Returns (y, mean, var, n); mean, var (float64) and
    the row count n are those of all ranks together."""

    @staticmethod
    @own_dtypes
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, eps: float, group: Any):
        xc = up(x)
        c = x.shape[-1]
        local = torch.zeros(1 + 2 * c, dtype=torch.float64, device=x.device)
        if x.shape[0] > 0:                    # an empty rank sends (0, 0, 0): no weight
            mean, m2 = bn.moments(xc)
            local[0] = x.shape[0]
            local[1:1 + c] = mean
            local[1 + c:] = m2
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, local, group=group)
        stacked = torch.stack(parts)
        n, mean, m2 = bn.combine_moments(stacked[:, 0], stacked[:, 1:1 + c], stacked[:, 1 + c:])
        count = float(n)
        if count <= 1:
            raise ValueError(f"SyncBatchNorm: expected more than 1 value per channel when "
                             f"training, got {count:.0f} over {len(parts)} processes")
        var = m2 / count
        y, cache, _, _ = bn.forward(xc, up(weight), up(bias), eps, mean.to(xc.dtype),
                                    var.to(xc.dtype), batch_stats=True)
        ctx.save_for_backward(weight, cache.x, cache.mean, cache.rstd)
        ctx.has_bias, ctx.count, ctx.group, ctx.x_dtype = bias is not None, count, group, x.dtype
        ctx.mark_non_differentiable(mean, var, n)
        return cast(y, x.dtype), mean, var, n

    @staticmethod
    @once_differentiable
    @own_dtypes
    def backward(ctx: Any, dy: torch.Tensor, *_unused: Any):
        weight, xc, mean, rstd = ctx.saved_tensors
        cache = bn.Cache(xc, mean, rstd, up(weight), ctx.has_bias, True)
        dyc = up(dy)
        sum_dy, sum_dy_xhat = bn.sums(dyc, cache)
        both = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(both, group=ctx.group)
        c = sum_dy.shape[0]
        dx = bn.dx_from_sums(dyc, cache, both[:c], both[c:], ctx.count)
        dw = down(sum_dy_xhat, weight)
        db = down(sum_dy, weight) if ctx.has_bias else None
        return dx.to(ctx.x_dtype), dw, db, None, None


class SyncBatchNorm(BatchNorm):
    """``BatchNorm`` whose training statistics span every process of ``process_group``
    (default: the whole world). Outside torch.distributed, in eval, or with one process
    it is exactly ``BatchNorm`` (other keyword arguments go to it). Channels-last like
    BatchNorm (``SyncBatchNorm1d/2d/3d`` below take torch's channels-first layouts); CPU
    (gloo) and GPU (NCCL)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Any = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, **kwargs: Any):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype, **kwargs)
        self.process_group = process_group

    def _syncing(self) -> bool:
        return self.training and _world(self.process_group) > 1

    def _check_input(self, input: torch.Tensor, training: bool) -> None:
        if not (training and self._syncing()):
            return super()._check_input(input, training)
        name = type(self).__name__
        check.floating(name, input)
        # local shape only: a rank may hold one row or none; the global count is checked
        super()._check_input(input, False)
        if self.eps <= 0:
            raise ValueError(f"{name}: eps must be > 0 in training (var may be 0), got {self.eps}")

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if not self._syncing():
            return super()._normalise(x)
        momentum = self._momentum()
        y, mean, var, n = SyncBatchNormFn.apply(x.reshape(-1, self.num_features), self.weight,
                                             self.bias, float(self.eps), self.process_group)
        if self.track_running_stats:
            with torch.no_grad():
                bn.update_running_(self.running_mean, self.running_var,
                                   mean.to(self.running_mean.dtype),
                                   var.to(self.running_var.dtype), float(n), momentum)
        return y.reshape(x.shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", process_group={self.process_group}"
                                       if self.process_group is not None else "")

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module,
                               process_group: Any = None) -> torch.nn.Module:
        """Every ``fromscratch.nn.BatchNorm`` in ``module`` replaced by a SyncBatchNorm
        sharing its parameters and buffers (as ``torch.nn.SyncBatchNorm``'s helper), of the
        same layout: a ``BatchNorm2d`` becomes a ``SyncBatchNorm2d`` and still takes
        (N, C, H, W). torch's own BatchNorm1d/2d/3d are left alone."""
        out = module
        if isinstance(module, BatchNorm) and not isinstance(module, SyncBatchNorm):
            layout = module._channels_first
            sync = cls if cls._channels_first == layout else _SYNC_OF_LAYOUT[layout]
            out = sync(module.num_features, module.eps, module.momentum, module.affine,
                       module.track_running_stats, process_group)
            out.weight, out.bias = module.weight, module.bias
            out.backend = getattr(module, "backend", "auto")
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out


class SyncBatchNorm1d(SyncBatchNorm, BatchNorm1d):
    """SyncBatchNorm on ``BatchNorm1d``'s (N, C) or (N, C, L): what
    ``convert_sync_batchnorm`` makes of a ``BatchNorm1d``."""


class SyncBatchNorm2d(SyncBatchNorm, BatchNorm2d):
    """SyncBatchNorm on ``BatchNorm2d``'s (N, C, H, W)."""


class SyncBatchNorm3d(SyncBatchNorm, BatchNorm3d):
    """SyncBatchNorm on ``BatchNorm3d``'s (N, C, D, H, W)."""


class ChannelsFirstSyncBatchNorm(SyncBatchNorm):
    """``torch.nn.SyncBatchNorm``'s layout: (N, C, ...) of any rank from 2 to 5, channels at
    dim 1. What ``fromscratch.nn.swap`` puts in place of a torch SyncBatchNorm."""
    _channels_first = (2, 3, 4, 5)


_SYNC_OF_LAYOUT = {c._channels_first: c for c in (SyncBatchNorm, SyncBatchNorm1d,
                                                  SyncBatchNorm2d, SyncBatchNorm3d,
                                                  ChannelsFirstSyncBatchNorm)}
