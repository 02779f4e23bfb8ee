"""``fromscratch demo | check | train``: the command line.

Each subcommand hands its arguments to the package that owns it, so this file stays a
table of contents.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

SUBCOMMANDS = {
    "check": "fromscratch.check.cli",   # check a hand-written layer against the reference
    "train": "fromscratch.train.cli",   # train with exact accumulation (torchrun-able)
}


def _demo(argv: list[str]) -> int:
    from .demos import DEMOS, run
    p = argparse.ArgumentParser(prog="fromscratch demo", add_help=False,
                                description="Run one demo, or all of them with no name. "
                                            "'fromscratch demo NAME --help' lists NAME's options.")
    p.add_argument("name", nargs="?", choices=sorted(DEMOS), help="the demo (default: all)")
    # declared here so that "demo --out DIR" is not read as a demo named DIR
    p.add_argument("--out", help="output folder (default: demo-output, one subfolder per demo)")
    # -h is the demo's own when a demo is named, so it is passed on rather than answered here
    p.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    args, rest = p.parse_known_args(argv)
    if args.name:
        return run(args.name, rest + (["--help"] if args.help else [])
                   + (["--out", args.out] if args.out else []))
    if args.help:
        p.print_help()
        return 0
    if rest:     # options of one demo, given to all of them
        p.error(f"unrecognized arguments: {' '.join(rest)} (a demo's options need its name: "
                f"fromscratch demo NAME {' '.join(rest)})")
    base = args.out or "demo-output"
    status = 0
    for name in DEMOS:
        start = time.perf_counter()
        status |= run(name, ["--out", os.path.join(base, name)])
        print(f"[{name}: {time.perf_counter() - start:.1f} s]\n")
    return status


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    argv = sys.argv[1:] if argv is None else argv
    commands = ["demo", *SUBCOMMANDS]
    if not argv or argv[0] not in commands:
        print(f"usage: fromscratch {{{'|'.join(commands)}}} ...", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "demo":
        return _demo(argv[1:])
    return int(importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:]) or 0)
