"""Bounds on running a person's code: a time limit on every call into it, an exit or an
interrupt it raises turned into a report, and the global state it changes put back.

Every call into the person's code (import, constructor, forward, backward, ``.to()``, ...)
goes through ``running("running LayerNorm.forward on a (4, 7, 37) float64 input")``, inside
a ``session`` that ``check_layer`` and ``check_gradient`` open:

* **time limit.** Each call gets ``timeout`` seconds. SIGALRM (main thread, POSIX) raises
  ``_Alarm`` in the person's code, a ``BaseException`` so that their ``except Exception``
  and the checker's own do not swallow it; it fires again every second in case a bare
  ``except:`` does. ``watchdog`` is the command line's backstop for code that never lets go
  (a loop that swallows every interrupt, a loop inside compiled code): past the limit and a
  grace period it reports and ends the process with exit code 2.
* **exits.** ``sys.exit``, ``exit()``, ``os._exit`` and any other ``BaseException`` the
  person's code raises (``KeyboardInterrupt``, ``GeneratorExit``) would end the checker,
  with exit code 0 for ``sys.exit(0)``: read as a pass. They become ``Exited``, naming the
  exception, the line that raised it and the call that was running. ``os._exit`` cannot be
  caught, so it is replaced while a session is open. A real Ctrl-C still stops the check.
* **global state.** torch's default dtype and device, grad mode, thread count, deterministic
  and anomaly flags, float32 matmul precision, NumPy's error state and the working folder are
  put back after every call (so a layer that changes them does not spoil the probes after
  it; ``Session.notes`` says what it changed); the random states of torch, NumPy and
  Python's ``random``, the warning filters and ``sys.path`` when the session ends. The
  checker's own code can leave ``_Unwind`` only through ``session``, which turns it into the
  ``TimedOut`` or ``Exited`` it carries (both ``LoadError``: exit code 2).
"""
from __future__ import annotations

import contextlib
import linecache
import os
import random
import signal
import sys
import sysconfig
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .errors import Exited, LoadError, TimedOut

DEFAULT_TIMEOUT = 60.0      # seconds per call; the fixtures' slowest call takes well under 1 s
REFIRE = 1.0                # the alarm fires again this often while the person's code runs

_real_exit = os._exit
_HERE = os.path.dirname(os.path.abspath(__file__))
_LIBRARIES = tuple({os.path.realpath(p) for p in (sysconfig.get_paths()["stdlib"],
                                                  sysconfig.get_paths()["purelib"])})


class _Alarm(BaseException):
    """Raised by the SIGALRM handler inside the person's code."""


class _Unwind(BaseException):
    """Carries a TimedOut / Exited out through every ``except Exception`` on the way to
    ``session``."""

    def __init__(self, error: LoadError):
        super().__init__(str(error))
        self.error = error


class _OsExit(SystemExit):
    """What ``os._exit(code)`` raises instead of ending the process while a session is open."""

    def __str__(self) -> str:
        return f"os._exit({self.code!r})"


# -- global state ----------------------------------------------------------------------------

def _default_device() -> torch.device:
    return torch.get_default_device()


def _set_default_device(device: torch.device) -> None:
    torch.set_default_device(None if device.type == "cpu" else device)


# (what it is called in a note, read it, restore it)
SETTINGS: list[tuple[str, Callable[[], Any], Callable[[Any], None]]] = [
    ("torch's default dtype", torch.get_default_dtype, torch.set_default_dtype),
    ("torch's default device", _default_device, _set_default_device),
    ("grad mode", torch.is_grad_enabled, torch.set_grad_enabled),
    ("torch's thread count", torch.get_num_threads, torch.set_num_threads),
    ("deterministic algorithms", lambda: (torch.are_deterministic_algorithms_enabled(),
                                          torch.is_deterministic_algorithms_warn_only_enabled()),
     lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1])),
    ("anomaly detection", torch.is_anomaly_enabled, torch.set_anomaly_enabled),
    ("float32 matmul precision", torch.get_float32_matmul_precision,
     torch.set_float32_matmul_precision),
    ("NumPy's error state", np.geterr, lambda v: np.seterr(**v)),
    ("the working folder", os.getcwd, os.chdir),
]


def read_settings() -> list[Any]:
    return [get() for _, get, _ in SETTINGS]


def restore_settings(saved: list[Any]) -> list[tuple[str, str]]:
    """Put every setting back; (name, "before -> after") for those that had changed."""
    changed = []
    for (name, get, put), value in zip(SETTINGS, saved):
        now = get()
        if now != value:
            changed.append((name, f"{value} -> {now}"))
            put(value)
    return changed


@dataclass
class RandomStates:
    """The global random states a layer may draw from or re-seed."""
    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor] | None
    numpy: Any
    python: Any

    @classmethod
    def read(cls) -> "RandomStates":
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        np.random.set_state(self.numpy)
        random.setstate(self.python)


# -- the session -------------------------------------------------------------------------------

