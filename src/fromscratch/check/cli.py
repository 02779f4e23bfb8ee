"""``fromscratch check KIND FILE.py:ClassName``: the command line.

Exit codes: 0 when there is no *wrong* finding (``--strict``: no finding at all), 1 when
there is, 2 when the class cannot be loaded or constructed, or when its code runs past the
time limit (``--timeout``) or tries to end the process (``sys.exit``, ``os._exit``, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TextIO

from . import KINDS, check_layer, guard
from .errors import LoadError
from .report import render, to_json


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fromscratch check",
        description="Run a hand-written layer against fromscratch's reference and explain "
                    "each difference. KIND gradient checks a NumPy network's backward "
                    "against finite differences of its own loss.")
    p.add_argument("kind", choices=[*KINDS, "gradient"], metavar="KIND",
                   help=f"one of {', '.join(KINDS)}, gradient")
    p.add_argument("target", metavar="FILE.py:ClassName")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 on fragile and variant findings too")
    p.add_argument("--eps", type=float, help="eps to construct the layer with")
    p.add_argument("--momentum", type=float, help="BatchNorm momentum to construct with")
    p.add_argument("--p", type=float, help="dropout probability to construct with")
    p.add_argument("--param", action="append", default=[], metavar="ROLE=NAME",
                   help="map a tensor by hand, e.g. --param weight=g (roles: weight, bias, "
                        "running_mean, running_var)")
    p.add_argument("--layers", default="3,8,1",
                   help="gradient: layer sizes for a network constructed from layers_dim")
    p.add_argument("--timeout", type=float, default=guard.DEFAULT_TIMEOUT, metavar="S",
                   help=f"seconds each call into the layer's code (import, constructor, "
                        f"forward, backward, ...) may take; 0: no limit "
                        f"(default {guard.DEFAULT_TIMEOUT:g})")
    return p


def cannot_check(args: argparse.Namespace, msg: str, out: TextIO, err: TextIO) -> int:
    """Say why the target cannot be checked (JSON on ``out`` too with --json); exit code 2."""
    if args.json:
        print(json.dumps({"kind": args.kind, "target": args.target, "error": msg,
                          "exit_code": 2}, indent=2), file=out)
    print(f"fromscratch check: cannot check {args.target}: {msg}", file=err)
    out.flush()
    err.flush()
    return 2


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        overrides = dict(item.split("=", 1) for item in args.param)
    except ValueError:
        print("fromscratch check: --param takes ROLE=NAME", file=sys.stderr)
        return 2
    out, err = sys.stdout, sys.stderr      # the layer's prints go elsewhere meanwhile
    try:
        # the backstop for code that the time limit cannot interrupt
        with guard.watchdog(lambda msg: cannot_check(args, msg, out, err)):
            if args.kind == "gradient":
                from .gradient import check_gradient
                layers = [int(s) for s in args.layers.split(",")]
                report = check_gradient(args.target, layers, timeout=args.timeout)
            else:
                report = check_layer(args.kind, args.target, eps=args.eps,
                                     momentum=args.momentum, p=args.p, params=overrides,
                                     timeout=args.timeout)
    except (LoadError, KeyError) as e:
        return cannot_check(args, str(e).strip("'\""), out, err)
    if args.json:
        print(to_json(report, args.strict))
    else:
        render(report, args.strict)
    return report.exit_code(args.strict)
