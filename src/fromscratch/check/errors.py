"""Why a class cannot be checked: every one of these ends ``fromscratch check`` with exit
code 2 and a message that says why."""
from __future__ import annotations


class LoadError(Exception):
    """The class cannot be loaded or constructed; the message says why (exit code 2)."""


class TimedOut(LoadError):
    """A call into the person's code ran past the time limit (exit code 2)."""


class Exited(LoadError):
    """The person's code raised SystemExit, KeyboardInterrupt or another BaseException, or
    called os._exit: it tried to end the process (exit code 2)."""
