"""The notebook's MLP on y = x^3 + noise: the task behind ``fromscratch train`` and the
cubic demo."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """The notebook's MLP: n_input -> n_hidden -> n_hidden -> n_output, ReLU between."""

    def __init__(self, n_input: int, n_hidden: int, n_output: int):
        super().__init__()
        self.dense1 = nn.Linear(n_input, n_hidden)
        self.dense2 = nn.Linear(n_hidden, n_hidden)
        self.out = nn.Linear(n_hidden, n_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.dense2(F.relu(self.dense1(x)))))


def cubic(seed: int, n: int = 100, noise: float = 0.1,
          dtype: torch.dtype = torch.float32) -> tuple[Net, torch.Tensor, torch.Tensor]:
    """Model and data in the notebook's order: seed, ``Net(1, 20, 1)``, then
    x = 100 points on [-1, 1], y = x^3 + 0.1 * randn. float64 casts the float32 draws."""
    torch.manual_seed(seed)
    model = Net(1, 20, 1)
    x = torch.linspace(-1, 1, n).unsqueeze(1)
    y = x.pow(3) + noise * torch.randn(x.size())
    return model.to(dtype), x.to(dtype), y.to(dtype)


def mse_sum(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Squared error as (sum over items, number of items): what ``fit`` wants."""
    return F.mse_loss(output, target, reduction="sum"), target.numel()
