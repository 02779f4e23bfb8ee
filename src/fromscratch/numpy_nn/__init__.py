"""The NumPy engine: networks trained by backpropagation written out by hand.

Every module has ``forward(x)``, ``backward(dout) -> dx``, dicts ``params`` and ``grads``
keyed like torch, and ``train()`` / ``eval()``; the formulas are in ``fromscratch.ops``::

    from fromscratch import numpy_nn as nn
    model = nn.Sequential(nn.Linear(1, 25), nn.Sigmoid(), nn.Linear(25, 1))
    loss_fn = nn.MSELoss()
    opt = nn.SGD(model, lr=0.3)
    for epoch in range(4000):
        pred = model.forward(x)
        loss = loss_fn.forward(pred, y)
        model.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
"""
from .activations import ReLU, Sigmoid, Tanh
from .dropout import Dropout
from .gradcheck import GradcheckReport, gradcheck
from .init import manual_seed
from .linear import Linear
from .losses import CrossEntropyLoss, MSELoss
from .module import Module
from .norms import BatchNorm, LayerNorm, RMSNorm
from .optim import SGD, Adam, CosineAnnealingLR, Optimizer
from .sequential import Sequential

__all__ = ["Adam", "BatchNorm", "CosineAnnealingLR", "CrossEntropyLoss", "Dropout",
           "GradcheckReport", "LayerNorm", "Linear", "MSELoss", "Module", "Optimizer", "RMSNorm",
           "ReLU", "SGD", "Sequential", "Sigmoid", "Tanh", "gradcheck", "manual_seed"]
