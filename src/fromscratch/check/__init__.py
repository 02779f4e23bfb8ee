"""``fromscratch check``: run a person's hand-written layer against the reference and say,
in words, what is wrong with it.

    from fromscratch.check import check_layer
    report = check_layer("layernorm", "my_layers.py:LayerNorm")
    report.findings        # [Finding(id="unbiased-variance", severity="wrong", ...), ...]

Kinds: layernorm, rmsnorm, batchnorm, dropout (torch modules) and gradient (NumPy
networks, ``check_gradient``). See docs/check.md for every finding.
"""
from __future__ import annotations

from typing import Any

import torch

from . import guard
from .errors import Exited, LoadError, TimedOut
from .findings import CATALOG, Finding, Report
from .guard import DEFAULT_TIMEOUT

KINDS = ("layernorm", "rmsnorm", "batchnorm", "dropout")
SIZE = {"layernorm": 37, "rmsnorm": 37, "batchnorm": 20, "dropout": None}


def check_layer(kind: str, target: str, eps: float | None = None,
                momentum: float | None = None, p: float | None = None,
                params: dict[str, str] | None = None,
                timeout: float | None = DEFAULT_TIMEOUT) -> Report:
    """Check the class at ``target`` ("FILE.py:ClassName") as a layer of ``kind``.

    The file is imported and its code run. Each call into it (import, constructor, forward,
    backward, ...) may take ``timeout`` seconds (None or 0: no limit; the limit needs the
    main thread on POSIX). torch's, NumPy's and Python's global state (default dtype and
    device, grad mode, random states, ...) is as it was when this returns or raises.

    Raises LoadError when the class cannot be loaded or constructed; its subclasses
    TimedOut when a call runs past the limit and Exited when the code raises SystemExit,
    KeyboardInterrupt or another BaseException, or calls os._exit.
    """
    from . import batchnorm, dropout, layernorm, rmsnorm, probes
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    battery = {"layernorm": layernorm, "rmsnorm": rmsnorm, "batchnorm": batchnorm,
               "dropout": dropout}[kind]
    roles = {"layernorm": ("weight", "bias"), "rmsnorm": ("weight",),
             "batchnorm": ("weight", "bias", "running_mean", "running_var"),
             "dropout": ()}[kind]
    given: dict[str, Any] = {"eps": eps, "momentum": momentum, "p": p}
    with guard.session(timeout) as session:
        torch.manual_seed(0)
        subject = probes.open_subject(kind, target, roles, SIZE[kind], given, params)
        report = Report(kind, target)
        report.notes.extend(subject.notes)
        battery.run(subject, report)
    report.notes.extend(session.notes)
    report.settings = {k: v for k, v in subject.settings.items()}
    report.settings.update({f"{k} from": v for k, v in subject.sources.items()})
    if subject.mapping is not None:
        report.mapping = subject.mapping.describe()
    return report


__all__ = ["CATALOG", "DEFAULT_TIMEOUT", "Exited", "Finding", "KINDS", "LoadError", "Report",
           "TimedOut", "check_layer"]
