"""Put fromscratch's layers into a model someone else wrote, in one line, and take them out.

    report = fromscratch.nn.swap(model)       # in place; torch.nn and Hugging Face norms,
    print(report)                             # BatchNorm*d and Dropout -> fromscratch.nn
    fromscratch.nn.unswap(model)              # the original modules back

What is replaced, by exact class (a subclass with its own forward is refused: its forward
is what the model runs, and it is not ours to copy):

    torch.nn.LayerNorm, RMSNorm            -> fromscratch.nn.LayerNorm, RMSNorm
    torch.nn.BatchNorm1d/2d/3d             -> fromscratch.nn.BatchNorm1d/2d/3d (channels-first)
    torch.nn.SyncBatchNorm                 -> sync_batch_norm.ChannelsFirstSyncBatchNorm
    torch.nn.Dropout                       -> fromscratch.nn.Dropout
    Hugging Face RMSNorms (LlamaRMSNorm, Qwen2RMSNorm, MistralRMSNorm, T5LayerNorm, ...:
    a class in ``transformers`` named *RMSNorm or T5LayerNorm with a ``weight`` and an
    ``eps`` or ``variance_epsilon``)       -> fromscratch.nn.RMSNorm in the matching mode

The replacement takes over the original's Parameter and buffer objects (so an optimizer
built before the swap still updates them, and state-dict keys, dtype and device stay), its
eps (Hugging Face's ``variance_epsilon``: reading ``.eps`` alone would silently take a
default), momentum, p and train/eval mode. It registers no hooks; a module that carries
hooks is refused, since a replacement would drop them.

``verify=True`` (the default) runs each original and its replacement, on copies, on a
probe input in the module's dtype (train and eval; BatchNorm in train mode updates only
the copies) and refuses any module whose output differs beyond float rounding: Gemma's
``1 + weight`` RMSNorm when no mode matches, timm's ``BatchNormAct2d`` (a fused
activation), anything else the rules above let through. Refused modules stay as they are,
and the report says why.

Dropout inside ``scaled_dot_product_attention`` (Hugging Face's attention passes
``dropout_p=self.attention_dropout``) is a function call, not a module: it cannot be
swapped, and the report lists every such attribute it finds.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from .batch_norm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from .dropout import Dropout
from .layer_norm import LayerNorm
from .rms_norm import RMSNorm
from .sync_batch_norm import ChannelsFirstSyncBatchNorm

KINDS = ("layernorm", "rmsnorm", "batchnorm", "dropout")


@dataclass
class Replaced:
    path: str
    old: str          # the original's class, qualified: "torch.nn.LayerNorm"
    new: str          # "fromscratch.nn.LayerNorm(eps=1e-05)"


@dataclass
class Refused:
    path: str
    cls: str
    why: str


@dataclass
class SwapReport:
    """What ``swap`` did: each module replaced, each refused with the reason, and notes
    (functional dropout it cannot reach)."""
    replaced: list[Replaced] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"fromscratch.nn.swap: {len(self.replaced)} replaced, "
                 f"{len(self.refused)} refused"]
        lines += [f"  replaced  {r.path or '(the model)'}: {r.old} -> {r.new}"
                  for r in self.replaced]
        lines += [f"  refused   {r.path or '(the model)'}: {r.cls}: {r.why}" for r in self.refused]
        lines += [f"  note      {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"replaced": [vars(r) for r in self.replaced],
                "refused": [vars(r) for r in self.refused], "notes": list(self.notes)}


class Refuse(Exception):
    """A module that must stay as it is; the message says why."""


# -- building a replacement ---------------------------------------------------------------

def _take_over(new: nn.Module, old: nn.Module) -> nn.Module:
    """``new`` holds ``old``'s own Parameter and buffer objects and its mode (swap: the
    replacement takes the original's; unswap: the original takes back the replacement's)."""
    for name, p in old.named_parameters(recurse=False):
        setattr(new, name, p)
    for name, b in old.named_buffers(recurse=False):
        new._buffers[name] = b
    new.train(old.training)
    return new


def _exact(module: nn.Module, base: type) -> None:
    """Refuse a subclass that has its own forward (timm's BatchNormAct2d, CLIP's LayerNorm)."""
    cls = type(module)
    if cls is not base and cls.forward is not base.forward:
        raise Refuse(f"a subclass of {base.__module__}.{base.__qualname__} with its own "
                     f"forward ({cls.__module__}.{cls.__qualname__}.forward): the model runs "
                     f"that forward, which a replacement would drop")


def _layer_norm(m: nn.LayerNorm, backend: str) -> nn.Module:
    _exact(m, nn.LayerNorm)
    new = LayerNorm(m.normalized_shape, m.eps, m.elementwise_affine,
                    bias=getattr(m, "bias", None) is not None, backend=backend)
    return _take_over(new, m)


def _rms_norm(m: nn.Module, backend: str) -> nn.Module:
    _exact(m, nn.RMSNorm)
    new = RMSNorm(m.normalized_shape, m.eps, m.elementwise_affine, backend=backend)
    return _take_over(new, m)


BATCH_NORMS: dict[type, type] = {nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d,
                                 nn.BatchNorm3d: BatchNorm3d}


def _batch_norm(m: nn.Module, backend: str) -> nn.Module:
    base = next(b for b in BATCH_NORMS if isinstance(m, b))
    _exact(m, base)
    new = BATCH_NORMS[base](m.num_features, m.eps, m.momentum, m.affine,
                            m.track_running_stats, backend=backend)
    return _take_over(new, m)


def _dropout(m: nn.Dropout, backend: str) -> nn.Module:
    _exact(m, nn.Dropout)
    return _take_over(Dropout(m.p, m.inplace, backend=backend), m)


HF_RMS_NAMES = ("RMSNorm", "T5LayerNorm")


def _is_hf_rms_norm(m: nn.Module) -> bool:
    cls = type(m)
    return (cls.__module__.startswith("transformers.") and cls.__name__.endswith(HF_RMS_NAMES)
            and isinstance(getattr(m, "weight", None), torch.Tensor)
            and m.weight.dim() == 1 and (hasattr(m, "variance_epsilon") or hasattr(m, "eps")))


def _one_input(cls: type) -> None:
    """Refuse a norm whose forward takes more than the tensor (Mamba's gated RMSNorm takes
    a gate): the replacement's forward takes one."""
    params = list(inspect.signature(cls.forward).parameters.values())[1:]
    if len(params) != 1 or params[0].kind not in (params[0].POSITIONAL_ONLY,
                                                  params[0].POSITIONAL_OR_KEYWORD):
        raise Refuse(f"its forward takes ({', '.join(str(q) for q in params)}); "
                     f"fromscratch's RMSNorm takes one tensor")


