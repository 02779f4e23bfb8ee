"""`fromscratch check` runs the person's code, and that code is bounded: a call that never
ends times out (exit 2, naming what was running), an exit or interrupt it raises is reported
(exit 2) instead of ending the checker quietly, and check_layer() leaves the caller's global
state as it found it.

The layers are in tests/fixtures/check/runaway.py, runaway_import.py, exits.py,
exits_at_import.py and global_state.py. Every test here is bounded: a layer that loops
is only checked with a time limit of a few seconds, in-process where the limit can
interrupt it and in a child process with its own `timeout=` where only the command line's
backstop (which ends the process) can.
"""
from __future__ import annotations

import inspect
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fromscratch.check import LoadError, check_layer
from fromscratch.check.cli import main
from fromscratch.check.gradient import check_gradient

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "check"
RUNAWAY = FIXTURES / "runaway.py"
EXITS = FIXTURES / "exits.py"
ORDINARY = "on a (4, 7, 37) float64 input (probe: building the layer)"


def run(capsys, *argv: str) -> tuple[int, str, str, float]:
    start = time.monotonic()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err, time.monotonic() - start


def command(*argv: str, limit: float = 180) -> subprocess.CompletedProcess:
    """`python -m fromscratch check ...` in a child process that cannot outlive ``limit``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "fromscratch", "check", *argv], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=limit)


# -- time limit ---------------------------------------------------------------------------

@pytest.mark.parametrize("target,timeout,running", [
    (f"{RUNAWAY}:LoopsInForward", 1, f"running LoopsInForward.forward {ORDINARY}"),
    (f"{RUNAWAY}:LoopsInInit", 1, "constructing LoopsInInit(hidden_size=37) (probe: building "
                                  "the layer)"),
    (f"{FIXTURES / 'runaway_import.py'}:LayerNorm", 1, "importing runaway_import.py"),
    # it gets as far as the gradient probe; meta's first forward imports for a while
    (f"{RUNAWAY}:LoopsInBackward", 3, "running the backward of LoopsInBackward.forward on "
                                      "a (4, 7, 37) float64 input (probe: gradients)"),
])
def test_code_that_never_ends_times_out_with_what_was_running(capsys, target, timeout,
                                                              running):
    code, out, err, took = run(capsys, "layernorm", target, "--timeout", str(timeout))
    assert code == 2
    assert f"timed out after {timeout} s while {running}; --timeout S gives it longer" in err
    assert took < timeout + 30


def test_timeout_in_json(capsys):
    code, out, err, _ = run(capsys, "layernorm", f"{RUNAWAY}:LoopsInForward", "--json",
                            "--timeout", "1")
    report = json.loads(out)
    assert code == 2 == report["exit_code"]
    assert report["error"].startswith("timed out after 1 s while running LoopsInForward")


def test_gradient_check_times_out(capsys):
    code, _, err, _ = run(capsys, "gradient", f"{RUNAWAY}:looping_network", "--timeout", "1")
    assert code == 2
    assert f"timed out after 1 s while constructing {RUNAWAY}:looping_network" in err


def test_check_layer_takes_a_timeout():
    with pytest.raises(LoadError, match="timed out after 0.5 s while running "
                                        "LoopsInForward.forward") as raised:
        check_layer("layernorm", f"{RUNAWAY}:LoopsInForward", timeout=0.5)
    from fromscratch.check import TimedOut
    assert isinstance(raised.value, TimedOut)


def test_default_timeout_lets_honest_layers_run(capsys):
    """The default limit is far above what an honest layer's slowest call takes."""
    code, out, err, took = run(capsys, "batchnorm",
                               f"{FIXTURES / 'handwritten_correct.py'}:BatchNorm")
    assert code == 0 and "no wrong finding" in out and not err
    from fromscratch.check import DEFAULT_TIMEOUT
    assert DEFAULT_TIMEOUT >= 30 > took


def test_a_loop_that_swallows_the_interrupt_is_ended_by_the_backstop():
    """`except BaseException: pass` around the loop catches the time limit's interrupt
    every time: the command line reports after the grace period and ends itself, exit 2."""
    out = command("layernorm", f"{RUNAWAY}:SwallowsInterrupts", "--timeout", "1", "--json")
    assert out.returncode == 2, out.stderr
    assert ("timed out after 1 s while running SwallowsInterrupts.forward on a (4, 7, 37) "
            "float64 input") in out.stderr
    assert "did not stop when interrupted" in out.stderr
    assert json.loads(out.stdout)["exit_code"] == 2


def test_real_ctrl_c_still_stops_the_check():
    """A SIGINT from outside is the user's Ctrl-C: it propagates, it is not reported as the
    layer's own KeyboardInterrupt."""
    if "timeout" not in inspect.signature(check_layer).parameters:
        pytest.fail("check_layer takes no time limit")     # and would loop for ever
    ctrl_c = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    ctrl_c.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            check_layer("layernorm", f"{RUNAWAY}:LoopsInForward", timeout=30)
    finally:
        ctrl_c.cancel()