@dataclass
class Session:
    """One check: its time limit, what is running now, and what the layer changed."""
    timeout: float | None
    timed: bool                                  # SIGALRM available (main thread, POSIX)
    probe: str = ""                              # the check under way, for messages
    stack: list[str] = field(default_factory=list)   # descriptions of the calls running
    started: float | None = None                 # time.monotonic() at the outermost call
    fired: bool = False                          # the alarm fired during this call
    interrupted: bool = False                    # a real Ctrl-C arrived
    pid: int = field(default_factory=os.getpid)  # the checking process
    notes: list[str] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)   # settings already in a note

    def doing(self) -> str:
        what = self.stack[-1] if self.stack else "checking (between calls into the layer)"
        return what + (f" (probe: {self.probe})" if self.probe else "")

    def timed_out(self) -> TimedOut:
        return TimedOut(f"timed out after {self.timeout:g} s while {self.doing()}; "
                        f"--timeout S gives it longer")

    def exited(self, e: BaseException) -> Exited:
        return Exited(exit_message(e, self.doing()))


_sessions: dict[int, Session] = {}               # thread id -> its open session


def current() -> Session | None:
    return _sessions.get(threading.get_ident())


def describe(e: BaseException) -> str:
    """'SystemExit(0)', 'os._exit(3)', 'KeyboardInterrupt("stop")'."""
    if isinstance(e, _OsExit):
        return str(e)
    if isinstance(e, SystemExit):
        return f"SystemExit({e.code!r})"
    return f"{type(e).__name__}({str(e)!r})" if str(e) else type(e).__name__


def exit_message(e: BaseException, doing: str) -> str:
    """'SystemExit(0) raised at exits.py:12 (`sys.exit(0)`) while running ...: ...'."""
    passed = exit_code(e) == 0
    return (f"{describe(e)} raised at {where(e.__traceback__)} while {doing}: a layer must not "
            f"end the process" + (" (this one would have ended the check with exit code 0, "
                                  "which reads as a pass)" if passed else ""))


def exit_code(e: BaseException) -> int:
    """The exit code the process would have ended with (sys.exit's rules)."""
    if not isinstance(e, SystemExit):
        return 1
    if e.code is None:
        return 0
    return int(e.code) if isinstance(e.code, int) else 1


def where(tb: TracebackType | None) -> str:
    """'exits.py:12 (`sys.exit(0)`)': the innermost frame in the person's code, i.e. not in
    the checker, the standard library or installed packages (``exit()`` is in the standard
    library, ``sys.exit`` has no Python frame)."""
    frames = [f for f, _ in traceback.walk_tb(tb)]
    if not frames:
        return "an unknown place"
    theirs = [f for f in frames if _theirs(f)]
    frame = (theirs or frames)[-1]
    line = frame.f_lineno if frame is frames[-1] else _line_in(frame, tb)
    text = linecache.getline(frame.f_code.co_filename, line).split("  #")[0].strip()
    return f"{os.path.basename(frame.f_code.co_filename)}:{line}" + (f" (`{text}`)" if text else "")


def _line_in(frame: FrameType, tb: TracebackType | None) -> int:
    while tb is not None:
        if tb.tb_frame is frame:
            return tb.tb_lineno
        tb = tb.tb_next
    return frame.f_lineno


def _theirs(frame: FrameType) -> bool:
    """Is the frame in the person's code: not the checker's, not a library's, not frozen?"""
    name = frame.f_code.co_filename
    if name.startswith("<"):
        return False
    path = os.path.realpath(name)
    return not path.startswith(_HERE) and not path.startswith(_LIBRARIES)


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    s = current()
    if s is not None and s.started is not None and not _in_library_import(frame):
        s.fired = True
        raise _Alarm()


def _in_library_import(frame: FrameType | None) -> bool:
    """Is a library module being imported (torch imports some lazily, on a first call)?
    Interrupted there it would stay half-imported and break torch for the rest of the
    process, so the alarm waits for its next firing. The person's own file is imported
    through importlib too, but then its frames are the innermost ones."""
    inner: list[FrameType] = []
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return bool(inner) and not any(_theirs(f) for f in inner)
        inner.append(frame)
        frame = frame.f_back
    return False


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    """A real Ctrl-C: remembered, so that it is not mistaken for the layer's own."""
    s = current()
    if s is not None:
        s.interrupted = True
    raise KeyboardInterrupt


def _patched_exit(code: int) -> None:
    """os._exit while a session is open: raise instead, in the checking thread of the
    checking process only (a forked child's os._exit must still end the child)."""
    s = current()
    if s is not None and os.getpid() == s.pid:
        raise _OsExit(code)
    _real_exit(code)