def hf_eps(m: nn.Module) -> float:
    """Hugging Face keeps eps as ``variance_epsilon`` in Llama's family, ``eps`` in others."""
    eps = getattr(m, "variance_epsilon", None)
    return float(eps if eps is not None else m.eps)


def _hf_rms_norm(m: nn.Module, backend: str) -> list[nn.Module]:
    """Candidates, most likely first: Llama's form (statistics in float32, cast back, then
    the weight) and Gemma's (1 + weight, in float32, then cast). verify keeps the first whose
    output matches; without verify the class name decides."""
    _one_input(type(m))
    n, eps = m.weight.shape[0], hf_eps(m)
    return [_take_over(RMSNorm(n, eps, backend=backend, **form), m)
            for form in hf_forms(type(m))]


def hf_forms(cls: type) -> list[dict]:
    """RMSNorm's options for a Hugging Face RMSNorm, the likelier first: Llama's form
    (``weight * x.to(input_dtype)``) and Gemma's (``(1 + weight)``, cast at the end)."""
    forms = [dict(offset=0.0, cast="normalized"), dict(offset=1.0, cast="output")]
    return forms[::-1] if "Gemma" in cls.__name__ else forms


def _converter(m: nn.Module, kinds: Iterable[str]) -> Callable | None:
    kinds = set(kinds)
    if isinstance(m, (LayerNorm, RMSNorm, BatchNorm, Dropout)):
        return None                          # ours already (patch_transformers' classes too)
    if "layernorm" in kinds and isinstance(m, nn.LayerNorm):
        return _layer_norm
    if "rmsnorm" in kinds and hasattr(nn, "RMSNorm") and isinstance(m, nn.RMSNorm):
        return _rms_norm
    if "rmsnorm" in kinds and _is_hf_rms_norm(m):
        return _hf_rms_norm
    if "batchnorm" in kinds and isinstance(m, tuple(BATCH_NORMS)):
        return _batch_norm
    if "batchnorm" in kinds and isinstance(m, nn.SyncBatchNorm):
        return _sync_batch_norm
    if "dropout" in kinds and isinstance(m, nn.Dropout):
        return _dropout
    return None