# -- exits -------------------------------------------------------------------------------

@pytest.mark.parametrize("target,raised", [
    (f"{EXITS}:ExitsInForward", "SystemExit(0) raised at exits.py:13 (`sys.exit(0)`) while "
                                f"running ExitsInForward.forward {ORDINARY}"),
    (f"{EXITS}:ExitsInInit", "SystemExit(None) raised at exits.py:19 (`exit()`) while "
                             "constructing ExitsInInit(hidden_size=37)"),
    (f"{EXITS}:ExitsInBackward", "SystemExit(0) raised at exits.py:29 (`sys.exit(0)`) while "
                                 "running the backward of ExitsInBackward.forward on a "
                                 "(4, 7, 37) float64 input (probe: gradients)"),
    (f"{EXITS}:InterruptsInForward", "KeyboardInterrupt('stop') raised at exits.py:39 "
                                     "(`raise KeyboardInterrupt(\"stop\")`) while running "
                                     f"InterruptsInForward.forward {ORDINARY}"),
    (f"{FIXTURES / 'exits_at_import.py'}:LayerNorm", "SystemExit(0) raised at "
                                                     "exits_at_import.py:6 (`sys.exit(0)`) "
                                                     "while importing exits_at_import.py"),
])
def test_an_exit_is_reported_not_a_silent_pass(capsys, target, raised):
    try:
        code, out, err, _ = run(capsys, "layernorm", target)
    except (SystemExit, KeyboardInterrupt) as e:     # what the checker did before
        pytest.fail(f"the layer's {type(e).__name__} ended the checker")
    assert code == 2
    assert raised in err
    assert "a layer must not end the process" in err


def test_os_exit_is_reported():
    """os._exit ends a process without an exception: the checker replaces it while it runs
    the layer (a child process, so that the old behaviour cannot end the test run)."""
    out = command("layernorm", f"{EXITS}:OsExitInForward")
    assert out.returncode == 2, out.stderr
    assert (f"os._exit(0) raised at exits.py:44 (`os._exit(0)`) while running "
            f"OsExitInForward.forward {ORDINARY}") in out.stderr
    assert os._exit.__module__ in ("posix", "nt")     # and put back here


def test_check_layer_raises_exited():
    try:
        with pytest.raises(LoadError, match=r"SystemExit\(0\) raised at exits.py:13") as raised:
            check_layer("layernorm", f"{EXITS}:ExitsInForward")
    except SystemExit:
        pytest.fail("the layer's SystemExit escaped check_layer")
    from fromscratch.check import Exited
    assert isinstance(raised.value, Exited)


# -- global state --------------------------------------------------------------------------

def global_state() -> dict:
    """What a layer may change that its caller relies on."""
    return {"dtype": torch.get_default_dtype(), "device": torch.get_default_device(),
            "grad": torch.is_grad_enabled(), "threads": torch.get_num_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "torch rng": torch.get_rng_state(), "numpy rng": np.random.get_state()[1],
            "python rng": random.getstate(), "sigalrm": signal.getsignal(signal.SIGALRM),
            "sigint": signal.getsignal(signal.SIGINT)}


def assert_same(before: dict, after: dict) -> None:
    for key, value in before.items():
        same = torch.equal(value, after[key]) if isinstance(value, torch.Tensor) else \
            np.array_equal(value, after[key]) if isinstance(value, np.ndarray) else \
            value == after[key]
        assert same, f"{key} changed: {value} -> {after[key]}"


@pytest.fixture
def seeded():
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)


def test_check_layer_puts_global_state_back(seeded):
    before = global_state()
    report = check_layer("layernorm", f"{FIXTURES / 'global_state.py'}:ChangesGlobalState")
    assert_same(before, global_state())
    # put back after every call, so the probes after the first forward are not spoiled
    assert not report.wrong, [f.id for f in report.wrong]
    notes = " ".join(report.notes)
    assert ("the layer changed torch's default dtype (torch.float32 -> torch.float64), "
            "torch's default device (cpu -> meta)") in notes
    assert "grad mode (True -> False)" in notes


def test_check_layer_puts_global_state_back_when_the_layer_raises(seeded):
    before = global_state()
    with pytest.raises(LoadError, match="cannot be constructed"):
        check_layer("layernorm", f"{FIXTURES / 'global_state.py'}:ChangesStateThenRaises")
    assert_same(before, global_state())


def test_check_gradient_puts_numpy_random_state_back(seeded):
    before = global_state()
    check_gradient(f"{FIXTURES / 'numpy_nets.py'}:make_mlp")
    assert_same(before, global_state())
