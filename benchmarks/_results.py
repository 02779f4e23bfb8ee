"""What every benchmark script shares: the machine's description and the RESULTS.md section it
owns (between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``), replaced in place."""
from __future__ import annotations

import ctypes
import os
import platform
import re
import resource
import sys
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = re.search(r"model name\s*:\s*(.*)", f.read())
        cpu = model.group(1).strip() if model else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def keep_freed_memory() -> bool:
    """Ask glibc to recycle freed memory instead of returning it to the kernel
    (M_MMAP_THRESHOLD 1 GB, or 32 MB where glibc caps it; M_TRIM_THRESHOLD 1 GB), so that
    page faults stay out of the timings, for every contender alike.

    Left alone, glibc decides from the history of the process whether a freed 16 MB array
    is recycled or unmapped; a fresh one takes ~4096 page faults (4 KB pages), in whichever
    contender happens to allocate it. False where the C library is not
    glibc (nothing changed)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mmap_ok = libc.mallopt(-3, 1 << 30) or libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD
        return bool(mmap_ok) and bool(libc.mallopt(-1, 1 << 30))            # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def minor_faults() -> int:
    """Minor page faults of this process so far (first touches of fresh memory)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def warm_up(steps: dict[str, Callable[[], object]], times: int, optional: str
            ) -> dict[str, Callable[[], object]]:
    """Run each step ``times`` times; the ``optional`` contender (backend="compile") is left
    out, with the reason on stderr, where it raises a RuntimeError (no working C++
    compiler). Returns the steps that ran."""
    kept = dict(steps)
    for name, step in steps.items():
        try:
            for _ in range(times):
                step()
        except RuntimeError as e:
            if name != optional:
                raise
            print(f"{name} left out: {e}", file=sys.stderr)
            del kept[name]
    return kept


def write_section(name: str, lines: list[str], path: Path = RESULTS) -> None:
    """Replace section ``name`` of ``path`` with ``lines`` (append it if it is not there)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = "\n".join([begin, *lines, end])
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
