"""``fromscratch demo verify``: every layer against torch.nn, per dtype, as a table.

For LayerNorm, RMSNorm, BatchNorm (channels-last; torch's peer is BatchNorm1d on the
flattened (rows, C) input) and Dropout, in float64, float32, float16 and bfloat16, it runs
``fromscratch.nn`` and ``torch.nn`` on the same fixed input (mean-shifted rows, a hidden
size of 300, not a power of two), non-trivial weight and bias, and a random upstream
gradient, then measures both against a float64 reference: autograd over the textbook
formula (docs/derivations/), on the already-rounded inputs. The forward error covers the
output (and BatchNorm's running statistics), the backward error dx and the parameter
gradients. A layer passes when every element of ours is within the tolerance of docs/conventions.md
``|ours - ref| <= atol + rtol |ref|`` (reduced outputs, dweight and dbias, get
atol * (1 + sqrt(rows))). Dropout uses one seed for ours; torch applies the same mask
(torch.nn.Dropout cannot take one), and the kept fraction must lie in a 5-sigma binomial
interval.

Writes ``--out``/verify.json and exits 1 if any row fails.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .. import nn as ours
from ..argtypes import output_folder
from ..atomic import atomic_write_text

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
# docs/conventions.md, "tolerances": (rtol, atol)
TOLERANCE = {torch.float64: (1e-7, 1e-7), torch.float32: (1.3e-6, 1e-5),
             torch.float16: (1e-3, 1e-3), torch.bfloat16: (2e-2, 2e-2)}
SHAPE = (6, 20, 300)        # (batch, sequence, hidden): 120 rows of 300
EPS = 1e-5
P_DROP = 0.25
MOMENTUM = 0.1
SEED = 0


# --- the float64 references: autograd over the formulas ----------------------------------

def ref_layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + EPS) * w + b


def ref_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + eps) * w


def ref_batch_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(x.dim() - 1))
    mu = x.mean(dims)
    var = ((x - mu) ** 2).mean(dims)                       # biased: it normalises
    return (x - mu) / torch.sqrt(var + EPS) * w + b


# --- one row of the table ----------------------------------------------------------------

@dataclass
class Check:
    """One compared tensor: the largest |error| of ours and of torch.nn, and whether every
    element of ours is within tolerance."""
    name: str
    ours: float
    torch: float
    within: bool


@dataclass
class Row:
    layer: str
    dtype: str
    rtol: float
    atol: float
    forward: list[Check] = field(default_factory=list)
    backward: list[Check] = field(default_factory=list)
    note: str = ""
    ok: bool = True

    def worst(self, part: str, who: str) -> float:
        return max(getattr(c, who) for c in getattr(self, part))

    @property
    def passed(self) -> bool:
        return self.ok and all(c.within for c in self.forward + self.backward)


def compare(name: str, mine: torch.Tensor, theirs: torch.Tensor, ref: torch.Tensor,
            rtol: float, atol: float) -> Check:
    m, t, r = (a.detach().double() for a in (mine, theirs, ref))
    err = (m - r).abs()
    return Check(name, float(err.max()), float((t - r).abs().max()),
                 bool((err <= atol + rtol * r.abs()).all()))


def inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Fixed float64 data rounded to ``dtype``: rows shifted by up to +-5, weight around 1,
    a bias, and a random upstream gradient (never all ones: BatchNorm's dx would be ~0)."""
    g = torch.Generator().manual_seed(SEED)
    n = SHAPE[-1]
    shift = torch.empty(SHAPE[:-1] + (1,), dtype=torch.float64).uniform_(-5, 5, generator=g)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64) * 1.5 + shift
    w = 1 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    b = 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    dy = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return {k: v.to(dtype) for k, v in {"x": x, "w": w, "b": b, "dy": dy}.items()}


