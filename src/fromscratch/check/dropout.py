r"""Dropout: in training keep each unit with probability 1 - p and scale it by 1/(1 - p), so
E[y] = x; in eval return x. The reference is ``fromscratch.ops.dropout``: the checker
reads the mask the layer drew (y != 0) and feeds it to the op, so the comparison is exact
although the draws are random.

    keep rate      binomial test: z = (k - n(1-p)) / sqrt(n p (1-p)), |z| < 5 on n = 100 000
    mistakes       randn > p keeps P(Z > p) (46% at p = 0.1); rand < p keeps p
    scale          kept units must be x / (1 - p); 1 means no rescaling, E[y] = (1 - p) x
    fresh masks    two calls draw different masks; rows (columns) do not share one
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
from . import guard, source
from .guard import probe
from .findings import Report, finding
from .loader import LoadError
from .probes import Subject, backward_call, call, close, diff, read_setting

N_ROWS, N_COLS = 400, 250
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


class DropoutBattery:
    def __init__(self, subject: Subject, report: Report):
        self.s, self.r = subject, report
        self.p = float(subject.settings["p"])
        self.self_train = source.tests_self_train(subject.cls)
        self.train_rate = float("nan")
        self.scale_ok = False

    def make(self, train: bool = True, dtype=None, p: float | None = None):
        values = dict(self.s.passed)
        if p is not None:
            values["p"] = p
        return self.s.make(None, dtype, train=train, values=values)

    def x(self, dtype=torch.float32) -> torch.Tensor:
        g = torch.Generator().manual_seed(7)
        return (1.0 + torch.rand((N_ROWS, N_COLS), generator=g)).to(dtype)   # no zeros

    def run(self) -> None:
        if not self.train_mode():
            return
        self.evaluation()
        self.gradient()
        self.validation()
        self.half(torch.float16)
        self.half(torch.bfloat16)
        self.device()

    # -- training: keep rate, scale, fresh masks ----------------------------------------
    @probe("keep rate and scale in training")
    def train_mode(self) -> bool:
        p, x = self.p, self.x()
        inst = self.make()
        torch.manual_seed(1)
        o = call(inst, x)
        if not o.ok:
            self.r.check("forward in training", False, o.why())
            self.r.add(finding("forward-error", f"on {tuple(x.shape)} float32 input: {o.why()}"))
            return False
        y = o.y.double()
        keep = y != 0
        # a mask shared by every row (column) is one draw per column (row): test that draw
        some = 0 < int(keep.sum()) < keep.numel()
        rows = some and bool((keep == keep[:1]).all())
        cols = some and bool((keep == keep[:, :1]).all())
        drawn = keep[0] if rows else keep[:, 0] if cols else keep
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
        ev = (f"on {n} {'independent ' if rows or cols else ''}units at p={p}: kept {k} "
              f"({rate:.1%}), expected {1 - p:.0%} "
              f"(binomial z = {z:.0f}); E[y] = {rate * s:.3f} x in training")
        if not rate_ok:
            head = f"keeps {rate:.0%} of units at p={p}, expected {1 - p:.0%}"
            if abs(z_score(k, n, keep_share_of_randn(p))) < Z_LIMIT:
                self.r.add(finding("randn-mask", ev, title=f"{head}: the mask is drawn from "
                                   f"randn, not rand"))
            elif abs(z_score(k, n, p)) < Z_LIMIT:
                if binary and p > 0 and abs(s * p - 1.0) < 1e-3:   # consistently: scale 1/p
                    ev += ("; kept units are scaled by 1/p, consistent with p as the keep "
                           "probability")
                    scale_ok = True
                self.r.add(finding("keep-drop-confused", ev, title=f"{head}: p is used as the "
                                   f"keep probability"))
            elif k == n:
                self.r.add(finding("keep-rate", ev, title=f"drops nothing in training at p={p}"))
            else:
                self.r.add(finding("keep-rate", ev, title=head))
        if k == n:
            pass                    # nothing dropped: the rate finding says it all
        elif not binary:
            self.r.add(finding("mask-not-binary", f"kept units are scaled by factors from "
                               f"{float(ratio.min()):.3g} to {float(ratio.max()):.3g}"))
        elif not scale_ok:
            ev_s = (f"kept units are x * {s:.4g}, expected x / (1 - p) = x * {expect:.4g}; "
                    f"E[y] = {rate * s:.3f} x in training")
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
        # a fresh mask on every call, of x's full shape
        torch.manual_seed(2)
        o2 = call(inst, x)
        if o2.ok and 0 < k < n:      # (a mask that keeps all or nothing is always "the same")
            keep2 = o2.y != 0
            fresh = not torch.equal(keep, keep2)
            self.r.check("a fresh mask on every call", fresh)
            if not fresh:
                self.r.add(finding("mask-not-fresh", f"two training calls on the same input "
                                   f"drop exactly the same {n - k} units"))
            self.r.check("mask has x's full shape", not (rows or cols))
            if rows or cols:
                axis = "row" if rows else "column"
                self.r.add(finding("mask-shared", f"on {tuple(x.shape)} input every {axis} has "
                                   f"the same mask", title=f"one mask is shared by every {axis}"))
        return True

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
        x = (1.0 + torch.rand((50, 40), generator=g, dtype=torch.float64)).requires_grad_(True)
        dy = torch.randn((50, 40), generator=g, dtype=torch.float64)
        torch.manual_seed(4)
        inst = self.make(dtype=torch.float64)
        o = call(inst, x, grad=True)
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
        x = self.x()[:8]
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
            name = self.s.sig.role_arg.get("p") or self.s.sig.keep_arg
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
                inst.to("meta")
        except Exception as e:
            self.r.check("another device (meta)", None, str(e))
            return
        o = call(inst, torch.empty((4, 5), device="meta"))
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


def run(subject: Subject, report: Report) -> None:
    choose_p(subject)
    DropoutBattery(subject, report).run()
