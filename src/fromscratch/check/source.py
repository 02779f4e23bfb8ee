"""Hints read from the person's source code, used only to word a cause.

The evidence always comes from running the layer; the source only tells *why*: whether
``self.train`` (the method, always true) is tested instead of ``self.training``, whether
the class has a hand-written ``autograd.Function`` backward, and similar.
"""
from __future__ import annotations

import ast
import inspect
import textwrap
from types import ModuleType


def class_source(cls: type) -> str:
    try:
        return textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return ""


def module_source(module: ModuleType | None) -> str:
    try:
        return inspect.getsource(module) if module is not None else ""
    except (OSError, TypeError):
        return ""


def _tree(src: str) -> ast.AST | None:
    try:
        return ast.parse(src)
    except SyntaxError:
        return None


def tests_self_train(cls: type) -> bool:
    """Does the class use ``self.train`` as a value (``if self.train:``) rather than call it?"""
    tree = _tree(class_source(cls))
    if tree is None:
        return False
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return any(isinstance(n, ast.Attribute) and n.attr == "train" and id(n) not in called
               and isinstance(n.value, ast.Name) and n.value.id == "self"
               for n in ast.walk(tree))


def has_autograd_function(module: ModuleType | None) -> bool:
    """Does the file define a torch.autograd.Function (a hand-written backward)?"""
    tree = _tree(module_source(module))
    if tree is None:
        return False
    for n in ast.walk(tree):
        if isinstance(n, ast.ClassDef):
            for b in n.bases:
                if (isinstance(b, ast.Attribute) and b.attr == "Function") or \
                        (isinstance(b, ast.Name) and b.id == "Function"):
                    return True
    return False


def mentions(cls: type, *words: str) -> bool:
    src = class_source(cls)
    return any(w in src for w in words)


def global_reads(cls: type, names: tuple[str, ...]) -> dict[str, int]:
    """Names from ``names`` that a method of the class reads without defining them: not an
    argument, not assigned in that method, so Python takes the module's global (fastbook's
    Dropout: ``bernoulli_(1-p)`` where ``self.p`` was meant). name -> line in the class."""
    tree = _tree(class_source(cls))
    if tree is None:
        return {}
    found: dict[str, int] = {}
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.Lambda)):
            continue
        a = fn.args
        local = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
        local |= {x.arg for x in (a.vararg, a.kwarg) if x is not None}
        body = list(ast.walk(fn))
        local |= {n.id for n in body if isinstance(n, ast.Name) and
                  isinstance(n.ctx, (ast.Store, ast.Del))}
        for n in body:
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in names \
                    and n.id not in local:
                found.setdefault(n.id, n.lineno)
    return found
