"""The base class: a layer that knows its forward and its backward.

A module keeps what its backward needs from the last ``forward`` (the op's cache), and
``backward(dout)`` returns dL/dinput while *adding* dL/dparameter into ``grads``, as torch
adds into ``.grad``: two backward passes without ``zero_grad`` in between sum their
gradients. ``zero_grad`` sets every gradient to None (torch's ``set_to_none=True``).

    params   {"weight": W, "bias": b}      arrays, updated in place by the optimizers
    grads    {"weight": dW or None, ...}   same keys
    buffers  {"running_mean": ..., ...}    state that is not trained (BatchNorm)
"""
from __future__ import annotations

import copy
from typing import Any, Iterator

import numpy as np

Array = np.ndarray


class BackwardBeforeForward(RuntimeError, AttributeError):
    """``backward`` with no ``forward`` before it: there is no cache to differentiate. An
    AttributeError too, so that ``hasattr(module, "_cache")`` stays False."""


class _ForwardFirst:
    """``Module._cache`` until ``forward`` stores the instance's own, which then shadows it
    (a descriptor without ``__set__`` yields to the instance's dict): reading it, as every
    ``backward`` does, says what to do instead of "no attribute '_cache'"."""

    def __get__(self, module: Module | None, owner: type | None = None) -> Any:
        if module is None:
            return self
        raise BackwardBeforeForward(f"{type(module).__name__}: backward() called before "
                                    "forward(); call forward(x) first, it keeps what "
                                    "backward needs")


class Module:
    training: bool
    _cache: Any = _ForwardFirst()
    # False on a first layer whose input is data: its backward may then skip dL/dinput
    # and return None (Linear does; torch skips it for inputs that do not require grad)
    input_grad: bool = True

    def __init__(self) -> None:
        self.training = True
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array | None] = {}
        self.buffers: dict[str, Array] = {}

    # -- the two passes -------------------------------------------------------------------
    def forward(self, x: Array) -> Array:
        raise NotImplementedError

    def backward(self, dout: Array) -> Array:
        """dL/dinput from dL/doutput; adds dL/dparameter into ``grads``."""
        raise NotImplementedError

    def __call__(self, x: Array) -> Array:
        return self.forward(x)

    def _add_param(self, name: str, value: Array) -> None:
        self.params[name] = value
        self.grads[name] = None

    def _accumulate(self, name: str, g: Array) -> None:
        """grads[name] += g (g is a fresh array from ops/, so it may be kept as is)."""
        old = self.grads[name]
        if old is None:
            self.grads[name] = g
        else:
            old += g

    # -- the module tree ------------------------------------------------------------------
    def children(self) -> list[Module]:
        return []

    def _own_params(self) -> dict[str, Array]:
        """Parameters of this module itself, not of its children (containers: none)."""
        return self.params

    def named_slots(self, prefix: str = "") -> Iterator[tuple[str, Module, str]]:
        """(qualified name as in torch's state_dict, owning module, key) per parameter."""
        for key in self._own_params():
            yield prefix + key, self, key
        for i, child in enumerate(self.children()):
            yield from child.named_slots(f"{prefix}{i}.")

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Module, str]]:
        for key in self.buffers:
            yield prefix + key, self, key
        for i, child in enumerate(self.children()):
            yield from child.named_buffers(f"{prefix}{i}.")

    def _named_state(self, prefix: str = "") -> Iterator[tuple[str, dict[str, Array], str]]:
        """(name, dict, key) for parameters then buffers, module by module: torch's order."""
        for key in self._own_params():
            yield prefix + key, self.params, key
        for key in self.buffers:
            yield prefix + key, self.buffers, key
        for i, child in enumerate(self.children()):
            yield from child._named_state(f"{prefix}{i}.")

    def modules(self) -> Iterator[Module]:
        yield self
        for child in self.children():
            yield from child.modules()

    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for _, m, key in self.named_slots():
            m.grads[key] = None

    def num_parameters(self) -> int:
        return sum(m.params[k].size for _, m, k in self.named_slots())

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Array]:
        """Copies of parameters and buffers under torch's keys and in torch's order
        ("0.weight", "0.bias", "1.running_mean", ...)."""
        return {name: np.array(store[k]) for name, store, k in self._named_state()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy values in place (NumPy arrays or torch tensors, e.g. a torch state_dict)."""
        slots = {name: (store, k) for name, store, k in self._named_state()}
        if strict:
            missing = sorted(set(slots) - set(state))
            unexpected = sorted(set(state) - set(slots))
            if missing or unexpected:
                raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys "
                               f"{unexpected}")
        for name, value in state.items():
            if name not in slots:
                continue
            store, key = slots[name]
            value = _to_numpy(value)
            if value.shape != store[key].shape:
                raise ValueError(f"load_state_dict: {name} has shape {value.shape}, expected "
                                 f"{store[key].shape}")
            store[key][...] = value

    def to(self, dtype: Any) -> Module:
        """Cast every floating parameter and buffer to ``dtype``; gradients are dropped."""
        dtype = np.dtype(dtype)
        for _, m, k in self.named_slots():
            m.params[k] = m.params[k].astype(dtype)
            m.grads[k] = None
        for _, m, k in self.named_buffers():
            if np.issubdtype(m.buffers[k].dtype, np.floating):
                m.buffers[k] = m.buffers[k].astype(dtype)
        return self

    def copy(self) -> Module:
        return copy.deepcopy(self)

    def generators(self) -> list[np.random.Generator]:
        """The random generators in this tree (Dropout's), for reproducible re-evaluation."""
        return [m.rng for m in self.modules() if isinstance(getattr(m, "rng", None),
                                                            np.random.Generator)]

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def _to_numpy(value: Any) -> Array:
    if hasattr(value, "detach"):                       # torch.Tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)