@contextlib.contextmanager
def session(timeout: float | None = DEFAULT_TIMEOUT) -> Iterator[Session]:
    """Open a session for one check; on leaving it, everything the layer changed is put
    back and an abort inside becomes the TimedOut / Exited it carries."""
    if current() is not None:                    # nested: the outer one does all this
        yield current()
        return
    timeout = timeout if timeout and timeout > 0 else None
    main = threading.current_thread() is threading.main_thread()
    s = Session(timeout, timed=bool(timeout) and main and hasattr(signal, "setitimer"))
    ident = threading.get_ident()
    settings, randoms, path = read_settings(), RandomStates.read(), list(sys.path)
    handlers: dict[int, Any] = {}
    itimer: tuple[float, float] = (0.0, 0.0)
    begun = time.monotonic()
    if main:
        handlers[signal.SIGINT] = signal.signal(signal.SIGINT, _on_interrupt)
        if hasattr(signal, "setitimer"):
            itimer = signal.setitimer(signal.ITIMER_REAL, 0)   # the caller's, resumed later
            handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, _on_alarm)
    _sessions[ident] = s
    os._exit = _patched_exit
    try:
        with warnings.catch_warnings():
            yield s
    except _Unwind as u:
        raise u.error from None
    except _Alarm:                               # fired between the call's end and disarming
        raise s.timed_out() from None
    except KeyboardInterrupt as e:
        if s.interrupted:
            raise
        raise s.exited(e) from None
    except Exception:
        raise
    except BaseException as e:                   # raised outside any tracked call
        raise s.exited(e) from None
    finally:
        del _sessions[ident]
        if not _sessions:                        # another thread's check may still run
            os._exit = _real_exit
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if itimer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, max(itimer[0] - (time.monotonic() - begun),
                                                     1e-3), itimer[1])
        restore_settings(settings)
        randoms.restore()
        sys.path[:] = path


@contextlib.contextmanager
def running(what: str) -> Iterator[None]:
    """Run the person's code, described by ``what`` ("running LayerNorm.forward on a
    (4, 7, 37) float64 input", "importing my_layer.py"), under the session's time limit;
    an exit it raises becomes Exited, and the settings it changes are put back."""
    s = current()
    if s is None:                                # no session: no limit, exits still caught
        try:
            yield
        except Exception:
            raise
        except BaseException as e:
            raise Exited(exit_message(e, what)) from None
        return
    outer = s.started is None
    s.stack.append(what)
    saved = read_settings() if outer else None
    if outer:
        s.fired = False
        s.started = time.monotonic()
        if s.timed:
            signal.setitimer(signal.ITIMER_REAL, s.timeout, min(REFIRE, s.timeout))
    try:
        yield
        if s.fired:                               # interrupted, but it carried on
            raise _Alarm()
    except _Unwind:
        raise
    except _Alarm:
        raise _Unwind(s.timed_out()) from None
    except KeyboardInterrupt as e:
        if s.interrupted:
            raise
        raise _Unwind(s.exited(e)) from None
    except Exception:
        if s.fired:                               # the alarm, turned into another error
            raise _Unwind(s.timed_out()) from None
        raise
    except BaseException as e:
        raise _Unwind(s.exited(e)) from None
    finally:
        if outer:
            s.started = None                      # first: a late alarm is then ignored
            if s.timed:
                signal.setitimer(signal.ITIMER_REAL, 0)
            # each setting is noted once, at the first call that changed it
            new = [(n, c) for n, c in restore_settings(saved) if n not in s.changed]
            s.changed.update(n for n, _ in new)
            if new:
                s.notes.append(f"the layer changed {', '.join(f'{n} ({c})' for n, c in new)} "
                               f"while {what}; the checker put "
                               f"{'them' if len(new) > 1 else 'it'} back after every call")
        s.stack.pop()


@contextlib.contextmanager
def probe(label: str) -> Iterator[None]:
    """Name the check under way in timeout and exit messages; a decorator on a battery's
    steps: ``@probe("eps placement")``."""
    s = current()
    if s is None:
        yield
        return
    before, s.probe = s.probe, label
    try:
        yield
    finally:
        s.probe = before


def grace(timeout: float) -> float:
    """How long past the limit the watchdog waits for the alarm to work."""
    return max(1.0, min(5.0, timeout))


@contextlib.contextmanager
def watchdog(on_stuck: Callable[[str], None], poll: float = 0.1) -> Iterator[None]:
    """The command line's backstop: when a call into the person's code in this thread runs
    past its limit plus ``grace`` (its code swallows the alarm, or loops in compiled code
    where no signal gets in), call ``on_stuck`` with the message and end the process with
    exit code 2. Not for check_layer() from Python: ending the caller's process is not the
    checker's to do."""
    ident, done = threading.get_ident(), threading.Event()

    def watch() -> None:
        while not done.wait(poll):
            s = _sessions.get(ident)
            started = s.started if s is not None else None
            if s is None or started is None or s.timeout is None:
                continue
            if time.monotonic() - started > s.timeout + grace(s.timeout):
                on_stuck(f"{s.timed_out()}. It did not stop when interrupted (it catches "
                         f"the interrupt, or loops inside compiled code), so the checker "
                         f"ends here")
                _real_exit(2)
    thread = threading.Thread(target=watch, name="fromscratch-check-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
