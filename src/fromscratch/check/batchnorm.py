"""BatchNorm, channels-last as in the seed: input (N, C) or (N, ..., C), statistics over
every dimension but the last. Training normalises with the batch's biased variance and
updates ``running = (1 - momentum) * running + momentum * batch`` with the unbiased one;
eval normalises with the running statistics. The reference is ``fromscratch.ops.batch_norm``
(``update_running`` for the running statistics).

On top of the shared battery (forward, edges, gradients), this checks the running
statistics: their values after several steps, that they are buffers (in state_dict, moved
by ``.to()``), that they keep their shape and carry no autograd graph, and eval: that it
normalises with them and leaves them alone.
"""
from __future__ import annotations

import torch

from ..ops import batch_norm as bn
from . import guard, modulelike, source
from .guard import probe
from .findings import Report, finding
from .normcheck import NormBattery, NormSpec, channels_first, missing_terms
from .normmodel import agree, normalise_with
from .probes import Subject, affine_values, call, close, diff, generator, randn, shape_str

STEPS = 3


def reference(x, w, b, eps):
    c = x.shape[-1]
    y, cache, _, _ = bn.forward(x.reshape(-1, c), w, b, eps)

    def backward(dy):
        dx, dw, db = bn.backward(dy.reshape(-1, c), cache)
        return dx.reshape(x.shape), dw, db
    return y.reshape(x.shape), backward


