"""Load a person's class from ``FILE.py:ClassName`` and construct it as people write it.

The file is imported under a module name other than ``"__main__"``, so its
``if __name__ == "__main__":`` block does not run. The constructor is called by reading its
signature: the hidden size goes to the argument that takes it (``hidden_size``,
``normalized_shape``, ``num_features``, ... or the first required one), and eps, momentum or
p go where the constructor takes them.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import itertools
import os
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from . import guard
from .errors import LoadError

SIZE_NAMES = ("hidden_size", "normalized_shape", "num_features", "dim", "d_model", "features",
              "size", "hidden_dim", "hidden", "n_embd", "embed_dim", "emb_dim", "model_dim",
              "channels", "num_channels", "n_features", "in_features", "ndim", "d", "n")
EPS_NAMES = ("eps", "epsilon", "variance_epsilon", "norm_eps", "layer_norm_eps")
MOMENTUM_NAMES = ("momentum", "bn_momentum")
P_NAMES = ("p", "dropout_prob", "drop_prob", "dropout_p", "dropout_rate", "drop_rate", "rate",
           "prob", "dropout", "pdrop", "p_drop", "dropprob", "drop_p", "dropout_ratio",
           "p_dropout", "dropout_probability")
KEEP_NAMES = ("keep_prob", "keep_rate", "keep_p")        # the complement: 1 - p
ROLE_NAMES = {"eps": EPS_NAMES, "momentum": MOMENTUM_NAMES, "p": P_NAMES}

_counter = itertools.count()


def parse_target(target: str) -> tuple[str, str]:
    path, sep, name = target.rpartition(":")
    if not sep or not path or not name:
        raise LoadError(f"expected FILE.py:ClassName, got {target!r}")
    return path, name


def import_file(path: str) -> ModuleType:
    """Import ``path`` as a fresh module whose ``__name__`` is not ``"__main__"``."""
    if not os.path.isfile(path):
        raise LoadError(f"no such file: {path}")
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"_fromscratch_check_{''.join(c if c.isalnum() else '_' for c in stem)}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, os.path.abspath(path))
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module                      # inspect.getsource needs it
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)                      # the file's own sibling imports
    try:
        with quiet(), guard.running(f"importing {os.path.basename(path)}"):
            spec.loader.exec_module(module)
    except BaseException as e:                      # a timeout or an exit, too
        del sys.modules[name]
        if isinstance(e, LoadError) or not isinstance(e, Exception):
            raise                                   # it has its own message
        raise LoadError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    finally:
        if folder in sys.path:                      # (the file may have removed it)
            sys.path.remove(folder)
    return module


def load_object(target: str) -> tuple[Any, ModuleType]:
    """``FILE.py:Name`` -> (the object, the imported module)."""
    path, name = parse_target(target)
    module = import_file(path)
    if not hasattr(module, name):
        classes = sorted(k for k, v in vars(module).items()
                         if inspect.isclass(v) and v.__module__ == module.__name__)
        raise LoadError(f"{path} has no {name!r}; it defines: {', '.join(classes) or 'no classes'}")
    return getattr(module, name), module


@contextlib.contextmanager
def quiet():
    """Swallow what the person's code prints while it is being checked."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


#: required arguments that are on/off switches: True builds the layer people mean
FLAG_NAMES = ("bias", "affine", "elementwise_affine", "use_bias", "learnable", "trainable",
              "center", "scale", "batch_first", "track_running_stats")
#: required integer arguments that describe the input's rank: 2 is (N, C), 4 is (N, C, H, W)
RANK_NAMES = ("num_dims", "n_dims", "ndims", "input_dims", "rank", "dims")


@dataclass
class Signature:
    """How to call a constructor: which argument takes the size, eps, momentum, p, and a
    value for each other required argument."""
    params: dict[str, inspect.Parameter]
    size: str | None            # name of the size argument
    role_arg: dict[str, str]    # "eps" -> "epsilon", "p" -> "dropout_prob", ...
    keep_arg: str | None        # an argument that takes the keep probability 1 - p
    fixed: dict[str, Any] = field(default_factory=dict)     # other required arguments
    forward_arg: dict[str, str] = field(default_factory=dict)   # "p" -> forward's "dropout"
    forward_default: dict[str, Any] = field(default_factory=dict)
    choices: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)
    hidden_by: str | None = None    # a metaclass whose __call__ hides the constructor's

    def default(self, role: str) -> Any:
        """The constructor's (or forward's) default for eps / momentum / p, or ``empty``."""
        if role == "p" and self.keep_arg and role not in self.role_arg:
            d = self.params[self.keep_arg].default
            return d if d is inspect.Parameter.empty else 1.0 - d
        name = self.role_arg.get(role)
        if name:
            return self.params[name].default
        return self.forward_default.get(role, inspect.Parameter.empty)

    def takes(self, role: str) -> bool:
        return role in self.role_arg or role in self.forward_arg or \
            (role == "p" and self.keep_arg is not None)

    def choose(self, size: str | None, fixed: dict[str, Any]) -> None:
        self.size, self.fixed = size, dict(fixed)


