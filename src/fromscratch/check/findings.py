"""What the checker reports: findings, each a diagnosis with its evidence, cause and fix.

Every finding the checker can emit is listed once in ``CATALOG`` with its severity, a default
title, the likely cause and the fix; docs/check.md explains each one. The batteries fill in
the evidence (numbers measured on the person's layer) and, where they can tell, a more
specific title or cause.

Severity:

    wrong     the layer differs from the reference on ordinary inputs
    fragile   right on ordinary inputs, wrong at an edge (fp16, a constant row, a huge mean,
              another device, a bad argument)
    variant   a deliberate convention that differs from torch.nn (Gemma's 1 + weight, eps
              added to the std, locked dropout, a plain class used as a module): named so
              that nobody mistakes it for the torch layer, not counted as a mistake
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Severity = Literal["wrong", "fragile", "variant"]


@dataclass(frozen=True)
class Entry:
    severity: Severity
    title: str
    cause: str
    fix: str


@dataclass
class Finding:
    id: str
    severity: Severity
    title: str
    evidence: list[str]
    cause: str
    fix: str

    def to_dict(self) -> dict:
        return asdict(self)


def finding(id: str, evidence: str | list[str] = (), title: str | None = None,
            cause: str | None = None, fix: str | None = None,
            severity: Severity | None = None) -> Finding:
    """A finding of kind ``id`` with catalog defaults for what is not given. ``severity``
    overrides the catalog's where an edge mistake already shows on ordinary inputs."""
    e = CATALOG[id]
    ev = [evidence] if isinstance(evidence, str) else list(evidence)
    return Finding(id, severity or e.severity, title or e.title, ev, cause or e.cause,
                   fix or e.fix)


@dataclass
class Check:
    """One probe that ran: its name, "pass" / "fail" / "skip", and a short note."""
    name: str
    status: str
    note: str = ""


@dataclass
class Report:
    kind: str
    target: str
    settings: dict[str, object] = field(default_factory=dict)   # eps, momentum, p as used
    mapping: list[str] = field(default_factory=list)            # "gamma -> weight", ...
    checks: list[Check] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)             # per-parameter rows (gradient)

    def add(self, f: Finding) -> Finding:
        """Add a finding, merging the evidence when one with the same id is already there."""
        for old in self.findings:
            if old.id == f.id:
                old.evidence += [e for e in f.evidence if e not in old.evidence]
                return old
        self.findings.append(f)
        return f

    def has(self, id: str) -> bool:
        return any(f.id == id for f in self.findings)

    def get(self, id: str) -> Finding | None:
        return next((f for f in self.findings if f.id == id), None)

    def check(self, name: str, ok: bool | None, note: str = "") -> None:
        status = "skip" if ok is None else "pass" if ok else "fail"
        self.checks.append(Check(name, status, note))

    @property
    def wrong(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "wrong"]

    @property
    def fragile(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "fragile"]

    @property
    def variants(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "variant"]

    def exit_code(self, strict: bool = False) -> int:
        """0 without a *wrong* finding (``strict``: without any finding), else 1."""
        bad = self.findings if strict else self.wrong
        return 1 if bad else 0

    def ids(self) -> dict[str, str]:
        """{finding id: severity}: what the tests compare."""
        return {f.id: f.severity for f in self.findings}

    def to_dict(self, strict: bool = False) -> dict:
        return {"kind": self.kind, "target": self.target, "settings": self.settings,
                "mapping": self.mapping, "exit_code": self.exit_code(strict),
                "findings": [f.to_dict() for f in self.findings],
                "checks": [asdict(c) for c in self.checks], "notes": self.notes,
                "table": self.table}


W, F, V = "wrong", "fragile", "variant"

