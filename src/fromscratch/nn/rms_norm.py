from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import _checks as check
from .. import functional as F
from ..kernels.dispatch import check_backend


class RMSNorm(nn.Module):
    """Drop-in ``torch.nn.RMSNorm`` with the hand-derived backward of ``ops.rms_norm``.

    y = x / sqrt(mean(x^2) + eps) * weight; ``eps=None`` means float32's machine epsilon
    (float64's for float64 input), as torch.
    """

    def __init__(self, normalized_shape: int | Sequence[int], eps: float | None = None,
                 elementwise_affine: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, backend: str = "auto"):
        super().__init__()
        self.backend = check_backend(backend)     # a plain attribute: not in state_dict
        self.normalized_shape = check.normalized_shape("RMSNorm", normalized_shape)
        self.eps = None if eps is None else check.epsilon("RMSNorm", eps)
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, device=device,
                                                   dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return ("{normalized_shape}, eps={eps}, "
                "elementwise_affine={elementwise_affine}".format(**self.__dict__)
                + ("" if self.backend == "auto" else f", backend={self.backend!r}"))
