r"""Dropout: in training keep each unit with probability 1 - p and scale it by 1/(1 - p), so
E[y] = x; in eval return x. The reference is ``fromscratch.ops.dropout``: the checker
reads the mask the layer drew (y != 0) and feeds it to the op, so the comparison is exact
although the draws are random.

    keep rate      binomial test: z = (k - n(1-p)) / sqrt(n p (1-p)), |z| < 5 on n = 100 000
    mistakes       randn > p keeps P(Z > p) (46% at p = 0.1); rand < p keeps p
    scale          kept units must be x / (1 - p); 1 means no rescaling, E[y] = (1 - p) x
    fresh masks    two calls draw different masks; rows (columns) do not share one
    sequences      on (batch, time, features) input, a mask shared along a dimension is
                   named: locked (variational) dropout, word dropout, drop path; these are
                   deliberate variants, and their keep rate and scale are still checked
    globals        a forward that reads the module's ``p`` instead of ``self.p``
    eval           the identity, exactly
    gradient       dx = dy * keep / (1 - p), with the layer's own mask
    p              1.5 and -0.1 must raise; p = 1 gives zeros, not NaN
    dtype, device  float16 / bfloat16 in, the same out; works for input on another device
                   (meta)
"""
from __future__ import annotations

import math

import torch

from ..ops import dropout as dr
from . import guard, loader, modulelike, source
from .guard import probe
from .findings import Report, finding
from .loader import LoadError
from .normcheck import unrunnable
from .probes import Subject, backward_call, call, close, diff, read_setting

N_ROWS, N_COLS = 400, 250
SEQUENCES = (40, 50, 50)        # (batch, time, features): 100 000 units, as the 2-D input
Z_LIMIT = 5.0


def keep_share_of_randn(p: float) -> float:
    """P(Z > p) for Z ~ N(0, 1): what ``torch.randn(shape) > p`` keeps."""
    return 0.5 * math.erfc(p / math.sqrt(2.0))


def z_score(k: int, n: int, q: float) -> float:
    if q <= 0.0 or q >= 1.0:
        return 0.0 if k == round(n * q) else math.inf
    return (k - n * q) / math.sqrt(n * q * (1 - q))


@probe("choosing p")
def choose_p(subject: Subject) -> None:
    """Test at the layer's own p, unless it is 0.5 (or unusable): at 0.5 keeping p and
    dropping p look the same, so pass p = 0.1 where the constructor takes it."""
    p = subject.settings.get("p")
    if "p" in subject.passed:
        return
    if not isinstance(p, (int, float)) or not 0.0 < p < 1.0 or p == 0.5:
        subject.passed["p"] = 0.1
        inst = subject.make(None, dtype=None)
        found, value = read_setting(inst, "p")
        if found and value is not None and abs(value - 0.1) < 1e-12 or subject.sig.takes("p"):
            subject.settings["p"] = 0.1
            subject.sources["p"] = "chosen (at p = 0.5 keeping and dropping look alike)"
        else:
            del subject.passed["p"]


def shared_dims(keep: torch.Tensor) -> tuple[int, ...]:
    """The dims along which the mask does not change (one draw shared along each)."""
    if not 0 < int(keep.sum()) < keep.numel():
        return ()
    return tuple(d for d in range(keep.dim()) if keep.shape[d] > 1 and
                 bool((keep == keep.narrow(d, 0, 1)).all()))