def constructor_signature(cls: type) -> tuple[inspect.Signature, str | None]:
    """The constructor's signature. A metaclass with its own ``__call__`` (fastai's
    ``Module``: ``PrePostInitMeta``) shows ``(*args, **kwargs)``; then ``__init__``'s own
    signature, without self, is what the class takes."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError) as e:
        raise LoadError(f"cannot read the signature of {cls.__name__}: {e}") from e
    only_var = all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values())
    meta = type(cls)
    if only_var and sig.parameters and meta is not type and "__call__" in vars(meta) \
            and cls.__init__ is not object.__init__:
        init = inspect.signature(cls.__init__)
        return init.replace(parameters=list(init.parameters.values())[1:]), meta.__name__
    return sig, None


def _candidates(name: str, param: inspect.Parameter) -> list[Any] | None:
    """Values to try for a required argument the checker has no setting for, or None."""
    ann = param.annotation
    text = (ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))).lower()
    if text == "bool" or name.lower() in FLAG_NAMES:
        return [True, False]
    if name.lower() in RANK_NAMES or name.lower().endswith("_dims"):
        return [2, 4, 3]
    return None


def signature(cls: type, needs_size: bool, forward_roles: tuple[str, ...] = ()) -> Signature:
    """Read the constructor: the size argument, where eps / momentum / p go, and values to
    try for other required arguments (``choices``, most plausible first).

    The size goes to a *required* argument first (ESPnet's ``LayerNorm(nout, dim=-1)`` and
    litgpt's ``RMSNorm(size, dim=-1)`` have a ``dim`` that is an axis, with a default):
    a required one named like a size, else the first required one; only then one named
    like a size whose default is a positive int. ``forward_roles``: settings that may be
    forward's arguments instead (AWD-LSTM's ``LockedDropout.forward(x, dropout=0.5)``).
    """
    sig, hidden_by = constructor_signature(cls)
    params = {k: v for k, v in sig.parameters.items()
              if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)}
    role_arg = {role: next(n for n in names if n in params)
                for role, names in ROLE_NAMES.items() if any(n in params for n in names)}
    keep_arg = next((n for n in KEEP_NAMES if n in params), None)
    taken = set(role_arg.values()) | {keep_arg}
    required = [n for n, v in params.items() if v.default is inspect.Parameter.empty
                and n not in taken]
    sizes: list[str | None] = [None]
    if needs_size:
        named = [n for n in SIZE_NAMES if n in required]
        first = [n for n in required if _candidates(n, params[n]) is None]
        defaulted = [n for n in SIZE_NAMES if n in params and n not in required
                     and type(params[n].default) is int and params[n].default > 0]
        sizes = list(dict.fromkeys(named + first[:1] + defaulted)) or [None]
    choices: list[tuple[str | None, dict[str, Any]]] = []
    for size in sizes:
        rest = [n for n in required if n != size]
        values = [_candidates(n, params[n]) or [inspect.Parameter.empty] for n in rest]
        for combo in itertools.islice(itertools.product(*values), 12):
            choices.append((size, dict(zip(rest, combo))))
    out = Signature(params, None, role_arg, keep_arg, hidden_by=hidden_by)
    out.choices = choices
    out.choose(*choices[0])
    forward = getattr(cls, "forward", None)
    if forward_roles and callable(forward):
        try:
            fparams = list(inspect.signature(forward).parameters.values())[2:]  # self, x
        except (TypeError, ValueError):
            fparams = []
        for role in forward_roles:
            if role in role_arg or (role == "p" and keep_arg):
                continue
            hit = next((q for q in fparams if q.name in ROLE_NAMES[role]), None)
            if hit is not None:
                out.forward_arg[role] = hit.name
                out.forward_default[role] = hit.default
    return out


def construct(cls: type, sig: Signature, size: int | None,
              values: dict[str, float | None]) -> Any:
    """``cls(size, eps=..., ...)`` for the roles in ``values`` that the constructor takes."""
    kwargs: dict[str, Any] = {}
    if sig.size is not None:
        kwargs[sig.size] = size
    kwargs.update({k: v for k, v in sig.fixed.items() if v is not inspect.Parameter.empty})
    for role, value in values.items():
        if role in sig.role_arg:
            kwargs[sig.role_arg[role]] = value
        elif role == "p" and sig.keep_arg:
            kwargs[sig.keep_arg] = 1.0 - value
    missing = [n for n, v in sig.params.items()
               if v.default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        raise LoadError(f"cannot construct {cls.__name__}: no value for required "
                        f"argument(s) {', '.join(missing)}")
    call = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        with quiet(), guard.running(f"constructing {call}"):
            return cls(**kwargs)
    except LoadError:                               # an exit, without a session
        raise
    except Exception as e:
        raise LoadError(f"{call} failed: {type(e).__name__}: {e}") from e
