"""Replay (``kernels._fast_path``): from the third forward or backward of a geometry on, the
recorded launches run again with the new addresses, no wrapper Python in between.

Replay needs compiled launchers, which only a GPU has; here each kernel is wrapped so that
Triton's interpreter stands in for the launcher. The stand-in gets what a real launcher
gets, addresses as ints, and finds the tensors behind them in an address book of every
tensor the wrappers allocate or the test creates, so a wrong address, a wrong argument
order or a stale pointer makes the results wrong and the test fail."""
from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest
import torch

from fromscratch import functional as F
from fromscratch.kernels import (_common, _fast_path, _reduce, _row_backward, batch_norm,
                                 layer_norm, rms_norm)
from tests.kernels._helpers import close, f64, param, rows


class AddressBook(dict):
    """data_ptr -> tensor, for every tensor the kernel wrappers make (``empty``,
    ``empty_like``, ``rsqrt``) or the test gives to ``add``."""

    def add(self, *ts: torch.Tensor) -> None:
        for t in ts:
            self[t.data_ptr()] = t

    def find(self, address: Any) -> Any:
        """The tensor at ``address``; inside a contiguous tensor of the book (one allocation
        holding two buffers), its flat tail from there; anything else as it is."""
        if type(address) is not int:
            return address
        if address in self:
            return self[address]
        for ptr, t in self.items():
            end = ptr + t.numel() * t.element_size()
            if ptr < address < end and t.is_contiguous():
                offset, rest = divmod(address - ptr, t.element_size())
                assert rest == 0, "an address between two elements"
                return t.reshape(-1)[offset:]
        return address

    def empty(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        t = torch.empty(*args, **kwargs)
        self.add(t)
        return t

    def empty_like(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        t = torch.empty_like(*args, **kwargs)
        self.add(t)
        return t

    def rsqrt(self, *args: Any, **kwargs: Any) -> torch.Tensor:   # eval BatchNorm's rstd
        t = torch.rsqrt(*args, **kwargs)
        self.add(t)
        return t


class Interpreted:
    """Stands in for a ``@triton.jit`` kernel: ``k[grid](...)`` runs it in the interpreter
    and returns a "compiled kernel" whose launcher, given addresses, looks the tensors up
    in the address book and runs the interpreter again."""

    #: a Triton whose compiled kernels have no ``packed_metadata`` (a changed private API)
    changed = False

    def __init__(self, kernel: Any, book: AddressBook):
        self.kernel, self.book, self.arg_names = kernel, book, kernel.arg_names
        self.n_runtime = 0
        self.launches = 0

    def __getitem__(self, grid: tuple) -> Callable[..., Any]:
        def launch(*args: Any, num_warps: int = 4, num_stages: int | None = None,
                   **constexprs: Any) -> SimpleNamespace:
            self.n_runtime = len(args)
            self.kernel[grid](*args, **constexprs)
            compiled = SimpleNamespace(run=self.launcher, function=None, packed_metadata=None,
                                       n_regs=64, metadata=None)
            if self.changed:
                del compiled.packed_metadata
            return compiled
        return launch

    def launcher(self, g0: int, g1: int, g2: int, stream: int, function: Any, metadata: Any,
                 launch_metadata: Any, enter_hook: Any, exit_hook: Any, *values: Any) -> None:
        self.launches += 1
        runtime = [self.book.find(v) for v in values[:self.n_runtime]]
        assert not any(type(v) is int and v > 2**32 for v in runtime), \
            "an address that no tensor of this test has"
        constexprs = dict(zip(self.arg_names[self.n_runtime:], values[self.n_runtime:]))
        self.kernel[(g0, g1, g2)](*runtime, **constexprs)


@pytest.fixture
def interpreted(monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[tuple[AddressBook, dict[str, Interpreted]]]:
    """The launch shortcut and the replay switched on for CPU tensors, the interpreter in
    place of compiled launchers."""
    from fromscratch.kernels._common import interpreting
    if not interpreting():
        pytest.skip("runs Triton's interpreter in place of compiled launchers")
    book = AddressBook()
    stand_ins = {}
    modules = (_row_backward, _reduce, layer_norm, rms_norm, batch_norm)
    for module in modules:
        for name in [n for n in dir(module) if n.endswith("_kernel")]:
            stand_ins[f"{module.__name__}.{name}"] = Interpreted(getattr(module, name), book)
            monkeypatch.setattr(module, name, stand_ins[f"{module.__name__}.{name}"])
    recording_torch = SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch)
                                         if not k.startswith("__")})
    recording_torch.empty, recording_torch.empty_like = book.empty, book.empty_like
    recording_torch.rsqrt = book.rsqrt
    for module in (*modules, _common):
        monkeypatch.setattr(module, "torch", recording_torch)
    monkeypatch.setattr(_fast_path, "replays", Counter())
    with _fast_path.taken_by_cpu_tensors():
        yield book, stand_ins