def _sync_batch_norm(m: nn.SyncBatchNorm, backend: str) -> nn.Module:
    _exact(m, nn.SyncBatchNorm)
    new = ChannelsFirstSyncBatchNorm(m.num_features, m.eps, m.momentum, m.affine,
                                     m.track_running_stats, m.process_group, backend=backend)
    return _take_over(new, m)


# -- verifying ----------------------------------------------------------------------------

def probe_input(m: nn.Module, new: nn.Module, gen: torch.Generator) -> torch.Tensor:
    """An input the module takes, in its own dtype and device, with a mean and a spread."""
    p = next(m.parameters(), None)
    b = next(m.buffers(), None)
    ref = p if p is not None else b
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    device = ref.device if ref is not None else torch.device("cpu")
    if isinstance(new, BatchNorm):
        rank = 4 if isinstance(new, (BatchNorm2d, ChannelsFirstSyncBatchNorm)) else \
            3 if isinstance(new, BatchNorm1d) else 5
        shape = (6, m.num_features) + (3,) * (rank - 2)
    elif isinstance(new, Dropout):
        shape = (4, 16)
    else:
        shape = (3, 5) + tuple(new.normalized_shape)
    x = torch.randn(shape, generator=gen, dtype=torch.float32) * 2 + 0.5
    return x.to(device=device, dtype=dtype)


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for comparing two implementations' outputs in ``dtype``: a few ulps."""
    if dtype in (torch.float16, torch.bfloat16):
        return 2e-2, 2e-2
    if dtype == torch.float32:
        return 1e-4, 1e-5
    return 1e-10, 1e-12


def _differs(m: nn.Module, new: nn.Module) -> str | None:
    """Run copies of both on a probe input, in train and eval: why they differ, or None."""
    x = probe_input(m, new, torch.Generator().manual_seed(0))
    runs = [(x, train, *tolerance(x.dtype)) for train in (True, False)
            if not (train and isinstance(new, Dropout))]   # random draws: eval (identity) only
    if isinstance(new, RMSNorm) and x.dtype == torch.float32:
        # where the weight is applied (before or after the cast) shows only in half
        # precision: the same formula gives the same bfloat16 numbers, up to one rounding
        runs.append((x.bfloat16(), False, 1e-2, 1e-2))
    for xi, train, rtol, atol in runs:
        why = _compare(m, new, xi, train, rtol, atol)
        if why is not None:
            return why
    return None


def _compare(m: nn.Module, new: nn.Module, x: torch.Tensor, train: bool, rtol: float,
             atol: float) -> str | None:
    """Copies of both, in x's dtype and the given mode, on x: why they differ, or None."""
    a = copy.deepcopy(m).to(x.dtype).train(train)
    b = copy.deepcopy(new).to(x.dtype).train(train)
    probe = f"on a {tuple(x.shape)} {x.dtype} probe in {'train' if train else 'eval'} mode"
    with torch.no_grad():
        try:
            ya, yb = a(x), b(x)
        except Exception as e:             # noqa: BLE001 - the reason is the report's
            return f"{probe}: {type(e).__name__}: {e}"
    if not isinstance(ya, torch.Tensor) or ya.shape != yb.shape or ya.dtype != yb.dtype:
        got = f"{tuple(ya.shape)} {ya.dtype}" if isinstance(ya, torch.Tensor) else \
            type(ya).__name__
        return f"{probe} the original returns {got}, the replacement {tuple(yb.shape)} {yb.dtype}"
    if not torch.allclose(ya.float(), yb.float(), rtol=rtol, atol=atol, equal_nan=True):
        d = float((ya.float() - yb.float()).abs().max())
        return f"{probe} the outputs differ by up to {d:.3g} (tolerance {rtol:g} relative)"
    return None


