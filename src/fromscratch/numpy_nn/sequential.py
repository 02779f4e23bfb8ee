from __future__ import annotations

from .module import Array, Module


class Sequential(Module):
    """Layers applied in order; the backward walks them in reverse (the chain rule):

        forward:   a_0 = x,  a_l = f_l(a_{l-1})
        backward:  dL/da_{l-1} = f_l.backward(dL/da_l)

    ``params`` and ``grads`` are views keyed as torch's state_dict ("0.weight", "2.bias").
    """

    def __init__(self, *layers: Module):
        self.training = True
        self.layers = list(layers)
        self.buffers = {}

    def forward(self, x: Array) -> Array:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dout: Array) -> Array | None:
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

    @property
    def input_grad(self) -> bool:  # type: ignore[override]
        """Whether backward returns dL/dinput: the first layer's flag."""
        return self.layers[0].input_grad if self.layers else True

    @input_grad.setter
    def input_grad(self, value: bool) -> None:
        if self.layers:
            self.layers[0].input_grad = value

    def children(self) -> list[Module]:
        return self.layers

    @property
    def params(self) -> dict[str, Array]:  # type: ignore[override]
        return {name: m.params[k] for name, m, k in self.named_slots()}

    @property
    def grads(self) -> dict[str, Array | None]:  # type: ignore[override]
        return {name: m.grads[k] for name, m, k in self.named_slots()}

    def _own_params(self) -> dict[str, Array]:
        return {}

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"
