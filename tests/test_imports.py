"""The package's imports run one way, down: nn and functional -> autograd -> ops / kernels.

Each is imported in a fresh interpreter, and what it pulled in is listed: a front-end that
imports another (functional importing nn, ops importing torch's front-ends of this package)
would make the reading order, and the import order, circular."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

# module -> the fromscratch packages it must not import
BELOW = {
    "fromscratch.ops": ("fromscratch.autograd", "fromscratch.functional", "fromscratch.nn",
                        "fromscratch.kernels"),
    **{f"fromscratch.autograd.{op}": ("fromscratch.functional", "fromscratch.nn")
       for op in ("layer_norm", "rms_norm", "batch_norm", "dropout", "compiled")},
    "fromscratch.functional": ("fromscratch.nn",),
    # a module reaches its formula through its own autograd/<op>.py, not through functional
    **{f"fromscratch.nn.{op}": ("fromscratch.functional",)
       for op in ("layer_norm", "rms_norm", "batch_norm", "dropout")},
    "fromscratch.kernels.dispatch": ("fromscratch.functional", "fromscratch.nn",
                                     "fromscratch.autograd"),
}


def imported_by(module: str) -> list[str]:
    code = (f"import sys, json; import {module}; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.startswith('fromscratch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("module", sorted(BELOW))
def test_imports_run_down(module):
    pulled = imported_by(module)
    wrong = [m for m in pulled for banned in BELOW[module]
             if m == banned or m.startswith(banned + ".")]
    assert not wrong, f"{module} imports {wrong}"


def test_a_module_reaches_its_formula_through_three_files_on_the_cpu():
    """``nn.LayerNorm(8)(x).sum().backward()`` runs code from the module's file, its
    autograd/<op>.py and its ops/<op>.py, and otherwise only the shared helpers listed here
    (the reading path the README gives)."""
    import os
    import torch
    from fromscratch import nn as fnn

    root = os.path.dirname(os.path.dirname(fnn.__file__))
    ran: set[str] = set()

    def profile(frame, event, arg):
        path = frame.f_code.co_filename
        if event == "call" and path.startswith(root):
            ran.add(os.path.relpath(path, root).replace(os.sep, "/"))

    m = fnn.LayerNorm(8)
    x = torch.randn(3, 8, requires_grad=True)
    sys.setprofile(profile)
    try:
        m(x).sum().backward()
    finally:
        sys.setprofile(None)
    path = {"nn/layer_norm.py", "autograd/layer_norm.py", "ops/layer_norm.py"}
    helpers = {"_checks.py", "autograd/_calls.py", "autograd/_dtypes.py", "autograd/_shapes.py",
               "autograd/compiled.py", "kernels/dispatch.py", "ops/_xp.py"}
    assert path <= ran, sorted(path - ran)
    assert ran <= path | helpers, sorted(ran - path - helpers)