def _first_matching(m: nn.Module, candidates: Iterable[nn.Module]) -> int:
    """The index of the first candidate whose output matches ``m``'s (``_differs``); where
    none does, Refuse with the last one's difference."""
    why = None
    for i, candidate in enumerate(candidates):
        why = _differs(m, candidate)
        if why is None:
            return i
    raise Refuse(f"verify: {why}")


# -- the walk -----------------------------------------------------------------------------

_ORIGINALS: "weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Module]]" = \
    weakref.WeakKeyDictionary()


def _name(obj: object) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe(new: nn.Module) -> str:
    extra = new.extra_repr()
    return f"fromscratch.nn.{type(new).__name__}({extra})"


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def swap(model: nn.Module, kinds: Iterable[str] = KINDS, backend: str = "auto",
         verify: bool = True) -> SwapReport:
    """Replace ``model``'s norm and dropout modules with fromscratch's, in place.

    ``kinds``: which of "layernorm", "rmsnorm", "batchnorm", "dropout". ``backend``: passed
    to every replacement ("auto", "torch", "compile", "triton"). ``verify``: run each pair
    on a probe and refuse where the outputs differ. Returns the report; ``unswap(model)``
    puts the originals back. ``model`` itself may be a norm module only if it is not the
    root of anything: swap its parent.
    """
    kinds = tuple(kinds)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"swap: kinds must be among {KINDS}, got {sorted(unknown)}")
    report = SwapReport()
    originals = _ORIGINALS.setdefault(model, {})
    for path, m in list(model.named_modules()):
        if not path or path in originals:
            continue
        convert = _converter(m, kinds)
        if convert is None:
            continue
        try:
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
                raise Refuse("it has hooks registered; a replacement would drop them")
            candidates = convert(m, backend)
            candidates = candidates if isinstance(candidates, list) else [candidates]
            new = candidates[_first_matching(m, candidates) if verify else 0]
        except Refuse as e:
            report.refused.append(Refused(path, _name(m), str(e)))
            continue
        _set(model, path, new)
        originals[path] = m
        report.replaced.append(Replaced(path, _name(m), _describe(new)))
    report.notes += functional_dropout(model)
    return report


def unswap(model: nn.Module) -> int:
    """Put back the modules ``swap`` replaced, holding the replacements' current parameters
    and buffers (trained, moved with ``.to()``, loaded). Returns how many."""
    originals = _ORIGINALS.pop(model, {})
    for path, old in originals.items():
        _set(model, path, _take_over(old, model.get_submodule(path)))
    return len(originals)


def functional_dropout(model: nn.Module) -> list[str]:
    """Dropout a model applies as a function, which no module swap reaches: probabilities
    kept as numbers (Hugging Face's ``attention_dropout``, passed to
    scaled_dot_product_attention's ``dropout_p``), and Dropout modules whose p is read for
    that call instead of the module being called (GPT-2's ``attn_dropout`` under SDPA)."""
    numbers, read = [], []
    sdpa = getattr(getattr(model, "config", None), "_attn_implementation", None) == "sdpa"
    for path, m in model.named_modules():
        for name, value in vars(m).items():
            if "dropout" in name and isinstance(value, float) and not isinstance(m, nn.Dropout):
                numbers.append(f"{path + '.' if path else ''}{name} = {value:g}")
        if sdpa and "attn" in path.rsplit(".", 1)[-1] and isinstance(m, (nn.Dropout, Dropout)):
            read.append(path)
    notes = []
    if numbers:
        notes.append(f"attention dropout applied as a function (a number passed to "
                     f"scaled_dot_product_attention, not a module call), not swapped: "
                     f"{', '.join(numbers[:4])}{', ...' if len(numbers) > 4 else ''} "
                     f"({len(numbers)} in all)")
    if read:
        notes.append(f"with attn_implementation='sdpa' the model passes the p of "
                     f"{', '.join(read[:4])}{', ...' if len(read) > 4 else ''} to "
                     f"scaled_dot_product_attention instead of calling the module: replaced "
                     f"or not, that dropout is torch's")
    return notes