def channels_like_people_have(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Channels with their own mean (-3..3) and spread (0.5..2)."""
    c = shape[-1]
    mean = torch.rand(c, generator=gen, dtype=torch.float64) * 6 - 3
    std = torch.rand(c, generator=gen, dtype=torch.float64) * 1.5 + 0.5
    return randn(shape, gen) * std + mean


def per_channel(values: list[float], c: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).repeat(c)[:c]


def small_variance(shape: tuple[int, ...], eps: float, gen: torch.Generator) -> torch.Tensor:
    """Channels whose variance is 0.01, 1 and 100 times eps, each off zero by a few stds."""
    std = (eps * per_channel([0.01, 1.0, 100.0], shape[-1])).sqrt()
    return randn(shape, gen) * std + 3 * std * randn(shape[-1:], gen)


def constant(shape: tuple[int, ...]) -> torch.Tensor:
    """Constant channels: 2 and -0.5 give exactly 0 / 0 without eps; 0.1 and 1000.1 leave
    rounding noise in x - mean."""
    return per_channel([2.0, -0.5, 0.1, 1000.1], shape[-1]).expand(shape).contiguous()


def large_mean(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Mean 1e4, std 1, with a few more rows than the primary shape."""
    return (1e4 + randn(tuple(2 * s for s in shape[:-1]) + shape[-1:], gen)).float()


SPEC = NormSpec(
    kind="batchnorm", name="BatchNorm", roles=("weight", "bias", "running_mean", "running_var"),
    centre=True, ref_dims=lambda ndim: tuple(range(ndim - 1)), reference=reference,
    probes=[(20, (2, 3, 20)), (20, (8, 20)), (8, (2, 4, 8))],
    ordinary=channels_like_people_have, small_variance=small_variance, constant=constant,
    large_mean=large_mean,
    titles={"unbiased-variance": "normalises with the unbiased variance; BatchNorm normalises "
                                 "with the biased one and stores the unbiased one"},
    terms=missing_terms(batch=True),
)


def recurrence(init: torch.Tensor, stats: list[torch.Tensor], weights: list[float]):
    """running_k = (1 - a_k) running_{k-1} + a_k stat_k, for a mistaken weight sequence a."""
    r, out = init, []
    for s, a in zip(stats, weights):
        r = (1 - a) * r + a * s
        out.append(r)
    return out


class BatchNormBattery(NormBattery):
    def __init__(self, subject: Subject, report: Report):
        super().__init__(subject, SPEC, report)
        self.momentum = subject.settings.get("momentum", 0.1)
        self.has_running = True
        self.eval_grad = True         # eval() checked with gradients on, as people may

    def batches(self, shape: tuple[int, ...] | None = None) -> list[torch.Tensor]:
        """STEPS batches whose channel means move from step to step."""
        return [channels_like_people_have(shape or self.shape, self.gen) + 2.0 * k
                for k in range(STEPS)]

    def graph_and_shape(self, inst, shape: tuple[int, ...], start: dict[str, tuple]) -> None:
        """After training steps the running statistics hold no graph and keep their shape."""
        for role in ("running_mean", "running_var"):
            t = self.s.tensor(inst, role)
            path = self.s.mapping.get(role).path
            if t.requires_grad or t.grad_fn is not None:
                self.r.add(finding("running-graph", f"after {STEPS} training steps on "
                                   f"{tuple(shape)} inputs that require grad, {path}.grad_fn "
                                   f"= {type(t.grad_fn).__name__ if t.grad_fn else None}: the "
                                   f"graphs of earlier steps stay reachable from it"))
            if tuple(t.shape) != start[role]:
                self.r.add(finding("running-shape", f"{path} has shape {tuple(t.shape)} after "
                                   f"a training step on {tuple(shape)} input; it was "
                                   f"{start[role]}"))

    def running_values(self, inst) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        out = []
        for role in ("running_mean", "running_var"):
            t = self.s.tensor(inst, role)
            out.append(None if t is None or t.numel() != self.size
                       else t.detach().double().reshape(-1).clone())
        return out[0], out[1]

    def extra(self) -> None:
        self.buffers()
        if self.has_running:
            self.running()
        self.grad_mode()
        self.evaluation()

    @probe("train/eval and grad mode")
    def grad_mode(self) -> None:
        """A layer whose mode follows torch.is_grad_enabled() (d2l's batch_norm) normalises
        with the running statistics in train() under torch.no_grad(), and with the batch's
        in eval() with gradients on. Then eval() is checked under torch.no_grad(), where
        its eval branch runs."""
        c, gen = self.size, generator(2)   # its own draws: the other probes' stay the same
        w, b = affine_values(c, gen)
        x = channels_like_people_have(self.shape, gen)
        outs = {(train, grad): call(self.make(c, w, b, train=train), x, grad=grad)
                for train in (True, False) for grad in (True, False)}
        if not all(o.ok for o in outs.values()):
            return
        y = {k: o.y.double() for k, o in outs.items()}
        follows = (not close(y[True, True], y[True, False]) and close(y[True, False],
                   y[False, False]) and close(y[False, True], y[True, True]))
        self.r.check("mode follows train()/eval(), not grad mode", not follows)
        if follows:
            self.eval_grad = False
            self.r.add(finding("mode-follows-grad", [
                f"on {shape_str(x)} input: train() under torch.no_grad() gives the eval() "
                f"output (running statistics), {diff(y[True, False], y[True, True])} from "
                f"train() with gradients on",
                "eval() with gradients on gives the train() output (batch statistics)"]))

    # -- buffers ------------------------------------------------------------------------
    @probe("running statistics are buffers")
    def buffers(self) -> None:
        inst = self.make(self.size, dtype=torch.float32)
        slots = {r: self.s.mapping.get(r) for r in ("running_mean", "running_var")}
        if any(s is None for s in slots.values()):
            self.has_running = False
            self.r.check("running statistics exist", False)
            self.r.add(finding("no-running-stats", f"no running mean/variance among its "
                               f"tensors: {[p for p, _ in inst.state_dict().items()]}"))
            return
        if not modulelike.is_module(inst):
            self.r.check("running statistics are buffers", None, "a plain class: see "
                         "not-a-module")
            return
        plain = [s.path for s in slots.values() if s.kind == "plain"]
        self.r.check("running statistics are buffers", not plain)
        if not plain:
            return
        with guard.running(f"calling {self.s.cls.__name__}.state_dict() and .to(float64)"):
            keys = list(inst.state_dict())
            inst.to(torch.float64)
        ev = [f"state_dict() keys: {keys}"]
        for p in plain:
            dtype = str(self.s.tensor(inst, "running_mean" if slots["running_mean"].path == p
                                      else "running_var").dtype).replace("torch.", "")
            if dtype != "float64":
                ev.append(f"after .to(torch.float64) {p} is still {dtype}")
        names = " and ".join(plain)
        verb = "is not a buffer" if len(plain) == 1 else "are not buffers"
        self.r.add(finding("running-not-buffer", ev, title=f"{names} {verb}: missing from "
                           f"state_dict and left behind by .to()"))

    # -- running statistics -------------------------------------------------------------
    @probe("running statistics")
    def running(self) -> None:
        """Graph and shape after training steps on every input shape the forward took; the
        values on the shape where the batch statistics are right (``self.shape``)."""
        self.gen = generator(16)   # each probe its own draws
        c = self.size
        results = {}
        for shape in dict.fromkeys([self.shape] + [r[2] for r in self.ran if r[1] == c]):
            w, b = affine_values(c, self.gen)
            inst = self.make(c, w, b)
            start = {r: tuple(self.s.tensor(inst, r).shape)
                     for r in ("running_mean", "running_var")}
            rm0, rv0 = self.running_values(inst)
            xs = self.batches(shape)
            seen: list[tuple] = []
            for x in xs:
                o = call(inst, x.clone().requires_grad_(True))
                if not o.ok:
                    self.r.check(f"running statistics on {tuple(shape)} input", False, o.why())
                    break
                seen.append(self.running_values(inst))
            else:
                results[shape] = (rm0, rv0, xs, seen)
                self.graph_and_shape(inst, shape, start)
        self.r.check("running statistics detached", not self.r.has("running-graph"))
        self.r.check("running statistics keep their shape", not self.r.has("running-shape"))
        if self.shape not in results:
            return
        rm0, rv0, xs, seen = results[self.shape]
        if self.m0.dims != SPEC.ref_dims(len(self.shape)):
            self.r.check("running statistics values", None, "skipped: batch statistics are "
                         "taken over the wrong dims")
            return
        if rm0 is None or any(s[0] is None or s[1] is None for s in seen):
            self.r.check("running statistics values", None, "skipped: not one value per "
                         "channel")
            return
        self.running_values_check(rm0, rv0, xs, seen)

    def running_values_check(self, rm0, rv0, xs, seen) -> None:
        m = self.momentum
        means, variances, counts = [], [], []
        rm, rv = rm0, rv0
        ref = []
        for k, x in enumerate(xs, start=1):
            x2 = x.reshape(-1, self.size)
            _, _, mean, var = bn.forward(x2, None, None, self.e(torch.float64))
            a = 1.0 / k if m is None else m
            rm, rv = bn.update_running(rm, rv, mean, var, x2.shape[0], a)
            ref.append((rm, rv))
            means.append(mean)
            variances.append(var)
            counts.append(x2.shape[0])
        got_m = torch.stack([s[0] for s in seen])
        got_v = torch.stack([s[1] for s in seen])
        ref_m, ref_v = torch.stack([r[0] for r in ref]), torch.stack([r[1] for r in ref])
        tol = dict(rtol=1e-5, atol=1e-6)
        if close(got_m, ref_m, **tol) and close(got_v, ref_v, **tol):
            self.r.check("running statistics values", True)
            return
        self.r.check("running statistics values", False, diff(got_v, ref_v))
        torch_w = [1.0 / k for k in range(1, STEPS + 1)] if m is None else [m] * STEPS
        weights = {"torch": torch_w, "keras": None if m is None else [1 - m] * STEPS,
                   "cumulative": [1.0 / k for k in range(1, STEPS + 1)],
                   "last batch": [1.0] * STEPS, "not updated": [0.0] * STEPS}
        unbiased = [v * n / (n - 1) for v, n in zip(variances, counts)]
        mean_fit = next((name for name, a in weights.items() if a is not None and close(
            torch.stack(recurrence(rm0, means, a)), got_m, **tol)), None)
        var_fit = next(((name, kind) for name, a in weights.items() if a is not None
                        for kind, st in (("unbiased", unbiased), ("biased", variances))
                        if close(torch.stack(recurrence(rv0, st, a)), got_v, **tol)), None)
        after = f"after {STEPS} training steps with momentum={m}"
        path_m = self.s.mapping.get("running_mean").path
        path_v = self.s.mapping.get("running_var").path
        if "keras" in (mean_fit, var_fit and var_fit[0]):
            got, want = float(got_m[-1, 0]), float(ref_m[-1, 0])    # after the last step
            self.r.add(finding("momentum-keras", f"{after}: {path_m}[0] = {got:.4f} = momentum "
                               f"* running + (1 - momentum) * batch; the reference "
                               f"(1 - momentum) * running + momentum * batch gives {want:.4f}",
                               title=f"momentum={m} is used the Keras way: as the weight of the "
                               f"old running value"))
        if var_fit and var_fit[1] == "biased":
            self.r.add(finding("running-var-biased", f"{after}: {path_v}[0] = "
                               f"{float(got_v[-1, 0]):.4f} follows the biased batch variance; "
                               f"the unbiased one gives {float(ref_v[-1, 0]):.4f}"))
        if mean_fit == "not updated" and var_fit and var_fit[0] == "not updated":
            self.r.add(finding("running-not-updated", f"{after}: {path_m} and {path_v} still "
                               f"hold their initial values"))
            return
        explained = (mean_fit in ("torch", "keras") and var_fit is not None
                     and var_fit[0] in ("torch", "keras"))
        if not explained:
            what = {"cumulative": "the cumulative average of the batch statistics (momentum=None)",
                    "last batch": "the last batch's statistics (momentum 1)",
                    "not updated": "the initial values"}
            fits = [f"{p} follows {what[f]}" for p, f in ((path_m, mean_fit),
                    (path_v, var_fit and var_fit[0])) if f in what]
            self.r.add(finding("running-mismatch", [f"{after}: {path_m}: {diff(got_m, ref_m)}",
                                                    f"{path_v}: {diff(got_v, ref_v)}"] + fits))

    # -- eval ---------------------------------------------------------------------------
    @probe("eval() with the running statistics")
    def evaluation(self) -> None:
        self.gen = generator(17)   # each probe its own draws
        c = self.size
        w, b = affine_values(c, self.gen)
        inst = self.make(c, w, b)
        for x in self.batches():
            call(inst, x)
        rm0, rv0 = self.running_values(inst)
        with guard.running(f"calling {self.s.cls.__name__}.eval()"):
            modulelike.set_mode(inst, False)
        x = channels_like_people_have(self.shape, self.gen) + 5.0
        o = call(inst, x, grad=self.eval_grad)
        if not o.ok:
            self.r.check("eval()", False, o.why())
            self.r.add(finding("forward-error", f"in eval(): {o.why()}",
                               title="forward raises an error in eval()"))
            return
        rm1, rv1 = self.running_values(inst)
        w_, b_ = self.value(inst, "weight"), self.value(inst, "bias")
        e = self.e(torch.float64)
        m = self.m_eps or self.m0
        floor = m.floor
        y_batch = self.affine(self.expected(x, m, e), w_, b_)
        uses_batch = agree(o.y.double(), y_batch, floor)
        if rm0 is None:
            if not self.has_running:
                self.r.check("eval()", None, "no running statistics")
                if uses_batch:
                    self.r.get("no-running-stats").evidence.append(
                        "eval() normalises with the batch's statistics")
            else:
                self.r.check("eval()", None, "running statistics are not one value per channel")
            return
        updates = not (close(rm1, rm0, 0, 0) and close(rv1, rv0, 0, 0)) if rm1 is not None \
            else True
        fits_running = [self.affine(self.eval_xhat(x, rm, rv, m, e), w_, b_)
                        for rm, rv in ((rm0, rv0), (rm1, rv1)) if rm is not None]
        uses_running = any(agree(o.y.double(), y, floor) for y in fits_running)
        self.r.check("eval() uses running statistics", uses_running and not uses_batch)
        self.r.check("eval() leaves running statistics alone", not updates)
        ev_batch = (f"in eval() on {shape_str(x)} input the output equals the batch-statistics "
                    f"output; normalising with the running statistics differs by "
                    f"{diff(o.y, fits_running[0])}")
        ev_update = (f"an eval() forward moved running_mean by "
                     f"{float((rm1 - rm0).abs().max()) if rm1 is not None else float('nan'):.3g}")
        if uses_batch and updates:
            if source.tests_self_train(self.s.cls):
                self.r.add(finding("eval-ignored", [ev_batch, ev_update],
                                   title="eval() changes nothing: `self.train` is a method and "
                                   "always true; test `self.training`",
                                   cause="`if self.train:` tests the bound method "
                                   "nn.Module.train, which is always truthy, so the training "
                                   "branch runs in eval too"))
            else:
                self.r.add(finding("eval-ignored", [ev_batch, ev_update]))
        elif uses_batch:
            self.r.add(finding("eval-batch-stats", ev_batch))
        else:
            if updates:
                self.r.add(finding("eval-updates-running", ev_update))
            if not uses_running:
                self.r.add(finding("eval-mismatch", f"in eval() on {shape_str(x)} input: "
                                   f"{diff(o.y, fits_running[0])} against normalising with "
                                   f"the running statistics"))

    def eval_xhat(self, x, mean, var, m, e):
        if m == SPEC.ref_model(x.dim()):
            c = x.shape[-1]
            y, _, _, _ = bn.forward(x.reshape(-1, c), None, None, e, mean, var,
                                    batch_stats=False)
            return y.reshape(x.shape)
        return normalise_with(x.double(), mean, var, m, e)


def run(subject: Subject, report: Report) -> None:
    channels_first(subject, SPEC, report)
    BatchNormBattery(subject, report).run()
