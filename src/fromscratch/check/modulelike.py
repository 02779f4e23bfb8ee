"""Layers that are not ``torch.nn.Module`` but are used like one.

Karpathy's makemore ``BatchNorm1d`` is a plain class: ``__call__`` runs it, a ``training``
attribute switches it, ``parameters()`` returns a list that the training loop sets
``requires_grad`` on. The checker checks such a class through those, and says what it lacks
as a module. Every place the batteries would call a module method goes through here:

    to(obj, dtype | device)   Module.to; else each tensor attribute converted by hand
    set_mode(obj, train)      Module.train; else the ``training`` attribute, or train()/eval()
    parts(obj)                Module.modules(); else [obj]
    trainable(obj)            what parameters() returns, with requires_grad set, as the
                              person's training loop does
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn


def is_module(obj: Any) -> bool:
    return isinstance(obj, nn.Module)


def usable_class(cls: type) -> bool:
    """A torch.nn.Module subclass, or a class whose instances are called (``__call__``)."""
    return issubclass(cls, nn.Module) or any("__call__" in vars(k) for k in cls.__mro__
                                             if k is not object)


def tensor_attributes(obj: Any) -> dict[str, torch.Tensor]:
    return {k: v for k, v in vars(obj).items() if isinstance(v, torch.Tensor)}


def to(obj: Any, *args: Any) -> Any:
    """``obj.to(*args)``; a plain class gets each tensor attribute converted, keeping
    ``requires_grad`` (what a person does by hand for such a class)."""
    if is_module(obj):
        return obj.to(*args)
    for k, v in tensor_attributes(obj).items():
        new = v.detach().to(*args)
        if new.is_floating_point():
            new.requires_grad_(v.requires_grad)
        setattr(obj, k, new)
    return obj


def set_mode(obj: Any, train: bool) -> None:
    if is_module(obj):
        obj.train(train)
    elif hasattr(obj, "training") and not callable(getattr(obj, "training")):
        obj.training = train
    elif callable(getattr(obj, "train" if train else "eval", None)):
        getattr(obj, "train" if train else "eval")()


def parts(obj: Any) -> Iterable[Any]:
    return obj.modules() if is_module(obj) else [obj]


def listed_parameters(obj: Any) -> list[torch.Tensor]:
    """What a plain class's ``parameters()`` returns (a list, a generator), or []."""
    method = getattr(obj, "parameters", None)
    if is_module(obj) or not callable(method):
        return []
    try:
        found = list(method())
    except Exception:                    # noqa: BLE001 - a broken parameters() lists nothing
        return []
    return [p for p in found if isinstance(p, torch.Tensor)]


def trainable(obj: Any) -> None:
    """Set requires_grad on a plain class's parameters(), as its training loop does
    (makemore: ``for p in parameters: p.requires_grad = True``)."""
    for p in listed_parameters(obj):
        if p.is_leaf and p.is_floating_point():
            p.requires_grad_(True)


def lacks(obj: Any) -> str:
    """What a plain class lacks as a module, for the report."""
    bases = ", ".join(b.__name__ for b in type(obj).__bases__)
    has = ["__call__"]
    if hasattr(obj, "training"):
        has.append("a training attribute")
    n = len(listed_parameters(obj))
    if callable(getattr(obj, "parameters", None)):
        has.append(f"parameters() returning {n} tensor{'s' if n != 1 else ''}")
    return (f"{type(obj).__name__} is a plain class (bases: {bases}) with {', '.join(has)}; "
            f"it has no state_dict() or load_state_dict(), no .to() / .cuda() / .half(), "
            f"no train() / eval() (set .training by hand), no hooks, and it is not "
            f"registered as a submodule of a model that holds it (model.parameters() and "
            f"model.state_dict() miss its tensors)")