# -- patching Hugging Face's modelling modules --------------------------------------------

_PATCHED: dict[tuple[str, str], type] = {}


def _patched_class(original: type, form: dict, backend: str) -> type:
    """A fromscratch RMSNorm under the original's name and constructor, ``(hidden_size,
    eps=1e-6)``, that also answers to ``variance_epsilon``: what the modelling code and
    ``from_pretrained`` (``isinstance`` in ``_init_weights``, the ``weight`` key) expect."""
    def __init__(self, hidden_size: int, eps: float = 1e-6, **_: object) -> None:
        RMSNorm.__init__(self, hidden_size, eps, backend=backend, **form)

    namespace = {"__init__": __init__, "__module__": original.__module__,
                 "__doc__": f"fromscratch.nn.RMSNorm({form}) in place of "
                            f"{_name(original)} (fromscratch.nn.patch_transformers)",
                 "variance_epsilon": property(lambda self: self.eps)}
    return type(original.__name__, (RMSNorm,), namespace)


def patch_transformers(*model_types: str, backend: str = "auto",
                       verify: bool = True) -> SwapReport:
    """Replace the RMSNorm classes of Hugging Face's modelling modules (``"llama"`` patches
    ``transformers.models.llama.modeling_llama.LlamaRMSNorm``) before a model is built or
    loaded, so ``from_pretrained`` builds fromscratch's. Each class is checked as ``swap``
    checks a module (on an instance with a random weight) and refused where it differs or
    its forward takes more than a tensor. ``unpatch_transformers()`` restores them.

    Norms the modelling code takes from torch.nn (GPT-2's and BERT's ``nn.LayerNorm``) are
    not in those modules: use ``swap(model)`` after building the model."""
    report = SwapReport()
    for model_type in model_types:
        module = importlib.import_module(f"transformers.models.{model_type}.modeling_"
                                         f"{model_type}")
        for name, cls in list(vars(module).items()):
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)
                    and cls.__module__ == module.__name__ and name.endswith(HF_RMS_NAMES)):
                continue
            key = (module.__name__, name)
            try:
                _one_input(cls)
                form = _matching_form(cls, verify)
            except Refuse as e:
                report.refused.append(Refused(f"{module.__name__}.{name}", _name(cls), str(e)))
                continue
            setattr(module, name, _patched_class(cls, form, backend))
            _PATCHED.setdefault(key, cls)
            report.replaced.append(Replaced(f"{module.__name__}.{name}", _name(cls),
                                            f"fromscratch.nn.RMSNorm({form})"))
    return report


def _matching_form(cls: type, verify: bool) -> dict:
    """The first of ``hf_forms(cls)`` whose output matches an instance of ``cls``."""
    forms = hf_forms(cls)
    if not verify:
        return forms[0]
    torch.manual_seed(0)
    original = cls(16, eps=1e-5)
    with torch.no_grad():
        original.weight.copy_(torch.randn(16) * 0.5)
    candidates = (_take_over(RMSNorm(16, hf_eps(original), **form), original) for form in forms)
    return forms[_first_matching(original, candidates)]


def unpatch_transformers() -> int:
    """Put back every class ``patch_transformers`` replaced. Returns how many."""
    for (module_name, name), cls in _PATCHED.items():
        setattr(importlib.import_module(module_name), name, cls)
    n = len(_PATCHED)
    _PATCHED.clear()
    return n