def step(op: str, backend: str, x: torch.Tensor, r: torch.Tensor, w: torch.Tensor,
         b: torch.Tensor, dy: torch.Tensor, ds: torch.Tensor) -> list[torch.Tensor]:
    """Forward and backward of ``op``: its outputs, then the gradients of its inputs."""
    n = x.shape[-1]
    if op == "layer_norm":
        leaves = [t.detach().requires_grad_() for t in (x, w, b)]
        outs = [F.layer_norm(*leaves[:1], n, *leaves[1:], backend=backend)]
        grads_out = [dy]
    elif op == "rms_norm":
        leaves = [t.detach().requires_grad_() for t in (x, w)]
        outs = [F.rms_norm(leaves[0], n, leaves[1], 1e-6, backend=backend)]
        grads_out = [dy]
    else:
        leaves = [t.detach().requires_grad_() for t in (x, r, w)]
        outs = list(F.fused_add_rms_norm(leaves[0], leaves[1], n, leaves[2], 1e-6,
                                         backend=backend))
        grads_out = [ds, dy]
    return [*outs, *torch.autograd.grad(outs, leaves, grads_out)]


def affine(n: int, book: AddressBook) -> tuple[torch.Tensor, torch.Tensor]:
    """A float32 weight (around 1) and bias of length n, in the address book."""
    w, b = param(n, torch.float32, "cpu", 1, 1.0), param(n, torch.float32, "cpu", 2)
    book.add(w, b)
    return w, b


def same(mine: list[torch.Tensor], ref: list[torch.Tensor], what: str, rows: int) -> None:
    """Each result against backend='torch''s, float32 tolerances (sums over ``rows``)."""
    for j, (a, e) in enumerate(zip(mine, ref)):
        close(a, f64(e), f"{what} result {j}", torch.float32, reduced_over=rows,
              cond=1e-4 * float(e.detach().abs().max()))


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "fused_add_rms_norm"])
def test_replayed_backward_matches_the_reference(interpreted, op: str) -> None:
    """Five steps with new tensors each time (new addresses, new values): the third and
    later backwards are replays, and every result equals backend='torch''s."""
    book, stand_ins = interpreted
    m, n = 6, 40
    w, b = affine(n, book)
    for i in range(5):
        x = rows(m, n, torch.float32, "cpu", seed=i)
        r = rows(m, n, torch.float32, "cpu", seed=10 + i, shifted=False)
        dy = rows(m, n, torch.float32, "cpu", seed=20 + i, shifted=False)
        ds = rows(m, n, torch.float32, "cpu", seed=30 + i, shifted=False)
        book.add(x, r, dy, ds)
        same(step(op, "triton", x, r, w, b, dy, ds), step(op, "torch", x, r, w, b, dy, ds),
             f"{op} step {i}", m)
    name = "rms_norm" if op == "fused_add_rms_norm" else op
    assert _fast_path.replays == {name: 3, f"{name}_fwd": 3}, \
        "the forwards and backwards of steps 3, 4 and 5 should have been replays"
    assert stand_ins["fromscratch.kernels._row_backward._bwd_kernel"].launches >= 3


def test_a_gradient_with_other_strides_is_not_replayed(interpreted) -> None:
    """A recording made for a contiguous gradient is not used for a row-strided one (a
    column slice of a wider tensor): that backward takes the full path, and is right."""
    book, _ = interpreted
    m, n = 6, 40
    w, b = affine(n, book)
    for i in range(4):
        x = rows(m, n, torch.float32, "cpu", seed=i)
        wide = rows(m, n + 8, torch.float32, "cpu", seed=20 + i, shifted=False)
        book.add(x, wide)
        dy = wide[:, :n] if i == 3 else wide[:, :n].contiguous()
        book.add(dy)
        same(step("layer_norm", "triton", x, x, w, b, dy, dy),
             step("layer_norm", "torch", x, x, w, b, dy, dy), f"step {i}", m)
    assert _fast_path.replays["layer_norm"] == 1, "only the third backward (contiguous dy) replays"


