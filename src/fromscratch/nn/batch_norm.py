from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import _checks as check
from ..autograd.batch_norm import batch_norm
from ..kernels.dispatch import check_backend


class BatchNorm(nn.Module):
    """Batch normalisation, channels-last: input (N, C) or (N, ..., C), statistics over
    every dimension but the last. Parameters, buffers, state_dict keys, momentum and
    train/eval behaviour as ``torch.nn.BatchNorm1d``, so state dicts load both ways.

    Training normalises with the batch's biased variance and stores the unbiased one:
    running = (1 - momentum) running + momentum batch; ``momentum=None`` is the cumulative
    average over ``num_batches_tracked``.

    The layout is read from the shape: the last dimension must be ``num_features``. An
    (N, C, H, W) input whose dimension 1 is ``num_features`` but not its last one is
    refused with an error that names the layout and the fix (``BatchNorm2d`` below, or
    ``input.movedim(1, -1)``). An (N, C, L) input with L == C == num_features cannot be
    told apart from (N, L, C): it is taken as channels-last and its *last* dimension is
    normalised. A module that replaces ``torch.nn.BatchNorm1d`` must therefore be
    ``BatchNorm1d``, never this one.
    """

    # the input ranks of a channels-first layout (BatchNorm1d: 2 and 3); () is channels-last
    _channels_first: tuple[int, ...] = ()
    _version = 2

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, bias: bool = True, backend: str = "auto"):
        super().__init__()
        self.backend = check_backend(backend)     # a plain attribute: not in state_dict
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        name = type(self).__name__
        self.num_features = check.size(name, "num_features", num_features)
        self.eps = check.epsilon(name, eps)
        self.momentum = check.momentum(name, momentum)
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **kw))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **kw))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **kw))
            self.register_buffer("running_var", torch.ones(num_features, **kw))
            self.register_buffer("num_batches_tracked",
                                 torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def _momentum(self) -> float:
        """The weight of this batch in the running average (torch's exponential_average_factor)."""
        if not (self.training and self.track_running_stats):
            return 0.0
        # checked again here, before anything changes: it is a plain attribute that may
        # have been set since __init__, and SyncBatchNorm does not call batch_norm
        momentum = check.momentum(type(self).__name__, self.momentum)
        self.num_batches_tracked.add_(1)
        if momentum is None:                            # cumulative moving average
            return 1.0 / float(self.num_batches_tracked)
        return momentum

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input, self.training)
        if not self._channels_first or input.dim() == 2:
            return self._normalise(input)
        y = self._normalise(input.movedim(1, -1)).movedim(-1, 1)
        # as torch's: a contiguous input gives a contiguous output, a channels_last one
        # (whose movedim was already contiguous) keeps its strides
        return y.contiguous() if input.is_contiguous() else y

    def _check_input(self, input: torch.Tensor, training: bool) -> None:
        name = type(self).__name__
        if self._channels_first:
            check.batch_norm_rank(name, input.shape, self._channels_first)
        check.batch_norm_input(name, input.shape, self.num_features, training, self.eps,
                               channels_first=bool(self._channels_first))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """x checked and channels-last, (N, C) or (N, ..., C)."""
        # eval without running statistics normalises with the batch's own, as torch does
        use_batch = self.training or self.running_mean is None
        track = self.training and self.track_running_stats
        return batch_norm(x, self.running_mean if track or not use_batch else None,
                          self.running_var if track or not use_batch else None,
                          self.weight, self.bias, use_batch, self._momentum(), self.eps,
                          backend=self.backend)

    def extra_repr(self) -> str:
        return ("{num_features}, eps={eps}, momentum={momentum}, affine={affine}, "
                "bias={use_bias}, track_running_stats={track_running_stats}".format(
                    **self.__dict__, use_bias=self.bias is not None)
                + ("" if self.backend == "auto" else f", backend={self.backend!r}"))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        # state dicts from before num_batches_tracked existed (as torch's _NormBase)
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = (self.num_batches_tracked if self.num_batches_tracked is not None
                               and self.num_batches_tracked.device != torch.device("meta")
                               else torch.tensor(0, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)


class BatchNorm1d(BatchNorm):
    """``torch.nn.BatchNorm1d``'s layout, (N, C) or (N, C, L): statistics per channel over
    N (and L). The same module as ``BatchNorm`` (arguments, parameters, buffers, state_dict,
    kernels and formula), with the channels moved last for the computation and back."""

    _channels_first = (2, 3)


class BatchNorm2d(BatchNorm):
    """``torch.nn.BatchNorm2d``'s layout, (N, C, H, W): statistics per channel over N, H, W.
    ``BatchNorm`` with the channels moved last for the computation and back."""

    _channels_first = (4,)


class BatchNorm3d(BatchNorm):
    """``torch.nn.BatchNorm3d``'s layout, (N, C, D, H, W): statistics per channel over N, D,
    H, W. ``BatchNorm`` with the channels moved last for the computation and back."""

    _channels_first = (5,)
