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
from dataclasses import dataclass
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
           "prob", "dropout", "pdrop", "p_drop")
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


@dataclass
class Signature:
    """How to call a constructor: which argument takes the size, eps, momentum, p."""
    params: dict[str, inspect.Parameter]
    size: str | None            # name of the size argument, or "0" for the first positional
    role_arg: dict[str, str]    # "eps" -> "epsilon", "p" -> "dropout_prob", ...
    keep_arg: str | None        # an argument that takes the keep probability 1 - p

    def default(self, role: str) -> Any:
        """The constructor's default for eps / momentum / p, or ``inspect._empty``."""
        if role == "p" and self.keep_arg and role not in self.role_arg:
            d = self.params[self.keep_arg].default
            return d if d is inspect.Parameter.empty else 1.0 - d
        name = self.role_arg.get(role)
        return self.params[name].default if name else inspect.Parameter.empty

    def takes(self, role: str) -> bool:
        return role in self.role_arg or (role == "p" and self.keep_arg is not None)


def signature(cls: type, needs_size: bool) -> Signature:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError) as e:
        raise LoadError(f"cannot read the signature of {cls.__name__}: {e}") from e
    params = {k: v for k, v in sig.parameters.items()
              if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)}
    role_arg = {role: next(n for n in names if n in params)
                for role, names in ROLE_NAMES.items() if any(n in params for n in names)}
    keep_arg = next((n for n in KEEP_NAMES if n in params), None)
    size = None
    if needs_size:
        size = next((n for n in SIZE_NAMES if n in params), None)
        if size is None:
            taken = set(role_arg.values()) | {keep_arg}
            first = next((n for n, v in params.items() if n not in taken), None)
            if first is None:
                raise LoadError(f"{cls.__name__}{sig} takes no argument for the hidden size")
            size = first
    return Signature(params, size, role_arg, keep_arg)


def construct(cls: type, sig: Signature, size: int | None,
              values: dict[str, float | None]) -> Any:
    """``cls(size, eps=..., ...)`` for the roles in ``values`` that the constructor takes."""
    kwargs: dict[str, Any] = {}
    if sig.size is not None:
        kwargs[sig.size] = size
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
