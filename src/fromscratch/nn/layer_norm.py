from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import _checks as check
from ..autograd.layer_norm import layer_norm
from ..kernels.dispatch import check_backend


class LayerNorm(nn.Module):
    """Drop-in ``torch.nn.LayerNorm`` with the hand-derived backward of ``ops.layer_norm``.

    y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias over the trailing ``normalized_shape``.
    """

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, backend: str = "auto"):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.backend = check_backend(backend)     # a plain attribute: not in state_dict
        self.normalized_shape = check.normalized_shape("LayerNorm", normalized_shape)
        self.eps = check.epsilon("LayerNorm", eps)
        self.elementwise_affine = elementwise_affine
        # register_parameter(name, None), not `self.bias = None`: a plain attribute would
        # hide the name from state_dict / parameters() and break the next registration
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, **kw))
            if bias:
                self.bias = nn.Parameter(torch.empty(self.normalized_shape, **kw))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps,
                          backend=self.backend)

    def extra_repr(self) -> str:
        return ("{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}, "
                "bias={use_bias}".format(**self.__dict__, use_bias=self.bias is not None)
                + ("" if self.backend == "auto" else f", backend={self.backend!r}"))
