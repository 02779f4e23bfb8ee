r"""Optimizers, with torch.optim's update rules step for step. Each holds the model and
reads ``grads`` at every ``step``; parameters are updated in place; a parameter whose
gradient is None is skipped.

SGD (torch.optim.SGD), gradient g, weight decay lambda, momentum mu, dampening tau:

    g <- g + lambda w
    b <- g                         on the first step
    b <- mu b + (1 - tau) g        afterwards
    g <- g + mu b  (nesterov)  or  g <- b
    w <- w - lr g

Adam (torch.optim.Adam, L2 weight decay), step t:

    g <- g + lambda w
    m <- beta1 m + (1 - beta1) g           v <- beta2 v + (1 - beta2) g^2
    w <- w - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
"""
from __future__ import annotations

import math

import numpy as np

from .. import _checks as check
from .module import Module


class Optimizer:
    def __init__(self, model: Module, lr: float):
        # torch.optim's checks, with the argument's name in the message: a negative lr or
        # weight_decay climbs the loss, a NaN one poisons every parameter at the first step
        self.lr = check.non_negative(type(self).__name__, "lr (the learning rate)", lr)
        self.slots = [(m, k) for _, m, k in model.named_slots()]
        if not self.slots:
            raise ValueError(f"{type(self).__name__}: the model has no parameters")
        self.state: list[dict] = [{} for _ in self.slots]

    def step(self) -> None:
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Set every gradient to None (torch's default, set_to_none=True)."""
        for m, k in self.slots:
            m.grads[k] = None


class SGD(Optimizer):
    def __init__(self, model: Module, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(model, lr)
        momentum = check.non_negative("SGD", "momentum", momentum)
        dampening = check.real("SGD", "dampening", dampening)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum requires a momentum and zero dampening")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay = check.non_negative("SGD", "weight_decay", weight_decay)
        self.nesterov = nesterov

    def step(self) -> None:
        lr, mu, wd = self.lr, self.momentum, self.weight_decay
        for (m, k), state in zip(self.slots, self.state):
            g = m.grads[k]
            if g is None:
                continue
            w = m.params[k]
            if wd:
                g = g + wd * w
            if mu:
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = np.array(g, copy=True)
                else:
                    buf *= mu
                    buf += (1.0 - self.dampening) * g
                g = g + mu * buf if self.nesterov else buf
            w -= lr * g


class Adam(Optimizer):
    def __init__(self, model: Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(model, lr)
        self.betas = _betas(betas)
        # eps < 0 lets sqrt(v) + eps reach 0: a division by zero, or a step of the wrong sign
        self.eps = check.non_negative("Adam", "eps", eps)
        self.weight_decay = check.non_negative("Adam", "weight_decay", weight_decay)

    def step(self) -> None:
        b1, b2 = self.betas
        for (m, k), state in zip(self.slots, self.state):
            g = m.grads[k]
            if g is None:
                continue
            w = m.params[k]
            if self.weight_decay:
                g = g + self.weight_decay * w
            if not state:                              # t counts this parameter's steps
                state.update(step=0, exp_avg=np.zeros_like(w), exp_avg_sq=np.zeros_like(w))
            state["step"] += 1
            t = state["step"]
            m1, v = state["exp_avg"], state["exp_avg_sq"]
            m1 *= b1
            m1 += (1.0 - b1) * g                       # m <- beta1 m + (1 - beta1) g
            v *= b2
            v += (1.0 - b2) * (g * g)                  # v <- beta2 v + (1 - beta2) g^2
            denom = np.sqrt(v)
            denom /= math.sqrt(1.0 - b2 ** t)
            denom += self.eps
            w -= (self.lr / (1.0 - b1 ** t)) * (m1 / denom)


def _betas(betas: tuple[float, float]) -> tuple[float, float]:
    """Two decay rates in [0, 1), as torch.optim.Adam: beta = 1 never forgets the first
    gradient and divides by 1 - beta^t = 0."""
    if not hasattr(betas, "__len__") or len(betas) != 2:
        raise TypeError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
    pair = tuple(check.real("Adam", f"betas[{i}]", b) for i, b in enumerate(betas))
    for i, b in enumerate(pair):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Adam: betas[{i}] must be in [0, 1), got {betas[i]}")
    return pair[0], pair[1]


class CosineAnnealingLR:
    r"""torch.optim.lr_scheduler.CosineAnnealingLR's closed form: after ``step()`` number t,

        lr_t = eta_min + (lr_0 - eta_min) (1 + cos(pi t / T_max)) / 2

    Call ``step()`` once per optimizer step, after it.
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        self.optimizer, self.T_max, self.eta_min = optimizer, T_max, eta_min
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def step(self) -> None:
        self.last_epoch += 1
        cos = math.cos(math.pi * self.last_epoch / self.T_max)
        self.optimizer.lr = self.eta_min + (self.base_lr - self.eta_min) * (1.0 + cos) / 2.0
