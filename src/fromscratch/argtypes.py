"""argparse ``type=`` functions for the command lines: a bad value is a usage error (exit
2, with the option's name) before anything runs, never a traceback or a silent no-op."""
from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """1, 2, 3, ...: a count of epochs, steps, frames, processes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0: a learning rate, a clipping norm."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0: a momentum, a pause in seconds."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def output_folder(parser: argparse.ArgumentParser, folder: str, option: str = "--out") -> str:
    """``folder``, created and proven writable before the work starts; otherwise a usage
    error naming ``option``, the folder and the reason (a file in the way, no permission,
    a read-only file system, a full disk)."""
    from .atomic import OutputError, check_writable
    try:
        check_writable(folder, option)
    except OutputError as e:
        parser.error(str(e))
    return folder
