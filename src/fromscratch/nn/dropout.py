from __future__ import annotations

import torch
from torch import nn

from .. import _checks as check
from ..autograd.dropout import dropout
from ..kernels.dispatch import check_backend


class Dropout(nn.Module):
    """Drop-in ``torch.nn.Dropout``: in training, zero each element with probability ``p``
    and scale the kept ones by 1/(1-p), so E[y] = x; identity in eval."""

    def __init__(self, p: float = 0.5, inplace: bool = False, *, backend: str = "auto"):
        super().__init__()
        self.backend = check_backend(backend)     # a plain attribute: not in state_dict
        self.p = check.probability("Dropout", p)
        self.inplace = inplace

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return dropout(input, self.p, self.training, self.inplace, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"p={self.p}, inplace={self.inplace}"
                + ("" if self.backend == "auto" else f", backend={self.backend!r}"))