@pytest.mark.parametrize("training", [True, False])
def test_replayed_batch_norm_backward_matches_the_reference(interpreted, training: bool) -> None:
    """BatchNorm's three backward launches replayed, in training (batch statistics, the
    forward's three launches replayed too, the running buffers updated) and in eval mode
    with gradients (running statistics as constants). 600 rows: several
    programs share the column sums."""
    book, _ = interpreted
    m, c = 600, 13
    w, b = affine(c, book)
    for i in range(5):
        x = rows(m, c, torch.float32, "cpu", seed=i)
        dy = rows(m, c, torch.float32, "cpu", seed=20 + i, shifted=False)
        book.add(x, dy)
        out = {}
        for backend in ("triton", "torch"):
            rm, rv = torch.linspace(-1, 1, c), torch.linspace(0.5, 2, c)
            book.add(rm, rv)
            leaves = [t.detach().requires_grad_() for t in (x, w, b)]
            y = F.batch_norm(leaves[0], rm, rv, leaves[1], leaves[2], training, 0.1, 1e-5,
                             backend=backend)
            out[backend] = [y, *torch.autograd.grad(y, leaves, dy), rm, rv]
        same(out["triton"], out["torch"], f"step {i}", m)
    # the forward replays in training only (eval mode normalises with the running statistics)
    assert _fast_path.replays == ({"batch_norm": 3, "batch_norm_fwd": 3} if training
                               else {"batch_norm": 3})


