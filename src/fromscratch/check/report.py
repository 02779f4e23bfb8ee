"""Show a report: a rich table in the terminal, or JSON for machines."""
from __future__ import annotations

import json
import sys
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .findings import Report

STATUS = {"pass": ("ok", "green"), "fail": ("FAIL", "red"), "skip": ("-", "dim")}
SEVERITY = {"wrong": ("WRONG", "bold red"), "fragile": ("fragile", "yellow"),
            "variant": ("variant", "cyan")}


def to_json(report: Report, strict: bool = False) -> str:
    return json.dumps(report.to_dict(strict), indent=2, default=str)


def render(report: Report, strict: bool = False, file: TextIO | None = None) -> None:
    console = Console(file=file or sys.stdout, width=None if (file or sys.stdout).isatty()
                      else 120)
    console.print(Text(f"fromscratch check {report.kind} {report.target}", style="bold"))
    settings = {k: v for k, v in report.settings.items() if not k.endswith(" from")}
    if settings:
        console.print("  " + ", ".join(f"{k}={v} ({report.settings.get(k + ' from', '')})"
                                       for k, v in settings.items()))
    if report.mapping:
        console.print("  tensors: " + ", ".join(report.mapping))
    for note in report.notes:
        console.print(f"  note: {note}")

    checks = Table(title="checks", title_justify="left", show_header=False, box=None,
                   padding=(0, 1))
    for c in report.checks:
        label, style = STATUS[c.status]
        checks.add_row(Text(label, style=style), c.name, Text(c.note, style="dim"))
    if report.checks:
        console.print(checks)

    if report.table:
        t = Table(title="gradients: analytic vs finite differences", title_justify="left")
        for col in ("parameter", "shape", "worst rel. error", "analytic / numeric", ""):
            t.add_column(col)
        for row in report.table:
            err = "-" if row["error"] is None else f"{row['error']:.2g}"
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.4g}"
            label, style = STATUS["pass" if row["ok"] else "fail"]
            t.add_row(row["parameter"], str(tuple(row["shape"])), err, ratio,
                      Text(label, style=style))
        console.print(t)

    if report.findings:
        t = Table(title="findings", title_justify="left", show_lines=True)
        t.add_column("severity", no_wrap=True)
        t.add_column("diagnosis and evidence", ratio=3)
        t.add_column("likely cause and fix", ratio=2)
        for f in report.findings:
            label, style = SEVERITY[f.severity]
            body = Text(f.title, style="bold")
            for e in f.evidence:
                body.append(f"\n- {e}")
            body.append(f"\n[{f.id}]", style="dim")
            t.add_row(Text(label, style=style), body, f"{f.cause}\nfix: {f.fix}")
        console.print(t)
    n_wrong, n_fragile, n_variant = len(report.wrong), len(report.fragile), \
        len(report.variants)
    verdict = ("no wrong finding" if not n_wrong else f"{n_wrong} wrong") + \
        (f", {n_fragile} fragile" if n_fragile else "") + \
        (f", {n_variant} variant{'s' if n_variant > 1 else ''}" if n_variant else "")
    code = report.exit_code(strict)
    console.print(Text(f"{verdict} (exit {code})", style="bold red" if code else "bold green"))