def independent(keep: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """The draws themselves: index 0 along every shared dim."""
    return keep[tuple(slice(0, 1) if d in dims else slice(None) for d in range(keep.dim()))]


def sequence_variant(dims: tuple[int, ...]) -> tuple[str, str] | None:
    """Name the deliberate variant a (batch, time, features) mask shared along ``dims`` is."""
    if dims in ((0,), (1,)):
        layout = "time-first (time, batch, features)" if dims == (0,) else \
            "batch-first (batch, time, features)"
        return "locked-dropout", (f"one mask per sequence, reused at every time step: shared "
                                  f"along dim {dims[0]}, the time dim of {layout} input")
    if dims == (2,):
        return "word-dropout", "one draw per token, shared along the features (dim 2)"
    if dims == (1, 2):
        return "drop-path", "one draw per sample, shared along every dim but the batch dim"
    return None


class DropoutBattery:
    def __init__(self, subject: Subject, report: Report):
        self.s, self.r = subject, report
        self.p = float(subject.settings["p"])
        self.self_train = source.tests_self_train(subject.cls)
        self.train_rate = float("nan")
        self.scale_ok = False
        self.shape: tuple[int, ...] = (N_ROWS, N_COLS)    # 3-D for a sequences-only layer

    def make(self, train: bool = True, dtype=None, p: float | None = None):
        values = dict(self.s.passed)
        if p is not None:
            values["p"] = p
        return self.s.make(None, dtype, train=train, values=values)

    def x(self, dtype=torch.float32, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(7)
        return (1.0 + torch.rand(shape or self.shape, generator=g)).to(dtype)   # no zeros

    def small(self, rows: int) -> tuple[int, ...]:
        """A small input of the layer's kind: (rows, cols) or (rows, time, features)."""
        return (rows, N_COLS // 10) if len(self.shape) == 2 else (rows, 6, 7)

    # -- a global p ---------------------------------------------------------------------
    @probe("p read from a global")
    def reads_global(self) -> None:
        """forward reads the module's ``p`` (fastbook's ``bernoulli_(1-p)``): with the
        constructor's p and the global set apart, the keep rate says which one it uses."""
        names = [n for n in self.s.global_reads if n in loader.P_NAMES + loader.KEEP_NAMES]
        if not names:
            return
        name, line = names[0], self.s.global_reads[names[0]]
        defined = name not in self.s.globals
        p_global = 0.5 if abs(self.p - 0.5) > 0.1 else 0.2
        self.s.globals[name] = p_global
        x = self.x()
        torch.manual_seed(8)
        o = call(self.make(), x)
        self.s.globals[name] = self.p             # from here on: the layer's own p
        where = (f"the file's own global {name} is used" if defined else
                 f"the file defines no global {name}: forward raises NameError unless one "
                 f"exists")
        if not o.ok:
            self.r.add(finding("reads-global", [f"`{name}` at line {line} of the class is "
                                                f"not an argument or local: {where}",
                                                f"with the global {name} = {p_global}: "
                                                f"{o.why()}"]))
            return
        kept = float((o.y != 0).double().mean())
        follows = abs(kept - (1 - p_global)) < abs(kept - (1 - self.p))
        self.r.check("p is the layer's own, not a global", not follows)
        if follows:
            self.r.add(finding("reads-global", [
                f"`{name}` at line {line} of the class is not an argument or local: {where}",
                f"constructed with p = {self.p} and the module's global {name} = {p_global}, "
                f"it keeps {kept:.1%} of units: the global's rate"],
                title=f"forward reads the module's global `{name}`, not the layer's own p",
                fix=f"self.{name}"))

    # -- training: keep rate, scale, fresh masks ----------------------------------------
    def first_forward(self, inst) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The training forward on 100 000 units: 2-D, or (batch, time, features) for a layer
        that takes only sequences (AWD-LSTM's LockedDropout indexes x.size(2))."""
        x = self.x()
        torch.manual_seed(1)
        o = call(inst, x)
        if o.ok and o.y.shape == x.shape:
            return x, o.y
        why = o.why() if not o.ok else f"output shape {tuple(o.y.shape)}"
        x3 = self.x(shape=SEQUENCES)
        torch.manual_seed(1)
        o3 = call(inst, x3)
        if o3.ok and o3.y.shape == x3.shape:
            self.shape = SEQUENCES
            self.r.notes.append(f"on {tuple(x.shape)} float32 input {why}; the checks use "
                                f"(batch, time, features) input {SEQUENCES}")
            return x3, o3.y
        self.r.check("forward in training", False, why)
        unrunnable(self.s.cls, why)
        if not o.ok:
            self.r.add(finding("forward-error", f"on {tuple(x.shape)} float32 input: {why}"))
        else:
            self.r.add(finding("shape-changed", f"input {tuple(x.shape)} gives output "
                               f"{tuple(o.y.shape)}"))
        return None

    @probe("keep rate and scale in training")
    def train_mode(self) -> bool:
        p = self.p
        inst = self.make()
        got = self.first_forward(inst)
        if got is None:
            return False
        x, y = got[0], got[1].double()
        keep = y != 0
        shared = shared_dims(keep)
        # a mask shared along some dims is one draw per the others: test those draws
        drawn = independent(keep, shared)
        n, k = drawn.numel(), int(drawn.sum())
        rate = k / n
        self.train_rate = rate
        z = z_score(k, n, 1.0 - p)
        rate_ok = abs(z) < Z_LIMIT
        self.r.check(f"keep rate at p={p}", rate_ok, f"kept {rate:.1%}, expected {1 - p:.0%} "
                     f"(z = {z:.1f})")
        ratio = y[keep] / x.double()[keep] if k else torch.ones(1, dtype=torch.float64)
        s = float(ratio.median())
        binary = bool(((ratio - s).abs() <= 1e-3 * abs(s)).all())
        expect = 1.0 / (1.0 - p)
        scale_ok = binary and abs(s / expect - 1.0) < 1e-3
        self.scale_ok = scale_ok and k < n            # the reference's scale, measured
        self.r.check("kept units scaled by 1/(1-p)", scale_ok, f"scale {s:.4g}")
        ev = (f"on {n} {'independent ' if shared else ''}units at p={p}: kept {k} "
              f"({rate:.1%}), expected {1 - p:.0%} "
              f"(binomial z = {z:.0f}); E[y] = {rate * s:.3f} x in training")
        if not rate_ok:
            scale_ok = self.rate_findings(k, n, p, s, binary, ev) or scale_ok
        if k == n:
            pass                    # nothing dropped: the rate finding says it all
        elif not binary:
            self.r.add(finding("mask-not-binary", f"kept units are scaled by factors from "
                               f"{float(ratio.min()):.3g} to {float(ratio.max()):.3g}"))
        elif not scale_ok:
            self.scale_findings(s, p, rate, expect)
        # a fresh mask on every call
        torch.manual_seed(2)
        o2 = call(inst, x)
        if o2.ok and 0 < k < n:      # (a mask that keeps all or nothing is always "the same")
            fresh = not torch.equal(keep, o2.y != 0)
            self.r.check("a fresh mask on every call", fresh)
            if not fresh:
                self.r.add(finding("mask-not-fresh", f"two training calls on the same input "
                                   f"drop exactly the same {n - k} units"))
        self.sharing(shared)
        return True

    def rate_findings(self, k: int, n: int, p: float, s: float, binary: bool, ev: str) -> bool:
        """Name the keep-rate mistake; True where p is the keep probability and kept units
        are scaled by 1/p, consistently (that scale is then no finding of its own)."""
        rate = k / n
        head = f"keeps {rate:.0%} of units at p={p}, expected {1 - p:.0%}"
        if abs(z_score(k, n, keep_share_of_randn(p))) < Z_LIMIT:
            self.r.add(finding("randn-mask", ev, title=f"{head}: the mask is drawn from "
                               f"randn, not rand"))
        elif abs(z_score(k, n, p)) < Z_LIMIT:
            consistent = binary and p > 0 and abs(s * p - 1.0) < 1e-3   # scale 1/p
            if consistent:
                ev += ("; kept units are scaled by 1/p, consistent with p as the keep "
                       "probability")
            self.r.add(finding("keep-drop-confused", ev, title=f"{head}: p is used as the "
                               f"keep probability"))
            return consistent
        elif k == n:
            self.r.add(finding("keep-rate", ev, title=f"drops nothing in training at p={p}"))
        else:
            self.r.add(finding("keep-rate", ev, title=head))
        return False

    def scale_findings(self, s: float, p: float, rate: float, expect: float) -> None:
        ev_s = (f"kept units are x * {s:.4g}, expected x / (1 - p) = x * {expect:.4g}; "
                f"E[y] = {rate * s:.3f} x in training")
        if self.shape != (N_ROWS, N_COLS):
            ev_s += f" (on {self.shape} (batch, time, features) input)"
        if abs(s - 1.0) < 1e-3:
            self.r.add(finding("no-rescale", ev_s, title=f"kept units are not scaled by "
                               f"1/(1 - p): E[y] = {rate:.2f} x in training, x in eval"))
        elif abs(s - (1.0 - p)) < 1e-3:
            self.r.add(finding("wrong-scale", ev_s, title="kept units are multiplied by "
                               "(1 - p) instead of divided by it"))
        elif p > 0 and abs(s * p - 1.0) < 1e-3:
            self.r.add(finding("wrong-scale", ev_s, title="kept units are scaled by 1/p, "
                               "not 1/(1 - p)"))
        else:
            self.r.add(finding("wrong-scale", ev_s))

    @probe("masks on (batch, time, features) input")
    def sharing(self, shared: tuple[int, ...]) -> None:
        """A mask shared along a dimension: on (batch, time, features) input a deliberate
        variant (locked / variational dropout, word dropout, drop path), named; otherwise
        (every sample dropping the same units) a mistake."""
        shared3 = shared
        if len(self.shape) == 2:
            x3 = self.x(shape=SEQUENCES)
            torch.manual_seed(9)
            o3 = call(self.make(), x3)
            shared3 = shared_dims(o3.y != 0) if o3.ok and o3.y.shape == x3.shape else None
        variant = sequence_variant(shared3) if shared3 else None
        self.r.check("mask has x's full shape", not shared and not shared3)
        if variant is not None:
            id, what = variant
            self.r.add(finding(id, f"on {SEQUENCES} (batch, time, features) input: {what}"
                               + (f"; on {(N_ROWS, N_COLS)} input the mask is shared along "
                                  f"dim {shared[0]}" if shared and len(self.shape) == 2
                                  else "")))
        elif shared or shared3:
            dims, shape = (shared, self.shape) if shared else (shared3, SEQUENCES)
            axis = {(0,): "row", (1,): "column"}.get(dims) if len(shape) == 2 else None
            title = (f"one mask is shared by every {axis}" if axis else
                     f"one mask is shared along dims {dims} of a {shape} input")
            self.r.add(finding("mask-shared", f"on {shape} input the mask does not change "
                               f"along dim{'s' if len(dims) > 1 else ''} "
                               f"{', '.join(map(str, dims))}", title=title))

    # -- eval -----------------------------------------------------------------------------
    @probe("identity in eval")
    def evaluation(self) -> None:
        x, p = self.x(), self.p
        torch.manual_seed(3)
        o = call(self.make(train=False), x)
        if not o.ok:
            self.r.check("identity in eval", False, o.why())
            self.r.add(finding("forward-error", f"in eval(): {o.why()}",
                               title="forward raises an error in eval()"))
            return
        ok = torch.equal(o.y, x)
        self.r.check("identity in eval", ok)
        if ok:
            return
        zeros = float((o.y == 0).double().mean())
        if zeros > 0 and self.train_rate == 1.0:
            self.r.add(finding("eval-not-identity", f"in eval() {zeros:.1%} of the units are "
                               f"zeroed, in training none", title="train() and eval() are "
                               "swapped: it drops in eval and not in training",
                               cause="the test of self.training is inverted"))
        elif zeros > 0:
            ev = f"in eval() {zeros:.1%} of the units are still zeroed"
            if self.self_train:
                self.r.add(finding("eval-ignored", ev, title="eval() changes nothing: "
                                   "`self.train` is a method and always true; test "
                                   "`self.training`", cause="`if self.train:` tests the bound "
                                   "method nn.Module.train, which is always truthy, so the "
                                   "dropout branch runs in eval too"))
            else:
                self.r.add(finding("eval-ignored", ev))
        elif close(o.y, x * (1.0 - p), 1e-5, 1e-6):
            if self.r.has("no-rescale"):
                f = self.r.get("no-rescale")
                self.r.findings.remove(f)
                self.r.add(finding("non-inverted", f.evidence + [f"in eval() y = x * {1 - p:.3g}"]))
            else:
                self.r.add(finding("eval-not-identity", f"in eval() y = x * {1 - p:.3g}",
                                   title="eval() scales the input by (1 - p)"))
        else:
            self.r.add(finding("eval-not-identity", f"in eval(): {diff(o.y, x)}"))

    # -- gradient -------------------------------------------------------------------------
    @probe("gradient")
    def gradient(self) -> None:
        g = torch.Generator().manual_seed(11)
        shape = (50, 40) if len(self.shape) == 2 else (8, 10, 25)
        x = (1.0 + torch.rand(shape, generator=g, dtype=torch.float64)).requires_grad_(True)
        dy = torch.randn(shape, generator=g, dtype=torch.float64)
        torch.manual_seed(4)
        inst = self.make(dtype=torch.float64)
        o = call(inst, x)
        name = "gradient: dy * keep / (1 - p)"
        if not o.ok:
            self.r.check(name, False, o.why())
            return
        try:
            with guard.running(backward_call(inst, x)):
                (dx,) = torch.autograd.grad((o.y * dy).sum(), x, allow_unused=True)
        except RuntimeError as e:
            dx, err = None, str(e).splitlines()[0]
        else:
            err = "no gradient reaches the input"
        if dx is None:
            self.r.check(name, False, err)
            self.r.add(finding("grad-mismatch", err))
            return
        keep = o.y.detach() != 0
        # the reference backward, fed the layer's own mask
        want = dr.backward(dy, dr.Cache(keep, 1.0 / (1.0 - self.p) if self.p < 1 else 0.0))
        if not self.scale_ok:
            want = dy * (o.y.detach() / x.detach())       # its own scale: test the chain only
        ok = close(dx, want, 1e-6, 1e-9)
        self.r.check(name, ok, "" if ok else diff(dx, want))
        if not ok:
            self.r.add(finding("grad-mismatch", f"input gradient with the layer's own mask: "
                               f"{diff(dx, want)}"))

    # -- p --------------------------------------------------------------------------------
    @probe("p validation")
    def validation(self) -> None:
        if not self.s.sig.takes("p"):
            self.r.check("p validated", None, "the constructor takes no p")
            return
        x = self.x()[:8]                                # 8 rows (sequences)
        accepted = []
        for bad in (1.5, -0.1):
            try:
                inst = self.make(p=bad)
            except LoadError:
                continue
            torch.manual_seed(5)
            if call(inst, x).ok:
                accepted.append(bad)
        self.r.check("p outside [0, 1] rejected", not accepted)
        if accepted:
            name = self.s.sig.role_arg.get("p") or self.s.sig.keep_arg or \
                f"forward's {self.s.sig.forward_arg.get('p')}"
            self.r.add(finding("p-not-validated", f"{self.s.cls.__name__}({name}={accepted[0]}) "
                               f"constructs and runs without an error"))
        try:
            inst = self.make(p=1.0)
        except LoadError as e:
            self.r.check("p = 1 gives zeros", None, f"rejected: {e}")
            return
        o = call(inst, x)
        if not o.ok:
            self.r.check("p = 1 gives zeros", False, o.why())
            self.r.add(finding("p-one-nan", f"with p = 1 forward raises {o.why()}",
                               title=f"p = 1 raises {type(o.error).__name__} instead of "
                               f"giving zeros" if o.error is not None else None))
            return
        finite = bool(torch.isfinite(o.y).all())
        self.r.check("p = 1 gives zeros", finite and bool((o.y == 0).all()))
        if not finite:
            nan, inf = int(torch.isnan(o.y).sum()), int(torch.isinf(o.y).sum())
            self.r.add(finding("p-one-nan", f"with p = 1: {nan} NaN and {inf} inf of "
                               f"{o.y.numel()} outputs", title="p = 1 gives NaN/inf instead of "
                               "zeros"))

    # -- dtype and device -----------------------------------------------------------------
    @probe("float16 and bfloat16 input")
    def half(self, dtype: torch.dtype) -> None:
        name = str(dtype).replace("torch.", "")
        x = self.x(dtype)
        torch.manual_seed(6)
        o = call(self.make(), x)
        if not o.ok:
            self.r.check(f"{name} input", False, o.why())
            return
        ok = o.y.dtype == x.dtype
        self.r.check(f"{name} in, {name} out", ok, str(o.y.dtype))
        if not ok:
            cause = (f"the mask is converted with .float(), and float32 * {name} is float32"
                     if source.mentions(self.s.cls, ".float()") else None)
            self.r.add(finding("dtype-changed", f"{name} input gives {o.y.dtype} output",
                               title=f"returns {str(o.y.dtype).replace('torch.', '')} for "
                               f"{name} input", cause=cause))

    @probe("another device (meta)")
    def device(self) -> None:
        inst = self.make()
        try:
            with guard.running(f"moving a {self.s.cls.__name__} to the meta device"):
                modulelike.to(inst, "meta")
        except Exception as e:
            self.r.check("another device (meta)", None, str(e))
            return
        o = call(inst, torch.empty(self.small(4), device="meta"))
        if o.ok:
            self.r.check("another device (meta)", o.y.device.type == "meta")
            return
        msg = o.why()
        if "device" not in msg:
            self.r.check("another device (meta)", None, f"inconclusive: {msg}")
            return
        self.r.check("another device (meta)", False, msg)
        cause = None
        if source.mentions(self.s.cls, "(x.shape)", "(input.shape)", ".size())"):
            cause = ("the mask is made with torch.rand/randn(x.shape), which lives on the CPU "
                     "whatever x's device")
        self.r.add(finding("device-mismatch", f"with the input on the meta device: {msg}",
                           cause=cause))

    def run(self) -> None:
        """The probes above, in their order; when the training forward does not run at all,
        the rest are skipped."""
        self.reads_global()
        if not self.train_mode():
            return
        self.evaluation()
        self.gradient()
        self.validation()
        self.half(torch.float16)
        self.half(torch.bfloat16)
        self.device()


def run(subject: Subject, report: Report) -> None:
    choose_p(subject)
    DropoutBattery(subject, report).run()
