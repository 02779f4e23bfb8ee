"""The package's imports run one way, down: nn -> functional -> autograd -> ops / kernels.

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
    "fromscratch.autograd.functions": ("fromscratch.functional", "fromscratch.nn"),
    "fromscratch.functional": ("fromscratch.nn",),
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