def run(module: nn.Module, x: torch.Tensor, dy: torch.Tensor, seed: int | None = None,
        flatten: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward and backward through ``module`` (on x seen as (rows, C) with ``flatten``);
    returns y and the gradients by name."""
    x = x.detach().clone().requires_grad_()
    if seed is not None:
        torch.manual_seed(seed)
    y = module(x.reshape(-1, x.shape[-1]) if flatten else x).reshape(x.shape)
    y.backward(dy)
    grads = {"dx": x.grad}
    for name, p in module.named_parameters():
        grads["d" + name] = p.grad
    return y.detach(), grads


def set_params(module: nn.Module, w: torch.Tensor, b: torch.Tensor | None) -> nn.Module:
    with torch.no_grad():
        module.weight.copy_(w)
        if b is not None:
            module.bias.copy_(b)
    return module


def check_layer(layer: str, dtype: torch.dtype) -> Row:
    rtol, atol = TOLERANCE[dtype]
    row = Row(layer, str(dtype).removeprefix("torch."), rtol, atol)
    t = inputs(dtype)
    x, w, b, dy = t["x"], t["w"], t["b"], t["dy"]
    rows = x.numel() // x.shape[-1]
    r64 = {k: v.double().requires_grad_(k != "dy") for k, v in t.items()}
    n = x.shape[-1]
    flatten, seed, extra = False, None, {}

    if layer == "LayerNorm":
        mine_m, theirs_m = ours.LayerNorm(n, eps=EPS), nn.LayerNorm(n, eps=EPS)
        ref_y = ref_layer_norm(r64["x"], r64["w"], r64["b"])
    elif layer == "RMSNorm":
        mine_m, theirs_m, b = ours.RMSNorm(n), nn.RMSNorm(n), None
        eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
        ref_y = ref_rms_norm(r64["x"], r64["w"], eps)
        r64["b"] = None
    elif layer == "BatchNorm":
        mine_m = ours.BatchNorm(n, eps=EPS, momentum=MOMENTUM)
        theirs_m = nn.BatchNorm1d(n, eps=EPS, momentum=MOMENTUM)
        flatten = True                  # for BatchNorm1d, which wants (N, C); ours takes x
        ref_y = ref_batch_norm(r64["x"], r64["w"], r64["b"])
        xs = r64["x"].detach().reshape(-1, n)
        extra = {"running_mean": MOMENTUM * xs.mean(0),
                 "running_var": (1 - MOMENTUM) + MOMENTUM * xs.var(0, unbiased=True)}
    else:                                                  # Dropout
        mine_m, theirs_m, seed = ours.Dropout(P_DROP), None, SEED
    if theirs_m is not None:
        mine_m, theirs_m = (set_params(m.to(dtype), w, b) for m in (mine_m, theirs_m))

    y, grads = run(mine_m, x, dy, seed)
    if layer == "Dropout":
        keep = y != 0                                      # x is never 0 here: shifted rows
        scale = 1.0 / (1.0 - P_DROP)
        theirs_m = _MaskedDropout(keep, scale)
        ref_y = r64["x"] * keep * scale
        kept, total = int(keep.sum()), keep.numel()
        sd = math.sqrt(total * P_DROP * (1 - P_DROP))
        row.ok = abs(kept - total * (1 - P_DROP)) <= 5 * sd
        row.note = f"kept {kept / total:.1%} (expected {1 - P_DROP:.0%})"
    ty, tgrads = run(theirs_m, x, dy, None, flatten)

    leaves = {"dx": r64["x"], "dweight": r64["w"], "dbias": r64["b"]}
    wanted = [k for k in grads if leaves.get(k) is not None]
    ref_grads = torch.autograd.grad(ref_y, [leaves[k] for k in wanted], r64["dy"])
    row.forward.append(compare("y", y, ty, ref_y, rtol, atol))
    for name, ref in extra.items():
        row.forward.append(compare(name, getattr(mine_m, name), getattr(theirs_m, name), ref,
                                   rtol, atol))
    for name, ref in zip(wanted, ref_grads):
        reduced = atol * (1 + math.sqrt(rows)) if name != "dx" else atol
        row.backward.append(compare(name, grads[name], tgrads[name], ref, rtol, reduced))
    return row


class _MaskedDropout(nn.Module):
    """torch applying a given mask: the peer for a dropout whose mask we chose."""

    def __init__(self, keep: torch.Tensor, scale: float):
        super().__init__()
        self.keep, self.scale = keep, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.keep * self.scale


# --- output ------------------------------------------------------------------------------

def table(rows: list[Row]):
    from rich.table import Table

    t = Table(title="fromscratch.nn vs torch.nn: largest |error| against a float64 reference",
              caption="reference: autograd over the formula in float64, from the rounded "
                      "inputs.\nbackward: dx, dweight, dbias, with a random upstream gradient.")
    for col, just in (("layer", "left"), ("dtype", "left"), ("forward: ours / torch", "right"),
                      ("backward: ours / torch", "right"), ("rtol, atol", "right"),
                      ("", "left")):
        t.add_column(col, justify=just)
    for r in rows:
        result = "[green]pass[/green]" if r.passed else "[bold red]FAIL[/bold red]"
        t.add_row(r.layer, r.dtype,
                  f"{r.worst('forward', 'ours'):.1e} / {r.worst('forward', 'torch'):.1e}",
                  f"{r.worst('backward', 'ours'):.1e} / {r.worst('backward', 'torch'):.1e}",
                  f"{r.rtol:g}, {r.atol:g}", result + (f", {r.note}" if r.note else ""))
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fromscratch demo verify", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("demo-output", "verify"),
                   help="folder for verify.json")
    args = p.parse_args(argv)
    output_folder(p, args.out)
    from rich.console import Console

    start = time.perf_counter()
    rows = [check_layer(layer, dtype) for layer in ("LayerNorm", "RMSNorm", "BatchNorm", "Dropout")
            for dtype in DTYPES.values()]
    seconds = time.perf_counter() - start
    console = Console()
    if not console.is_terminal:                 # piped or captured: do not squeeze to 80
        console = Console(width=120)
    console.print(table(rows))
    failed = [f"{r.layer} {r.dtype}" for r in rows if not r.passed]
    console.print(f"{len(rows) - len(failed)} of {len(rows)} pass"
                  + (f"; FAILED: {', '.join(failed)}" if failed else "") + f" ({seconds:.1f} s)")
    path = os.path.join(args.out, "verify.json")
    atomic_write_text(path, json.dumps({
        "passed": not failed, "torch": torch.__version__, "shape": list(SHAPE),
        "seconds": round(seconds, 3),
        "rows": [{**asdict(r), "passed": r.passed} for r in rows]}, indent=1))
    console.print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
