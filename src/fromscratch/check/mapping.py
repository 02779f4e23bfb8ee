"""Which of a person's tensors plays which role in the reference.

People name them ``weight``/``bias``, ``gamma``/``beta`` (or ``betta``), ``g``/``b``,
``a_2``/``b_2``, ``scale``/``shift``; BatchNorm's statistics ``running_mean``,
``moving_var``... The mapping goes by name first, then by shape (a vector of the hidden
size) and initial value (a scale starts at ones, a shift and a running mean at zeros, a
running variance at ones). Tensors are found wherever they live: parameters, buffers, and
plain tensor attributes (which the checker then reports).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import modulelike

WEIGHT_NAMES = {"weight", "gamma", "g", "scale", "alpha", "w", "a_2", "a", "gain", "ln_weight",
                "norm_weight"}
BIAS_NAMES = {"bias", "beta", "betta", "b", "shift", "offset", "b_2", "ln_bias", "norm_bias"}


@dataclass
class Slot:
    path: str      # "gamma", "ln.weight": attribute path from the module
    kind: str      # "parameter", "buffer", "plain", or "listed" (a plain class's parameters())
    offset: float = 0.0   # the layer scales by (offset + tensor): Gemma's 1 + weight


@dataclass
class Mapping:
    slots: dict[str, Slot] = field(default_factory=dict)   # role -> slot
    unmapped: list[str] = field(default_factory=list)

    def get(self, role: str) -> Slot | None:
        return self.slots.get(role)

    def describe(self) -> list[str]:
        lines = [f"{s.path} -> {role}" + ("" if s.kind == "parameter" or role.startswith("run")
                                          and s.kind == "buffer" else f" ({s.kind} tensor)")
                 for role, s in self.slots.items()]
        return lines + [f"{p}: not used by the reference" for p in self.unmapped]


def tensors(module: Any) -> dict[str, Slot]:
    """Every tensor the module holds, by attribute path, with how it is held. A plain class
    (not an nn.Module) holds tensor attributes; those its parameters() returns are "listed"."""
    found: dict[str, Slot] = {}
    if not modulelike.is_module(module):
        listed = {id(p) for p in modulelike.listed_parameters(module)}
        for k, v in modulelike.tensor_attributes(module).items():
            if not k.startswith("_"):
                found[k] = Slot(k, "listed" if id(v) in listed else "plain")
        return found
    for prefix, m in module.named_modules():
        pre = prefix + "." if prefix else ""
        for k, v in m._parameters.items():
            if v is not None:
                found[pre + k] = Slot(pre + k, "parameter")
        for k, v in m._buffers.items():
            if v is not None:
                found[pre + k] = Slot(pre + k, "buffer")
        for k, v in vars(m).items():
            if isinstance(v, torch.Tensor) and not k.startswith("_"):
                found.setdefault(pre + k, Slot(pre + k, "plain"))
    return found


def get(module: Any, path: str) -> torch.Tensor:
    obj = module
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def read(module: Any, slot: Slot) -> torch.Tensor:
    """The value the layer uses: the tensor, plus the offset of its convention."""
    t = get(module, slot.path)
    return t + slot.offset if slot.offset else t


def assign(module: Any, slot: Slot, value: torch.Tensor) -> None:
    """Make the layer use ``value`` for ``slot``: written into its tensor (same storage, its
    own dtype and shape), less the offset of its convention (Gemma stores weight - 1)."""
    t = get(module, slot.path)
    with torch.no_grad():
        t.copy_((value - slot.offset).reshape(t.shape).to(t.dtype))


def _role_by_name(path: str, kind: str) -> str | None:
    name = path.rsplit(".", 1)[-1].lower()
    if kind in ("parameter", "plain", "listed"):
        if name in WEIGHT_NAMES:
            return "weight"
        if name in BIAS_NAMES:
            return "bias"
    if kind not in ("parameter", "listed") or "run" in name or "moving" in name:
        moving = any(w in name for w in ("run", "moving", "ema", "avg", "average", "global"))
        if moving and "mean" in name or name in ("mu", "mean"):
            return "running_mean"
        if moving and "var" in name or name in ("var", "sigma2"):
            return "running_var"
    return None


def map_tensors(module: Any, size: int, roles: tuple[str, ...],
                overrides: dict[str, str] | None = None) -> Mapping:
    """Map the module's size-``size`` vectors to ``roles`` (weight, bias, running_mean, ...)."""
    found = tensors(module)
    vectors = {p: s for p, s in found.items() if get(module, p).numel() == size
               and get(module, p).is_floating_point()}
    mapping = Mapping()
    for role, path in (overrides or {}).items():
        if path not in found:
            raise KeyError(f"--param {role}={path}: the module has no tensor {path!r}; it has "
                           f"{', '.join(found) or 'none'}")
        mapping.slots[role] = found[path]
    taken = {s.path for s in mapping.slots.values()}
    for p, s in vectors.items():
        role = _role_by_name(p, s.kind)
        if role in roles and role not in mapping.slots and p not in taken:
            mapping.slots[role] = s
            taken.add(p)
    # by initial value: a scale and a running variance start at ones, the rest at zeros
    for p, s in vectors.items():
        if p in taken:
            continue
        t = get(module, p)
        trainable = t.requires_grad
        t = t.detach()
        candidates = (("weight", "bias") if trainable or s.kind in ("plain", "listed")
                      else ()) + \
            (("running_var", "running_mean") if not trainable else ())
        ones, zeros = bool(torch.all(t == 1)), bool(torch.all(t == 0))
        for role in candidates:
            want_ones = role in ("weight", "running_var")
            if role in roles and role not in mapping.slots and (ones if want_ones else zeros):
                mapping.slots[role] = s
                taken.add(p)
                break
    mapping.unmapped = [p for p, s in vectors.items() if p not in taken and s.kind == "parameter"]
    order = [r for r in roles if r in mapping.slots]
    mapping.slots = {r: mapping.slots[r] for r in order}
    return mapping