def test_bookkeeping_is_bounded(interpreted, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row count that changes every step adds a key each time: past MAX_KEYS the seen
    keys and the recordings start over instead of growing without bound."""
    book, _ = interpreted
    monkeypatch.setattr(_fast_path, "MAX_KEYS", 3)
    n = 16
    w = param(n, torch.float32, "cpu", 1, 1.0)
    book.add(w)
    for m in range(1, 9):
        for _ in range(3):
            x = rows(m, n, torch.float32, "cpu", seed=m)
            book.add(x)
            y = F.rms_norm(x, n, w, backend="triton")
        assert len(_fast_path._tuned) <= 3 and len(_fast_path._recordings) <= 3
        torch.testing.assert_close(y, F.rms_norm(x, n, w, backend="torch"))


@pytest.mark.parametrize("case", ["layer_norm", "layer_norm without weight and bias",
                                  "rms_norm", "rms_norm without weight", "fused_add_rms_norm",
                                  "fused_add_rms_norm without weight", "batch_norm",
                                  "batch_norm without weight and bias"])
def test_a_replayed_forward_prepares_the_backward_as_prepare_backward_does(interpreted,
                                                                            case: str) -> None:
    """What a replayed forward hands the backward (``prepare=True``) equals what
    ``prepare_backward`` says for the same tensors: the same signature, the same
    addresses, so the backward replays exactly as it would have."""
    from fromscratch.kernels import residual_rms_norm
    book, _ = interpreted
    m, n = 6, 40
    w, b = affine(n, book) if "without" not in case else (None, None)
    for i in range(3):                                   # the third forward replays
        x = rows(m, n, torch.float32, "cpu", seed=i)
        r = rows(m, n, torch.float32, "cpu", seed=10 + i)
        book.add(x, r)
        if case.startswith("layer_norm"):
            y, mean, rstd, got = layer_norm.forward(x, w, b, 1e-5, prepare=True)
            want = layer_norm.prepare_backward(x, w, b is not None, mean, rstd,
                                               None if b is None else b.dtype)
        elif case.startswith("rms_norm"):
            y, rstd, _, got = rms_norm.forward(x, w, 1e-6, prepare=True)
            want = rms_norm.prepare_backward(x, w, rstd)
        elif case.startswith("fused"):
            s, y, rstd, got = residual_rms_norm.forward(x, r, w, 1e-6, True)
            want = rms_norm.prepare_backward(s, w, rstd, has_ds=True)
        else:
            rm, rv = torch.zeros(n), torch.ones(n)
            book.add(rm, rv)
            y, mean, _, rstd, got = batch_norm.forward(x, w, b, 1e-5, True, rm, rv, 0.1, True)
            want = batch_norm.prepare_backward(x, w, b is not None, mean, rstd, True,
                                               None if b is None else b.dtype)
        assert want is not None and got == want, (i, got, want)
    name = case.split()[0] + "_fwd"
    name = "rms_norm_fwd" if name == "fused_add_rms_norm_fwd" else name
    assert _fast_path.replays == {name: 1}, "the third forward should have replayed"


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "fused_add_rms_norm", "batch_norm"])
def test_saved_tensors_moved_by_a_hook(interpreted, op: str) -> None:
    """Offloading (``torch.autograd.graph.save_on_cpu``) and non-reentrant checkpointing
    hand the backward copies of what the forward saved, at other addresses, and the
    originals' memory may hold other tensors by then. Here a saved-tensor hook packs a copy
    and strikes the original out of the address book: a backward launched with the forward's
    addresses fails (an address no tensor has); one that reads the copies is right, and
    still replays."""
    book, _ = interpreted
    m, n = 6, 40

    def pack(t: torch.Tensor) -> torch.Tensor:
        copy = t.detach().clone()
        book.pop(t.data_ptr(), None)
        book.add(copy)
        return copy

    for i in range(5):
        w, b = affine(n, book)
        x = rows(m, n, torch.float32, "cpu", seed=i)
        r = rows(m, n, torch.float32, "cpu", seed=10 + i, shifted=False)
        dy = rows(m, n, torch.float32, "cpu", seed=20 + i, shifted=False)
        book.add(x, r, dy)
        if op == "batch_norm":
            def run(backend: str) -> list[torch.Tensor]:
                leaves = [t.detach().requires_grad_() for t in (x, w, b)]
                y = F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], True,
                                 backend=backend)
                return [y, *torch.autograd.grad(y, leaves, dy)]
        else:
            def run(backend: str) -> list[torch.Tensor]:
                return step(op, backend, x, r, w, b, dy, dy)
        want = run("torch")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            got = run("triton")
        same(got, want, f"{op} step {i}", m)
    name = "rms_norm" if op == "fused_add_rms_norm" else op
    assert _fast_path.replays[name] == 3, "the backwards of steps 3-5 replay, with the copies"


def _changed_jit_run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
    """Stands in for the ``JITFunction.run`` of a Triton whose launcher takes other
    arguments (no launch metadata, no hooks): the call the fast path repeats is gone."""
    kernel = grid_0 = grid_1 = grid_2 = stream = bound_args = None
    kernel.run(grid_0, grid_1, grid_2, stream, kernel.function, kernel.packed_metadata,
               *bound_args.values())


@pytest.mark.parametrize("change", ["launcher call", "compiled kernel"])
def test_a_changed_triton_turns_the_fast_path_off_loudly(interpreted, monkeypatch, change):
    """Triton's private launch API changed (its own launcher call reads otherwise, or a
    compiled kernel lacks ``packed_metadata``): one RuntimeWarning says so, every launch
    then goes through ``kernel[grid](...)``, nothing replays, and every result over five
    steps equals backend='torch''s."""
    from triton.runtime.jit import JITFunction
    book, _ = interpreted
    m, n = 6, 40
    w, b = affine(n, book)
    fast_before = _fast_path.fast_launches
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if change == "launcher call":
            monkeypatch.setattr(JITFunction, "run", _changed_jit_run)
            context = _fast_path.taken_by_cpu_tensors()     # checks the protocol again
        else:
            monkeypatch.setattr(Interpreted, "changed", True)
            context = contextlib.nullcontext()
        with context:
            for i in range(5):
                x = rows(m, n, torch.float32, "cpu", seed=i)
                dy = rows(m, n, torch.float32, "cpu", seed=20 + i, shifted=False)
                book.add(x, dy)
                same(step("layer_norm", "triton", x, x, w, b, dy, dy),
                     step("layer_norm", "torch", x, x, w, b, dy, dy), f"step {i}", m)
    said = [w for w in caught if issubclass(w.category, RuntimeWarning)
            and "fast launch path is off" in str(w.message)]
    assert len(said) == 1, [str(w.message) for w in caught]
    assert ("JITFunction.run" if change == "launcher call" else "packed_metadata") \
        in str(said[0].message)
    assert not _fast_path.replays and _fast_path.fast_launches == fast_before