CATALOG: dict[str, Entry] = {
    # -- any layer -----------------------------------------------------------------------
    "forward-error": Entry(W, "forward raises an error on an ordinary input",
                           "see the error message in the evidence",
                           "make forward accept every input the reference accepts"),
    "shape-changed": Entry(W, "the output does not have the input's shape",
                           "a reduction without keepdim=True, or a broadcast against the "
                           "wrong axis",
                           "keep the reduced dimension (keepdim=True) so statistics broadcast "
                           "back over the input"),
    "input-modified": Entry(W, "forward changes its input in place",
                            "an in-place operation on x (x -= mean, x.div_(std), x[...] = ...) "
                            "overwrites the caller's tensor, which other layers (a residual "
                            "connection) still use, and breaks autograd when x is needed for a "
                            "gradient", "compute into a new tensor: xc = x - mean"),
    "param-not-registered": Entry(W, "a parameter is a plain tensor, not an nn.Parameter",
                                  "a plain tensor attribute is missing from parameters() and "
                                  "state_dict(): the optimizer never updates it and "
                                  "checkpoints do not save it",
                                  "wrap it: self.weight = nn.Parameter(torch.ones(n))"),
    "param-grad-missing": Entry(W, "a parameter receives no gradient",
                                "it is used through .data or .detach(), or under "
                                "torch.no_grad(), so autograd never reaches it",
                                "use the parameter itself in forward"),
    "grad-mismatch": Entry(W, "the gradient differs from the reference",
                           "the backward pass does not match the forward",
                           "let autograd differentiate the forward, or fix the backward "
                           "term by term against docs/derivations"),
    "stats-detached": Entry(W, "the gradient ignores that the statistics depend on x",
                            "the mean or variance is detached (.detach(), .data, "
                            "torch.no_grad()), so dx lacks the terms that flow through them",
                            "do not detach the statistics: autograd needs their dependence "
                            "on x"),
    "wrong-backward": Entry(W, "the hand-written backward disagrees with the forward",
                            "a term of dx is missing or wrong in the autograd.Function's "
                            "backward",
                            "derive dx again (docs/derivations) or compare term by term "
                            "with fromscratch.ops"),
    "dtype-changed": Entry(F, "the output dtype differs from the input dtype",
                           "a tensor of another dtype (a .float() mask, float32 statistics "
                           "not cast back) promotes the result",
                           "cast the result back: y.to(x.dtype); build masks with "
                           "x's dtype"),
    "device-mismatch": Entry(F, "forward fails for input on another device",
                             "a tensor created inside forward (torch.randn(shape), "
                             "torch.ones(n)) stays on the CPU",
                             "create tensors on the input's device: torch.rand_like(x), "
                             "torch.ones(n, device=x.device), or register buffers"),
    "eval-ignored": Entry(W, "eval() changes nothing",
                          "forward never looks at self.training",
                          "branch on self.training, which train() and eval() set"),
    "mode-follows-grad": Entry(W, "train/eval follows torch.is_grad_enabled(), not "
                                  "self.training",
                               "forward branches on torch.is_grad_enabled() (d2l's "
                               "batch_norm): eval() with gradients on (an adversarial "
                               "example, a saliency map, a meta-learning inner loop) still "
                               "trains, and a training forward under torch.no_grad() does "
                               "not", "branch on self.training, which train() and eval() "
                               "set"),
    "not-a-module": Entry(V, "not a torch.nn.Module: no state_dict(), .to(), train()/eval()",
                          "a plain class with __call__, a training attribute and "
                          "parameters(); checked through those",
                          "subclass torch.nn.Module, register the tensors as nn.Parameter "
                          "and buffers, and rename __call__ to forward"),
    "reads-global": Entry(W, "forward reads a module-level global instead of the layer's "
                             "own setting",
                          "a name like `p` where `self.p` was meant: Python finds the "
                          "module's global (or raises NameError when there is none), so "
                          "the constructor's argument is ignored", "use self.p"),
    # -- LayerNorm / RMSNorm / BatchNorm forward ----------------------------------------
    "floor-division": Entry(W, "output is floor-divided: `//` where `/` was meant",
                            "a // b is floor(a / b): every normalised value becomes an "
                            "integer, and floor has zero gradient, so nothing before this "
                            "layer learns",
                            "divide with /"),
    "unbiased-variance": Entry(W, "normalises with the unbiased variance (divides by n - 1)",
                               "torch.var and torch.std default to the unbiased estimate "
                               "(correction=1)",
                               "x.var(dim, unbiased=False) (or correction=0)"),
    "wrong-dims": Entry(W, "normalises over the wrong dimensions",
                        "the reduction's dim= argument",
                        "reduce over the dimensions the layer normalises"),
    "missing-keepdim": Entry(W, "statistics lose their reduced dimension and broadcast "
                                "along the wrong axis",
                             "mean/var without keepdim=True have shape (N,), which "
                             "broadcasts against the last axis of (N, n), not the first",
                             "x.mean(-1, keepdim=True)"),
    "no-mean-subtraction": Entry(W, "does not subtract the mean: this is RMSNorm, not "
                                    "LayerNorm", "x is divided by its RMS without centring",
                                 "xhat = (x - mean) / sqrt(var + eps)"),
    "subtracts-mean": Entry(W, "subtracts the mean: this is LayerNorm without a bias, not "
                               "RMSNorm", "the row is centred before dividing",
                            "RMSNorm divides x itself: x / sqrt(mean(x^2) + eps)"),
    "sum-not-mean": Entry(W, "divides by the root of the sum of squares, not of their mean",
                          "x.norm() or sum() where mean() was meant: the output is sqrt(n) "
                          "times too small", "use mean(x^2), or divide the norm by sqrt(n)"),
    "missing-sqrt": Entry(W, "divides by the variance, not by its square root",
                          "the square root is missing", "divide by sqrt(var + eps)"),
    "affine-wrong": Entry(W, "weight and bias are not applied as y = weight * xhat + bias",
                          "see the evidence for which part is off",
                          "apply the scale then the shift to the normalised x"),
    "forward-mismatch": Entry(W, "the output differs from the reference",
                              "no known mistake reproduces the difference; see the evidence",
                              "compare with fromscratch.ops step by step"),
    "eval-differs": Entry(W, "the output changes between train() and eval()",
                          "forward branches on self.training although this layer behaves "
                          "the same in both modes", "drop the branch"),
    # -- edges ---------------------------------------------------------------------------
    "tuple-shape": Entry(F, "a tuple normalized_shape is accepted but not normalised over",
                         "the constructor takes torch's normalized_shape, but forward reduces "
                         "over dim=-1 only (or otherwise not over the trailing "
                         "len(normalized_shape) dims)",
                         "reduce over dim=tuple(range(-len(normalized_shape), 0))"),
    "eps-outside-sqrt": Entry(V, "eps is added to the standard deviation, not the "
                                 "variance: sqrt(var) + eps",
                              "a convention (The Annotated Transformer's LayerNorm, the "
                              "RMSNorm paper's code: rms + eps); torch adds eps inside the "
                              "square root. They agree unless the variance is comparable to "
                              "eps: a nearly constant row is scaled up to 1/eps instead of "
                              "1/sqrt(eps)", "to match torch.nn: divide by sqrt(var + eps) "
                              "(torch.rsqrt); to load torch weights, nothing changes"),
    "weight-offset": Entry(V, "scales by (1 + weight): Gemma's convention",
                           "the weight is stored as an offset from 1 and initialised to 0 "
                           "(Gemma's RMSNorm, x-transformers' unit_offset); torch.nn scales "
                           "by the weight itself",
                           "to load torch.nn weights w into it: weight = w - 1; from it into "
                           "torch.nn: w = 1 + weight"),
    "no-eps": Entry(F, "no eps in the denominator: a constant row gives NaN or noise",
                    "0 / sqrt(0) is NaN, and a row that is constant up to rounding is "
                    "scaled up to noise", "add eps inside the square root"),
    "eps-ignored": Entry(F, "normalises with another eps than the layer's own",
                         "a hard-coded eps is used instead of self.eps",
                         "use self.eps"),
    "small-variance": Entry(F, "rows whose variance is comparable to eps differ from the "
                               "reference", "eps enters the denominator differently",
                            "divide by sqrt(var + eps)"),
    "constant-row": Entry(F, "a constant row gives a wrong output",
                          "the statistics of a constant input are not handled",
                          "a constant row must give bias (LayerNorm) or 0"),
    "one-pass-variance": Entry(F, "loses all digits when |mean| >> std",
                               "the variance is computed in one pass as E[x^2] - E[x]^2, which "
                               "cancels catastrophically (float32, mean 1e4, std 1)",
                               "two passes: mean first, then mean((x - mean)^2) "
                               "(or torch.var)"),
    "fp16-overflow": Entry(F, "float16 input with values in the hundreds overflows",
                           "the statistics are computed in float16, whose largest value is "
                           "65504: x^2 or the variance overflows to inf",
                           "compute statistics in float32: xf = x.float(), then cast the "
                           "output back to x.dtype"),
    "fp16-precision": Entry(F, "float16 output is less accurate than float32 statistics "
                               "allow", "the statistics are accumulated in float16",
                            "compute statistics in float32 and cast the output once"),
    "bf16-precision": Entry(F, "bfloat16 output is less accurate than float32 statistics "
                               "allow", "the statistics are kept in bfloat16 (8 significant "
                               "bits), or the output is formed from values rounded twice",
                            "compute statistics in float32 and cast the output once"),
    # -- BatchNorm -----------------------------------------------------------------------
    "eval-batch-stats": Entry(W, "eval normalises with the batch's statistics, not the "
                                 "running ones", "the eval branch uses the batch mean/var",
                              "in eval, normalise with running_mean and running_var"),
    "eval-updates-running": Entry(W, "eval() still updates the running statistics",
                                  "the running update is not guarded by self.training",
                                  "update running statistics only in training"),
    "eval-mismatch": Entry(W, "eval output differs from normalising with the running "
                              "statistics", "see the evidence",
                           "in eval: (x - running_mean) / sqrt(running_var + eps)"),
    "no-running-stats": Entry(W, "keeps no running statistics",
                              "BatchNorm needs running_mean and running_var for eval",
                              "register_buffer('running_mean', torch.zeros(C)) and "
                              "register_buffer('running_var', torch.ones(C))"),
    "running-not-buffer": Entry(W, "running statistics are not buffers: missing from "
                                   "state_dict and left behind by .to()",
                                "they are plain tensor attributes",
                                "self.register_buffer('running_mean', torch.zeros(C))"),
    "running-graph": Entry(W, "running statistics carry the autograd graph across steps",
                           "the running update is computed from the batch statistics with "
                           "grad enabled: every step's graph stays alive (memory grows), and "
                           "a backward through it fails",
                           "update under torch.no_grad(), or from batch_mean.detach()"),
    "running-shape": Entry(W, "running statistics change shape after a training step",
                           "the update stores statistics computed with keepdim=True",
                           "store mean.reshape(C) (or compute without keepdim)"),
    "momentum-keras": Entry(W, "momentum is used the Keras way: as the weight of the old "
                               "running value",
                            "running = momentum * running + (1 - momentum) * batch",
                            "torch's convention: running = (1 - momentum) * running + "
                            "momentum * batch"),
    "running-var-biased": Entry(W, "stores the biased variance in running_var; BatchNorm "
                                   "stores the unbiased one",
                                "the running update uses the variance the batch was "
                                "normalised with", "update running_var with "
                                "var * n / (n - 1)"),
    "running-not-updated": Entry(W, "running statistics never change in training",
                                 "the update is missing or writes to a copy",
                                 "update in place or reassign the buffer each training step"),
    "running-mismatch": Entry(W, "running statistics differ from the reference update",
                              "see the evidence", "running = (1 - momentum) * running + "
                              "momentum * batch (unbiased variance)"),
    # -- Dropout -------------------------------------------------------------------------
    "randn-mask": Entry(W, "keeps the wrong share of units: the mask is drawn from randn, "
                           "not rand", "torch.randn is normal, so randn > p keeps "
                           "P(Z > p) of the units, about half",
                        "keep = torch.rand_like(x) >= p"),
    "keep-drop-confused": Entry(W, "p is used as the keep probability",
                                "rand < p keeps p of the units; p is the probability to drop",
                                "keep = torch.rand_like(x) >= p"),
    "keep-rate": Entry(W, "keeps the wrong share of units", "see the evidence",
                       "keep = torch.rand_like(x) >= p"),
    "no-rescale": Entry(W, "kept units are not scaled by 1/(1 - p)",
                        "without the scale E[y] = (1 - p) x in training but x in eval",
                        "y = x * keep / (1 - p)"),
    "wrong-scale": Entry(W, "kept units are scaled by the wrong factor", "see the evidence",
                         "y = x * keep / (1 - p)"),
    "non-inverted": Entry(W, "classic (non-inverted) dropout: no scaling in training, "
                             "x (1 - p) in eval",
                          "the 2012 paper's form; torch and fromscratch scale at training "
                          "time so that eval is the identity",
                          "y = x * keep / (1 - p) in training, y = x in eval"),
    "mask-not-binary": Entry(W, "the mask is not 0/1: kept units are scaled by different "
                                "factors", "random values are used as the mask itself",
                             "keep = (torch.rand_like(x) >= p)"),
    "mask-not-fresh": Entry(W, "the same mask is used on every call",
                            "the mask is drawn once (in __init__, or cached) or the "
                            "generator is re-seeded in forward",
                            "draw a new mask in every training forward"),
    "mask-shared": Entry(W, "one mask is shared by every row (or every column)",
                         "the mask is drawn with a smaller shape and broadcast",
                         "draw the mask with x's full shape"),
    "eval-not-identity": Entry(W, "eval() does not return the input unchanged",
                               "see the evidence", "in eval, return x"),
    "p-not-validated": Entry(F, "p outside [0, 1] is accepted silently",
                             "no check on p", "raise ValueError unless 0 <= p <= 1"),
    "locked-dropout": Entry(V, "locked (variational) dropout: one mask per sequence, shared "
                               "along the time dimension",
                            "a deliberate variant (AWD-LSTM, flair, AllenNLP): every time step "
                            "of a sequence drops the same features; torch.nn.Dropout draws "
                            "every element independently",
                            "nothing, if locked dropout is meant; torch.nn.Dropout for "
                            "element-wise dropout"),
    "word-dropout": Entry(V, "word dropout: one draw per token, shared along the features",
                          "a deliberate variant (flair's WordDropout): whole token vectors "
                          "are dropped; torch.nn.Dropout draws every element independently",
                          "nothing, if word dropout is meant"),
    "drop-path": Entry(V, "drop path (stochastic depth): one draw per sample",
                       "a deliberate variant (timm's DropPath): the whole sample (a residual "
                       "branch) is dropped; torch.nn.Dropout draws every element "
                       "independently", "nothing, if stochastic depth is meant"),
    "p-one-nan": Entry(F, "p = 1 gives NaN instead of zeros (or raises)",
                       "x * 0 / (1 - p) divides by zero", "return zeros when p == 1"),
    # -- NumPy networks (fromscratch check gradient) -------------------------------------
    "gradient-scaled": Entry(W, "the gradient is a constant multiple of the reported loss's",
                             "backward differentiates a different loss than the one "
                             "reported", "make the reported loss and the backward agree"),
    "gradient-wrong": Entry(W, "analytic gradients disagree with finite differences",
                            "see the per-parameter errors", "fix backward for those "
                            "parameters"),
    "gradient-missing": Entry(W, "some parameters get no gradient", "backward returns no "
                              "entry for them", "return a gradient for every parameter"),
}
