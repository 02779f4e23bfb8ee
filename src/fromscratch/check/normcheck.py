"""The battery shared by LayerNorm, RMSNorm and BatchNorm.

1. Forward on ordinary inputs (rows with their own mean and spread, several shapes, hidden
   sizes that are not powers of two), in float64, against ``fromscratch.ops`` with the
   person's own eps. On a difference, the mistake is named by the model in ``normmodel``
   that reproduces the output (with weight 1 and bias 0), and the affine part is checked
   separately (output with a random weight and bias against weight * xhat + bias).
2. Edges, against the model found in 1 (so a known mistake is not counted twice): rows whose
   variance is comparable to eps (where eps is placed), constant rows, a mean of 1e4 in
   float32 (one-pass variance), float16 input in the hundreds (overflow), float16 and
   bfloat16 precision and output dtype, another device (the meta device stands in for a
   GPU).
3. Gradients in float64 with a random upstream gradient: against ``ops`` backward when the
   forward is right, else against finite differences of the layer's own forward; a
   difference is explained by the detached-statistics models.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from . import guard, mapping, modulelike, source
from .guard import probe
from .findings import Report, finding
from .normmodel import (NormModel, agree, estimate_eps, eps_variants, normalise, search,
                        space)
from .errors import LoadError
from .probes import (Subject, affine_values, call, close, diff, directional, generator,
                     grads, modifies_input, randn, resolve_eps, shape_str)

Reference = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None, float],
                     tuple[torch.Tensor, Callable]]


@dataclass
class NormSpec:
    kind: str
    name: str                                   # "LayerNorm"
    roles: tuple[str, ...]
    centre: bool                                # does the reference subtract the mean?
    ref_dims: Callable[[int], tuple[int, ...]]  # ndim -> dims the reference reduces over
    reference: Reference                        # (x, w, b, eps) -> (y, dy -> (dx, dw, db))
    probes: list[tuple[int, tuple[int, ...]]]   # (size, input shape); the first is primary
    ordinary: Callable[[tuple[int, ...], torch.Generator], torch.Tensor]
    # edge inputs of the primary shape, so the model found on it applies as is
    small_variance: Callable[[tuple[int, ...], float, torch.Generator], torch.Tensor]
    constant: Callable[[tuple[int, ...]], torch.Tensor]
    large_mean: Callable[[tuple[int, ...], torch.Generator], torch.Tensor] | None
    titles: dict[str, str] = field(default_factory=dict)
    terms: dict[frozenset, str] = field(default_factory=dict)  # detached stats -> missing term

    def ref_model(self, ndim: int) -> NormModel:
        return NormModel(self.ref_dims(ndim), centre=self.centre)


def missing_terms(batch: bool = False) -> dict[frozenset, str]:
    """What dx lacks when a centring norm's statistics are detached, keyed by the detached
    set, both first (``explain_dx`` names the first set whose gradient matches). With
    xhat = (x - mean) / sqrt(var + eps) and g = dy * weight,

        dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)

    -mean(g) is the path through the mean, -xhat * mean(g * xhat) the one through the
    variance. ``batch``: the statistics are the batch's (BatchNorm), not each row's."""
    whose = "batch " if batch else ""
    return {
        frozenset({"mean", "var"}): f"both the -mean(g) and the -xhat * mean(g * xhat) terms "
                                    f"are missing ({whose}mean and variance are treated as "
                                    f"constants)",
        frozenset({"var"}): f"the -xhat * mean(g * xhat) term is missing (the {whose}variance "
                            f"is treated as a constant)",
        frozenset({"mean"}): f"the -mean(g) term is missing (the {whose}mean is treated as a "
                             f"constant)",
    }


def formula(m: NormModel, ref: NormModel) -> str:
    """The model as a formula a person recognises in their own code."""
    sq = "(x - mean)^2" if m.centre else "x^2"
    agg = (f"sum({sq})" if m.total else f"sum({sq}) / (n - 1)" if m.ddof else f"mean({sq})")
    if m.root:
        den = {"inside": f"sqrt({agg} + eps)", "outside": f"(sqrt({agg}) + eps)",
               "none": f"sqrt({agg})"}[m.eps]
    else:
        den = f"({agg} + eps)" if m.eps != "none" else f"{agg}"
    text = f"{'(x - mean)' if m.centre else 'x'} {'//' if m.floor else '/'} {den}"
    if m.dims != ref.dims:
        text += f", statistics over dims {m.dims}"
    if not m.keepdim:
        text += ", statistics without keepdim"
    if m.eps_value is not None:
        text += f", eps = {m.eps_value:.3g}"
    return text


class NormBattery:
    """The checks, in the order ``run`` calls them. What a phase learns about the layer the
    later ones use is returned to ``run``, which stores it, except where it changes how the
    layer is driven (the mapping, the eps it is built with), noted in the phase itself:

        weight_convention   (the weight's offset, Gemma's 1 + weight, set in the mapping)
        forward             returns the probes that ran, each with the formula it computes;
                            run takes the one closest to the reference: m0, size, shape.
                            (The mapping swapped when weight and bias are.)
        eps_placement       returns m_eps, m0 with eps placed as the layer places it.
                            (A layer with no eps setting: the eps it uses, measured.)
        the rest            report findings and learn nothing
    """

    def __init__(self, subject: Subject, spec: NormSpec, report: Report):
        self.s, self.spec, self.r = subject, spec, report
        self.eps = subject.settings.get("eps")
        self.gen = generator(0)
        self.m0: NormModel | None = None      # the person's forward on ordinary inputs
        self.m_eps: NormModel | None = None   # ... with eps placed as they place it
        self.size, self.shape = spec.probes[0]
        self.custom_backward = source.has_autograd_function(subject.module)
        self.affine_ok = True                 # weight * xhat + bias, as the reference
        self.ran: list[tuple[int, int, tuple[int, ...], NormModel]] = []  # probes that ran

    # -- helpers ------------------------------------------------------------------------
    def e(self, dtype: torch.dtype) -> float:
        return resolve_eps(self.eps, dtype)

    def make(self, size: int, w=None, b=None, dtype=torch.float64, train=True):
        n = size
        ones = torch.ones(n, dtype=torch.float64)
        return self.s.make(size, dtype, ones if w is None else w,
                           torch.zeros(n, dtype=torch.float64) if b is None else b, train)

    def value(self, inst, role: str) -> torch.Tensor | None:
        """The weight / bias the layer uses (Gemma's convention: 1 + its tensor)."""
        slot = self.s.mapping.get(role) if self.s.mapping else None
        return None if slot is None else \
            mapping.read(inst, slot).detach().double().reshape(-1)

    def reference(self, x: torch.Tensor, inst, eps: float | None = None):
        eps = self.e(x.dtype) if eps is None else eps
        return self.spec.reference(x.double(), self.value(inst, "weight"),
                                   self.value(inst, "bias"), eps)

    def expected(self, x: torch.Tensor, m: NormModel, eps: float) -> torch.Tensor | None:
        """xhat under model m; the reference itself comes from ops."""
        if m == self.spec.ref_model(x.dim()):
            return self.spec.reference(x.double(), None, None, eps)[0]
        return normalise(x.double(), m, eps)

    def affine(self, g: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None):
        y = g.double()
        if w is not None:
            y = y * w
        return y + b if b is not None else y

    def title(self, id: str, default: str | None = None) -> str | None:
        return self.spec.titles.get(id, default)

    def deviation_findings(self, m: NormModel, x: torch.Tensor, y_dev: str) -> None:
        ref = self.spec.ref_model(x.dim())
        ev = f"on {shape_str(x)} input the output is {formula(m, ref)} (times weight, plus bias); "
        for id in m.deviations(ref):
            if self.r.has(id) and id != "wrong-dims":
                self.r.get(id).evidence.append(f"the same on {shape_str(x)} input")
                continue
            title = self.title(id)
            if id == "wrong-dims":
                title = (f"normalises over dims {m.dims} of a {tuple(x.shape)} input; "
                         f"{self.spec.name} normalises over dims {ref.dims}")
                if self.s.channels_first is not None:      # say it in the layer's layout
                    own = sorted({0 if d == 0 else 1 if d == x.dim() - 1 else 2
                                  for d in m.dims})
                    title += (f" (in its own layout, (N, C, L), it normalises over dims "
                              f"{tuple(own)})")
            extra = ("every normalised value is an integer; " if id == "floor-division" else "")
            severity = None
            if id == "eps-ignored":            # it shows on ordinary inputs: wrong
                title = (f"normalises with eps = {m.eps_value:.3g}, not the layer's eps = "
                         f"{self.e(x.dtype):.3g}")
                severity = "wrong"
            self.r.add(finding(id, ev + extra + y_dev, title=title, severity=severity))

    # -- 1. ordinary forward ------------------------------------------------------------
    @probe("forward on ordinary inputs")
    def forward(self) -> list[tuple[int, int, tuple[int, ...], NormModel]]:
        """Ordinary inputs of every probe shape, plain and with a random weight and bias:
        (deviations from the reference, size, shape, the formula the layer computes) for
        each probe the formula was found on."""
        self.gen = generator(0)   # each probe its own draws
        errors: list[str] = []
        ran: list[tuple[int, int, tuple[int, ...], NormModel]] = []   # (deviations, ...)
        for size, shape in self.spec.probes:
            x = self.spec.ordinary(shape, self.gen)
            name = f"forward {shape_str(x)}"
            w, b = affine_values(size, self.gen)
            plain, scaled = self.make(size), self.make(size, w, b)
            o1, o2 = call(plain, x), call(scaled, x)
            if not (o1.ok and o2.ok):
                why = (o1 if not o1.ok else o2).why()
                errors.append(f"{shape_str(x)}: {why}")
                self.r.check(name, False, why)
                continue
            if o1.y.shape != x.shape:
                self.r.add(finding("shape-changed", f"input {tuple(x.shape)} gives output "
                                   f"{tuple(o1.y.shape)}"))
                self.r.check(name, False, "shape")
                continue
            if modifies_input(self.make(size), x):
                self.r.add(finding("input-modified", f"after a call on {shape_str(x)} input "
                                   f"the input itself has changed"))
            y_ref, _ = self.reference(x, scaled)
            w_, b_ = self.value(scaled, "weight"), self.value(scaled, "bias")
            if close(o2.y, y_ref):
                model = self.spec.ref_model(x.dim())
                self.r.check(name, True)
            elif self.swapped(x, o2.y, w_, b_):
                model = self.spec.ref_model(x.dim())
                self.r.check(name, False, "weight and bias swapped")
            else:
                self.r.check(name, False, diff(o2.y, y_ref))
                model = search(o1.y.double(), x, self.e(x.dtype),
                               space(self.spec.ref_model(x.dim()), x.dim())) or \
                    self.other_eps(o1.y.double(), x)
                if not agree(o2.y.double(), self.affine(o1.y, w_, b_),
                             model is not None and model.floor):
                    self.affine_finding(o1.y, o2.y, w_, b_, x)
                if model is None:
                    self.r.add(finding("forward-mismatch", f"on {shape_str(x)} input: "
                                       f"{diff(o2.y, y_ref)}; no known mistake reproduces it"))
                else:
                    self.deviation_findings(model, x, diff(o2.y, y_ref))
            if model is not None:
                ran.append((len(model.deviations(self.spec.ref_model(x.dim()))), size, shape,
                            model))
        if len(errors) == len(self.spec.probes):
            self.all_failed(errors)
        elif errors:
            for e in errors:
                cause = None
                if "running_mean should contain" in e:
                    cause = ("the layer is channels-first (torch.nn.BatchNorm1d expects (N, C, "
                             "L)); BatchNorm here is channels-last, (N, ..., C), as in the seed")
                self.r.add(finding("forward-error", e, title=f"forward raises an error on "
                                   f"{e.split(':')[0]} input", cause=cause))
        return ran

    def all_failed(self, errors: list[str]) -> None:
        """Every ordinary input raised. A square input shows a keepdim mistake: statistics
        of shape (N,) broadcast against (N, n) only when N == n."""
        n = self.spec.probes[0][0]
        x = self.spec.ordinary((n, n), self.gen)
        o = call(self.make(n), x)
        if o.ok and o.y.shape == x.shape:
            m = search(o.y.double(), x, self.e(x.dtype), space(self.spec.ref_model(2), 2))
            if m is not None and not m.keepdim:
                ref = self.spec.ref_model(2)
                self.r.add(finding("missing-keepdim", [errors[0], f"on a square {tuple(x.shape)} "
                                   f"input it runs, and its output is {formula(m, ref)}"]))
                return
        unrunnable(self.s.cls, errors[0])
        self.r.add(finding("forward-error", errors, title="forward raises an error on every "
                           "input shape tried"))

    def other_eps(self, got: torch.Tensor, x: torch.Tensor) -> NormModel | None:
        """The reference with another eps (large enough to show on ordinary rows)."""
        ref = self.spec.ref_model(x.dim())
        est = estimate_eps(got, x, ref)
        if est is None or est <= 0 or not agree(got, normalise(x, replace(ref, eps_value=est),
                                                               self.e(x.dtype))):
            return None
        if self.s.sources.get("eps", "").startswith("not found"):
            self.adopt_eps(est)
            return ref
        return replace(ref, eps_value=est)

    def swapped(self, x, y, w, b) -> bool:
        """y = bias * xhat + weight: the two are used the wrong way round. The mapping is
        swapped from here on, so the other checks see the layer as it works."""
        if w is None or b is None or not close(y, self.affine(
                self.expected(x, self.spec.ref_model(x.dim()), self.e(x.dtype)), b, w)):
            return False
        m = self.s.mapping.slots
        m["weight"], m["bias"] = m["bias"], m["weight"]
        self.r.add(finding("affine-wrong", f"on {shape_str(x)} input with a random weight and "
                           f"bias the output is {m['weight'].path} * xhat + {m['bias'].path}",
                           title=f"{m['bias'].path} and {m['weight'].path} are swapped: "
                           f"y = {m['weight'].path} * xhat + {m['bias'].path}",
                           cause=f"{m['bias'].path} (initialised as the scale) is used as the "
                           f"shift and {m['weight'].path} as the scale",
                           fix=f"y = {m['bias'].path} * xhat + {m['weight'].path}"))
        self.r.notes.append(f"{m['weight'].path} is checked as the weight and "
                            f"{m['bias'].path} as the bias from here on")
        self.affine_ok = True
        return True

    def affine_finding(self, g, y, w, b, x) -> None:
        self.affine_ok = False
        tests = []
        if w is not None and b is not None:
            tests = [(self.affine(g, None, b), "the weight is not applied: y = xhat + bias"),
                     (self.affine(g, w, None), "the bias is not added: y = weight * xhat"),
                     (self.affine(g.double() + b, w, None), "the bias is added before scaling: "
                      "y = weight * (xhat + bias)"),
                     (g.double(), "neither weight nor bias is applied")]
        elif w is not None:
            tests = [(g.double(), "the weight is not applied")]
        cause = next((why for want, why in tests if close(y, want)), None)
        self.r.add(finding("affine-wrong", f"on {shape_str(x)} input with a random weight and "
                           f"bias: {diff(y, self.affine(g, w, b))}",
                           cause=cause or "the output with a random weight and bias is not "
                           "weight * (output with weight 1, bias 0) + bias"))

    # -- registration -------------------------------------------------------------------
    @probe("parameters registered")
    def registration(self) -> None:
        inst = self.make(self.size, dtype=None)
        if not modulelike.is_module(inst):
            self.r.check("a torch.nn.Module", False, "a plain class")
            self.r.add(finding("not-a-module", modulelike.lacks(inst)))
            return
        params = [n for n, _ in inst.named_parameters()]
        plain = [s.path for r, s in (self.s.mapping.slots.items() if self.s.mapping else ())
                 if r in ("weight", "bias") and s.kind == "plain"]
        self.r.check("parameters registered", not plain)
        if plain:
            names = " and ".join(plain)
            what = "is a plain tensor, not an nn.Parameter" if len(plain) == 1 else \
                "are plain tensors, not nn.Parameters"
            self.r.add(finding(
                "param-not-registered", f"parameters() = {params}, state_dict() keys = "
                f"{list(inst.state_dict())}", title=f"{names} {what}",
                fix="; ".join(f"self.{p} = nn.Parameter(...)" for p in plain)))

    @probe("train() vs eval()")
    def modes(self) -> None:
        """LayerNorm and RMSNorm behave the same in train and eval, with or without grad."""
        self.gen = generator(10)   # each probe its own draws
        x = self.spec.ordinary(self.shape, self.gen)
        a, b = call(self.make(self.size), x), call(self.make(self.size, train=False), x)
        c = call(self.make(self.size), x, grad=False)      # (no draw: the inputs stay)
        if a.ok and b.ok:
            same = close(a.y, b.y, rtol=1e-12, atol=1e-12)
            self.r.check("train() vs eval()", same)
            if not same:
                self.r.add(finding("eval-differs", f"on {shape_str(x)}: {diff(b.y, a.y)}"))
        if a.ok and c.ok:
            same = close(a.y, c.y, rtol=1e-12, atol=1e-12)
            self.r.check("with and without torch.no_grad()", same)
            if not same:
                self.r.add(finding("mode-follows-grad", f"in train() on {shape_str(x)}, "
                                   f"under torch.no_grad() against with gradients on: "
                                   f"{diff(c.y, a.y)}", title="the output changes under "
                                   "torch.no_grad(): forward branches on "
                                   "torch.is_grad_enabled()"))

    #: the multi-dimensional normalized_shape probed, on input (4, *TUPLE_SHAPE)
    TUPLE_SHAPE = (3, 5)

    def takes_tuple_shape(self) -> bool:
        """Does the constructor promise torch's ``normalized_shape``, which may be a tuple?
        Its size argument is so named, or annotated as a tuple / sequence / list / Size.
        A layer that takes ``hidden_size: int`` promises one dimension only."""
        name = self.s.sig.size
        param = self.s.sig.params.get(name) if name else None
        if param is None:
            return False
        ann = param.annotation
        text = ann if isinstance(ann, str) else getattr(ann, "__name__", None) or str(ann)
        return name == "normalized_shape" or any(
            t in text.lower() for t in ("tuple", "sequence", "list", "size"))

    @probe("normalized_shape (3, 5)")
    def tuple_shape(self) -> None:
        """normalized_shape = (3, 5) on (4, 3, 5) input normalises over the last two dims,
        as torch.nn.LayerNorm / RMSNorm do; compared with the person's own formula (the model
        found on ordinary inputs) over those dims, so that another mistake is not counted
        twice."""
        self.gen = generator(11)   # each probe its own draws
        last = self.spec.ref_model(3)
        if not self.takes_tuple_shape() or self.m0 is None or self.m0.dims != last.dims:
            return
        shape = self.TUPLE_SHAPE
        name = f"normalized_shape {shape} on (4, {shape[0]}, {shape[1]}) input"
        x = self.spec.ordinary((4,) + shape, self.gen)
        try:
            inst = self.s.make(shape, torch.float64)
        except Exception as e:                          # noqa: BLE001 - report, go on
            self.r.check(name, None, f"constructor refuses it: {type(e).__name__}")
            self.r.notes.append(f"normalized_shape={shape} not checked: the constructor "
                                f"raises {type(e).__name__}: {str(e)[:120]}")
            return
        o = call(inst, x)
        if not o.ok or o.y.shape != x.shape:
            why = o.why() if not o.ok else f"output shape {tuple(o.y.shape)}"
            self.r.check(name, None, why)
            self.r.notes.append(f"normalized_shape={shape} not checked: forward on "
                                f"{shape_str(x)} input gives {why}")
            return
        w, b = (self.s.tensor(inst, role) for role in ("weight", "bias"))
        e = self.e(torch.float64)

        def want(dims: tuple[int, ...]) -> torch.Tensor | None:
            xhat = normalise(x, replace(self.m0, dims=dims), e)
            try:
                return None if xhat is None else self.affine(
                    xhat, None if w is None else w.detach().double(),
                    None if b is None else b.detach().double())
            except RuntimeError:                         # weight of a shape that cannot apply
                return None
        both, only_last = want((1, 2)), want(last.dims)
        ok = both is not None and close(o.y, both)
        self.r.check(name, ok, "" if ok or both is None else diff(o.y, both))
        if ok:
            return
        if only_last is not None and close(o.y, only_last):
            self.r.add(finding("tuple-shape", f"{shape_str(x)} input, normalized_shape={shape}: "
                               f"the output equals normalising over dim -1 alone",
                               title=f"normalized_shape={shape} is accepted, but only the last "
                                     f"dimension is normalised"))
        else:
            self.r.add(finding("tuple-shape", f"{shape_str(x)} input, normalized_shape={shape}: "
                               + ("the weight does not broadcast" if both is None
                                  else diff(o.y, both)),
                               title=f"with normalized_shape={shape} the output differs from "
                                     f"normalising over the last {len(shape)} dims"))

    # -- 2. edges -----------------------------------------------------------------------
    def edges(self) -> None:
        self.constant_rows()
        self.large_mean()
        self.half(torch.float16)
        self.half(torch.bfloat16)
        self.device()

    @probe("eps placement")
    def eps_placement(self) -> NormModel:
        """The layer's formula with eps placed as it places it (inside or outside the root,
        absent, another value), found on rows whose variance is comparable to eps; the
        edge checks after it compare against that formula."""
        self.gen = generator(12)   # each probe its own draws
        e = self.e(torch.float64)
        x = self.spec.small_variance(self.shape, e, self.gen)
        o = call(self.make(self.size), x)
        name = "eps placement (variance near eps)"
        if not o.ok:
            self.r.check(name, False, o.why())
            return self.m0
        got = o.y.double()
        m = self.placed_eps(got, x, e)
        if m is None:
            self.r.check(name, False, diff(got, self.expected(x, self.m0, e)))
            self.r.add(finding("small-variance", f"on rows with variance 0.01, 1 and 100 "
                               f"times eps = {e:.3g}: "
                               f"{diff(got, self.expected(x, self.m0, e))}"))
            return self.m0
        measured = m.eps_value is not None and m.eps == "inside" and \
            self.s.sources.get("eps", "").startswith("not found")
        ok = m.eps == "inside" and (m.eps_value is None or measured)
        self.r.check(name, ok, "" if ok else formula(m, self.spec.ref_model(x.dim())))
        ev = (f"on rows whose variance is 0.01, 1 and 100 times eps = {e:.3g}: the output is "
              f"{formula(m, self.spec.ref_model(x.dim()))}; "
              f"{diff(got, self.expected(x, replace(m, eps='inside', eps_value=None), e))}")
        if m.eps == "outside":
            self.r.add(finding("eps-outside-sqrt", ev))
        elif m.eps == "none":
            self.r.add(finding("no-eps", ev))
        elif measured:
            self.adopt_eps(m.eps_value)
            return replace(m, eps_value=None)
        elif m.eps_value is not None:
            self.r.add(finding("eps-ignored", ev, title=f"normalises with eps = "
                               f"{m.eps_value:.3g}, not the layer's eps = {e:.3g}"))
        return m

    def placed_eps(self, got: torch.Tensor, x: torch.Tensor, e: float) -> NormModel | None:
        """Which placement of eps (or which other eps, measured) reproduces ``got``."""
        for m in eps_variants(self.m0):
            want = self.expected(x, m, e)
            if want is not None and agree(got, want, m.floor):
                return m
        est = estimate_eps(got, x, self.m0)
        m = replace(self.m0, eps_value=est) if est is not None and est > 0 else None
        return m if m is not None and agree(got, normalise(x, m, e), m.floor) else None

    def adopt_eps(self, measured: float) -> None:
        """A layer with no eps setting: the eps it uses, measured, is its own from here on."""
        eps = float(f"{measured:.3g}")
        self.r.notes.append(f"eps is not an attribute or argument; measured eps = {eps:.3g}, "
                            f"used from here on")
        self.eps = self.s.settings["eps"] = eps
        self.s.sources["eps"] = "measured"

    @probe("constant input")
    def constant_rows(self) -> None:
        e = self.e(torch.float64)
        x = self.spec.constant(self.shape)
        o = call(self.make(self.size), x)
        name = "constant input"
        if not o.ok:
            self.r.check(name, False, o.why())
            return
        got = o.y.double()
        if self.m_eps.eps == "none":
            bad = ~torch.isfinite(got) | (got.abs() > 1e-3)
            if bool(bad.any()):
                self.r.add(finding("no-eps", f"a constant input gives "
                                   f"{'NaN' if bool(torch.isnan(got).any()) else 'noise'}: "
                                   f"{diff(got, torch.zeros_like(got))}"))
            self.r.check(name, not bool(bad.any()))
            return
        want = self.expected(x, self.m_eps, e)
        ok = want is not None and agree(got, want, self.m_eps.floor, atol=1e-6)
        self.r.check(name, ok)
        if not ok:
            self.r.add(finding("constant-row", f"on a constant input: {diff(got, want)}"))

    @probe("mean 1e4 in float32")
    def large_mean(self) -> None:
        self.gen = generator(13)   # each probe its own draws
        name = "mean 1e4, std 1 in float32"
        if self.spec.large_mean is None or self.m_eps.floor:
            self.r.check(name, None, "not applicable" if self.spec.large_mean is None else
                         "skipped: floor-divided output")
            return
        x = self.spec.large_mean(self.shape, self.gen)
        o = call(self.make(self.size, dtype=torch.float32), x)
        if not o.ok:
            self.r.check(name, False, o.why())
            return
        xd = x.double()
        want = self.expected(xd, self.m_eps, self.e(torch.float32))
        dims = self.m_eps.dims
        # condition-aware tolerance (docs/conventions.md): 1e-5 + c eps32 max|x| / std per row
        std = xd.std(dims, keepdim=True)
        tol = 1e-5 + 8 * torch.finfo(torch.float32).eps * xd.abs().amax(dims, keepdim=True) / std
        err = (o.y.double() - want).abs()
        ok = bool((err <= tol).all())
        self.r.check(name, ok, "" if ok else f"error {float(err.max()):.3g}, tolerance "
                     f"{float(tol.max()):.2g}")
        if not ok:
            self.r.add(finding("one-pass-variance", f"on {shape_str(x)} input with mean 1e4 "
                               f"and std 1: error {float(err.max()):.3g} against float64, "
                               f"while two-pass float32 statistics stay within "
                               f"{float(tol.max()):.2g}"))

    #: the half-precision probes: dtype -> (name, the input scales tried). bfloat16 has
    #: float32's range, so only float16 is tried in the hundreds (overflow).
    HALF = {torch.float16: ("float16", (("std 1", 1.0), ("std 400", 400.0))),
            torch.bfloat16: ("bfloat16", (("std 1", 1.0),))}

    @probe("float16 and bfloat16 input")
    def half(self, dtype: torch.dtype) -> None:
        self.gen = generator(14 + int(dtype == torch.bfloat16))   # each probe its own draws
        label16, scales = self.HALF[dtype]
        e = self.e(dtype)
        inst = self.make(self.size, dtype=dtype)
        results = {}
        for label, scale in scales:
            x = (self.spec.ordinary(self.shape, self.gen) * scale).to(dtype)
            o = call(inst, x)
            name = f"{label16} input, {label}"
            if not o.ok:
                self.r.check(name, False, o.why())
                results[label] = (False, o.why(), x)
                continue
            if label == "std 1" and o.y.dtype != x.dtype:
                ev = f"{label16} input gives {o.y.dtype} output"
                if self.r.has("param-not-registered"):     # a plain tensor stayed float32
                    self.r.get("param-not-registered").evidence.append(
                        f"{ev}: .to({label16}) does not convert plain tensors")
                else:
                    self.r.add(finding("dtype-changed", ev, title=f"returns "
                                       f"{str(o.y.dtype).replace('torch.', '')} for {label16} "
                                       f"input"))
            xd = x.double()
            want = self.expected(xd, self.m_eps, e)
            if want is None:
                continue
            want = want.to(dtype).double()
            got = o.y.double()
            # condition-aware: half-precision statistics of values far from their mean lose
            # digits
            dims = self.m_eps.dims
            spread = xd.std(dims, keepdim=True) if self.m_eps.centre else \
                xd.abs().amax(dims, keepdim=True)
            tol = 1e-2 + 4 * torch.finfo(dtype).eps * xd.abs().amax(dims, keepdim=True) / spread
            # (floored in half precision, more values sit on a boundary: 10% may differ)
            ok = agree(got, want, True, floor_share=0.9) if self.m_eps.floor else \
                bool(torch.isfinite(got).all()) and bool(((got - want).abs() <= tol).all())
            self.r.check(name, ok, "" if ok else diff(got, want))
            how = diff(got, want)
            bad = ~torch.isfinite(got)
            if bool(bad.any()):
                how += f"; {int(bad.sum())} of {got.numel()} outputs are inf or NaN"
            elif not ok and not self.m_eps.floor and bool((got == 0).double().mean() > 0.5):
                how += (f"; {float((got == 0).double().mean()):.0%} of the outputs are exactly "
                        f"0 (x / inf)")
            results[label] = (ok, how, x)
        small, large = results.get("std 1"), results.get("std 400")
        prefix = "fp16" if dtype == torch.float16 else "bf16"
        if small and not small[0]:
            self.r.add(finding(f"{prefix}-precision", f"on {shape_str(small[2])} input with "
                               f"std 1: {small[1]}"))
        elif large and not large[0]:
            self.r.add(finding("fp16-overflow", f"on {shape_str(large[2])} input with std 400 "
                               f"(x^2 up to ~1e6 > 65504): {large[1]}"))

    @probe("another device (meta)")
    def device(self) -> None:
        name = "another device (meta)"
        try:
            inst = self.make(self.size, dtype=torch.float32)
            with guard.running(f"moving a {self.s.cls.__name__} to the meta device"):
                modulelike.to(inst, "meta")
        except Exception as e:
            self.r.check(name, None, f"cannot move to meta: {e}")
            return
        o = call(inst, torch.empty(self.shape, device="meta"))
        if o.ok:
            self.r.check(name, o.y.device.type == "meta")
            return
        msg = o.why()
        if "device" not in msg:
            self.r.check(name, None, f"inconclusive: {msg}")
            return
        self.r.check(name, False, msg)
        if self.r.has("running-not-buffer") or self.r.has("param-not-registered"):
            f = self.r.get("running-not-buffer") or self.r.get("param-not-registered")
            f.evidence.append(f"after .to('meta') forward fails: {msg}")
        else:
            self.r.add(finding("device-mismatch", f"with the module and input on the meta "
                               f"device: {msg}"))

    # -- 3. gradients -------------------------------------------------------------------
    @probe("gradients")
    def gradients(self) -> None:
        self.gen = generator(15)   # each probe its own draws
        n = self.size
        x = self.spec.ordinary(self.shape, self.gen)
        w, b = affine_values(n, self.gen)
        dy = randn(self.shape, self.gen)
        inst = self.make(n, w, b)
        roles = {r: self.s.tensor(inst, r) for r in ("weight", "bias") if r in self.spec.roles}
        out, g = grads(inst, x, dy, roles)
        name = "gradients (random upstream)"
        if self.m0.floor:
            dx = g["input"]
            self.r.check(name, None, "skipped: floor-divided output")
            if not out.ok:
                self.r.get("floor-division").evidence.append(
                    f"backward raises ({out.why()}): the layer cannot be trained")
            elif dx is None or bool((dx == 0).all()):
                self.r.get("floor-division").evidence.append(
                    "the gradient with respect to the input is exactly 0")
            return
        if not out.ok:
            self.r.check(name, False, out.why())
            self.r.add(finding("grad-mismatch", f"backward raises: {out.why()}"))
            return
        w_, b_ = self.value(inst, "weight"), self.value(inst, "bias")
        dx = g["input"] if g["input"] is not None else torch.zeros_like(x)
        if self.m0 == self.spec.ref_model(x.dim()) and self.affine_ok:
            eps = self.m_eps.eps_value if self.m_eps and self.m_eps.eps_value else None
            _, backward = self.reference(x, inst, eps)       # with the eps it really uses
            rdx, rdw, rdb = backward(dy)
            ok_x = close(dx, rdx, 1e-4, 1e-6 * max(1.0, float(rdx.abs().max())))
            if not ok_x:
                self.explain_dx(x, dy, dx, w_, b_, f"input gradient on {shape_str(x)} input with "
                                f"a random upstream gradient: {diff(dx, rdx)}")
            ok_p = self.param_grads(g, {"weight": rdw, "bias": rdb})
            self.r.check(name, ok_x and ok_p)
        else:                               # forward differs: test backward against it
            def f(xv):
                return (call(inst, xv).y.double() * dy).sum()
            # a layer that computes in float32 whatever it is given (x.float()) needs a
            # larger step: its rounding noise / h must stay below the tolerance
            m_out = normalise(x.double(), self.m0, self.e(torch.float64))
            low = m_out is not None and not close(call(self.make(n), x).y, m_out, 1e-10, 1e-10)
            h, tol = (1e-3, 1e-2) if low else (1e-6, 1e-5)
            worst = 0.0
            for _ in range(3):
                v = randn(self.shape, self.gen)
                fd, an = directional(f, x.double(), v, h), float((dx.double() * v).sum())
                worst = max(worst, abs(fd - an) / max(abs(fd), abs(an), 1e-8))
            ok = worst < tol
            self.r.check(name + " vs finite differences", ok, "" if ok else
                         f"relative error {worst:.2g}")
            if not ok:
                self.explain_dx(x, dy, dx, w_, b_, f"directional derivative off by "
                                f"{worst:.2g} (relative) from finite differences of its own "
                                f"forward")

    def explain_dx(self, x, dy, dx, w, b, evidence: str) -> None:
        """Which detached-statistics model reproduces dx?"""
        e = self.e(torch.float64)
        for detach, term in self.spec.terms.items():
            xr = x.double().clone().requires_grad_(True)
            y = self.affine(normalise(xr, self.m0, e, detach), w, b)
            (hx,) = torch.autograd.grad((y * dy).sum(), xr)
            if close(dx, hx, 1e-4, 1e-6):
                ev = [evidence, f"dx equals the gradient in which {term}"]
                if self.custom_backward:
                    self.r.add(finding("wrong-backward", ev, title=f"the hand-written backward "
                                       f"is wrong: {term}"))
                else:
                    self.r.add(finding("stats-detached", ev, title=f"the gradient ignores that "
                                       f"the statistics depend on x: {term}"))
                return
        xr = x.double().clone().requires_grad_(True)
        y = normalise(xr, self.m0, e)
        (hx,) = torch.autograd.grad((y * dy).sum(), xr)
        if w is not None and close(dx, hx, 1e-4, 1e-6):
            self.r.add(finding("wrong-backward" if self.custom_backward else "grad-mismatch",
                               [evidence, "dx equals the gradient with weight = 1: the weight "
                                "is left out of dx (dy is used where dy * weight belongs)"],
                               title="dx leaves out the weight"))
            return
        self.r.add(finding("wrong-backward" if self.custom_backward else "grad-mismatch",
                           f"input gradient: {evidence}"))

    def param_grads(self, g, want) -> bool:
        ok = True
        for role in ("weight", "bias"):
            slot = self.s.mapping.get(role) if self.s.mapping else None
            if slot is None or want.get(role) is None or slot.kind == "plain":
                continue
            got = g.get(role)
            if got is None:
                ok = False
                self.r.add(finding("param-grad-missing", f"{slot.path}.grad is None after "
                                   f"backward", title=f"{slot.path} receives no gradient"))
            elif not close(got.reshape(-1), want[role], 1e-4,    # sums over rows: more atol
                           1e-5 * max(1.0, float(want[role].abs().max()))):
                ok = False
                self.r.add(finding("wrong-backward" if self.custom_backward else "grad-mismatch",
                                   f"gradient of {slot.path} ({role}): "
                                   f"{diff(got.reshape(-1), want[role])}"))
        return ok

    @probe("weight convention")
    def weight_convention(self) -> None:
        """Gemma's RMSNorm scales by (1 + weight), its weight stored as an offset from 1 and
        initialised to 0. With the weight tensor at 0 such a layer still normalises (a
        torch-style one gives 0), and at 1 it gives twice that. The mapping then writes
        w - 1 wherever the checks set a weight w."""
        slot = self.s.mapping.get("weight") if self.s.mapping else None
        if slot is None:
            return
        gen = generator(1)             # its own draws: the other probes' inputs stay the same
        for size, shape in self.spec.probes:
            x = self.spec.ordinary(shape, gen)
            at_one, at_zero = self.make(size), self.make(size)
            mapping.assign(at_zero, slot, torch.zeros(size, dtype=torch.float64))
            y1, y0 = call(at_one, x), call(at_zero, x)
            if not (y1.ok and y0.ok and y1.y.shape == x.shape and y0.y.shape == x.shape):
                continue
            y0d = y0.y.double()
            if float(y0d.abs().mean()) > 0.1 and close(y1.y, 2 * y0d):
                slot.offset = 1.0
                self.r.add(finding("weight-offset", f"on {shape_str(x)} input: with "
                                   f"{slot.path} = 0 the output is the normalised x, not 0; "
                                   f"with {slot.path} = 1 it is twice that: the layer "
                                   f"scales by (1 + {slot.path})",
                                   fix=f"to load torch.nn weights w into it: {slot.path} = "
                                   f"w - 1; from it into torch.nn: w = 1 + {slot.path}"))
                self.r.notes.append(f"{slot.path} is set to w - 1 wherever a check sets the "
                                    f"weight to w")
            return

    def run(self) -> None:
        self.weight_convention()
        self.ran = self.forward()
        if not self.ran:
            self.r.notes.append("no ordinary input gave a recognisable output: edge and "
                                "gradient checks skipped")
            return
        # the later checks run on the input where the layer is closest to the reference, so
        # that a fault on one shape (wrong dims on 3-D input) does not hide another that
        # shows on a shape where it is right (a biased running variance on 2-D)
        _, self.size, self.shape, self.m0 = min(self.ran, key=lambda r: r[0])
        self.registration()
        self.extra()
        self.m_eps = self.eps_placement()
        self.edges()
        self.gradients()

    def extra(self) -> None:
        """Kind-specific checks: train/eval and a tuple normalized_shape here, running
        statistics for BatchNorm."""
        self.modes()
        self.tuple_shape()


@probe("channels-last or channels-first")
def channels_first_rank(subject: Subject, spec: NormSpec) -> int | None:
    """None for a channels-last layer (the battery's layout), which takes (2, 3, C); for a
    channels-first one (torch.nn.BatchNorm1d/2d/3d's layout, ConvNeXt's and SAM's
    LayerNorm2d) the rank of the (N, C, ...) input it takes, tried as 3, 4 and 5 dims."""
    c, shape = spec.probes[0]
    gen = generator(0)
    x = spec.ordinary(shape, gen)
    o = call(subject.make(c), x)
    if o.ok and o.y.shape == x.shape and not (spec.kind != "batchnorm" and
                                               over_dim1_only(o.y, x, spec, subject)):
        return None
    for rank in (3, 4, 5):
        x = randn((2, c) + (3,) * (rank - 2), gen)
        o = call(subject.make(c), x)
        if o.ok and o.y.shape == x.shape:
            return rank
    return None


def over_dim1_only(y: torch.Tensor, x: torch.Tensor, spec: NormSpec, subject: Subject) -> bool:
    """Does a layer with no per-channel tensor (a parameter-free PixelNorm) normalise over
    dim 1? Nothing in it ties it to the last dim, and it behaves as a channels-first layer
    on every input: it is taken as one (a layer with a weight of the hidden size that
    normalises over dim 1 is the wrong-dims mistake instead: its weight broadcasts along
    the last dim)."""
    if subject.mapping is not None and subject.mapping.slots:
        return False
    dim1 = NormModel((1,), centre=spec.centre)
    m = search(y.double(), x, resolve_eps(subject.settings.get("eps"), x.dtype),
               space(dim1, x.dim())) if not agree(y.double(), normalise(x, dim1, 1e-12)) \
        else dim1
    return m is not None and m.dims == (1,)


def channels_first(subject: Subject, spec: NormSpec, report: Report) -> None:
    """Let a channels-first layer take the battery's channels-last inputs, and say so."""
    subject.channels_first = channels_first_rank(subject, spec)
    if subject.channels_first is not None:
        report.notes.append(
            f"channels-first: it takes (N, C, ...) input ({subject.channels_first} dims); each "
            "check's channels-last input (N, ..., C) reaches it as (N, C, L" +
            ", 1" * (subject.channels_first - 3) + "), L the product of the dims between")


GPU_ONLY = ("cuda", "triton", "cpu tensor?", "no nvidia driver", "active drivers")


def unrunnable(cls: type, error: str) -> None:
    """Every input failed. Raise LoadError (exit 2) where that says nothing about the layer:
    a plain class that does not take tensors (a micrograd-style layer on lists of scalars),
    or a layer that runs only on a GPU (a Triton or CUDA kernel, on this machine's CPU).
    An nn.Module that fails on every input otherwise is a finding (``forward-error``)."""
    if any(word in error.lower() for word in GPU_ONLY):
        raise LoadError(f"{cls.__name__} fails on every CPU input tried ({error}): it runs "
                        f"only on a GPU (a CUDA or Triton kernel), which this machine lacks")
    if not issubclass(cls, torch.nn.Module):
        raise LoadError(f"{cls.__name__} is not a torch.nn.Module and fails on every tensor "
                        f"input tried ({error}): the checker calls a layer with a "
                        f"torch.Tensor and needs a tensor of the same shape back")
