r"""``fromscratch check gradient``: does a NumPy network's backward give the gradient of the
loss it reports?

Two shapes of network are understood:

* the numpy_nn protocol (``fromscratch.numpy_nn``): ``forward(x)``, ``backward(dout) -> dx``,
  dicts ``params`` and ``grads``, and a loss with ``forward(pred, target)`` / ``backward()``;
  given as a class with a no-argument constructor, or a module-level function returning the
  model or ``(model, loss)`` (MSELoss when no loss is given);
* the seed notebook's ``NeuralNetwork``: ``forward(x) -> (caches, output)``,
  ``backward(caches, output, y) -> {"dw1": ..., "db1": ...}``, a ``parameters`` dict
  ``{"w1": ..., "b1": ...}`` and ``compute_loss(output, y)``; constructed with
  ``layers_dim``.

For each parameter entry u the analytic gradient is compared with the central difference
of the network's own reported loss L, in float64:

    dL/du ~ (L(u + h) - L(u - h)) / 2h,     h = 1e-6

error = max |analytic - numeric| / max(|analytic|, |numeric|, 1e-3 max|numeric|), and the
ratio c = <analytic, numeric> / <numeric, numeric>. When every parameter is off by the
same c, backward differentiates c times the reported loss (c = 1/2: the notebook's
backward steps along (output - y)/m, the gradient of half its mean squared error).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import guard, loader
from .errors import LoadError
from .findings import Report, finding
from .loader import quiet

LAYER_ARGS = ("layers_dim", "layer_dims", "layer_sizes", "layers", "sizes", "dims",
              "architecture")
MAX_ENTRIES = 64          # finite differences per parameter (a random sample beyond that)
H = 1e-6
TOL = 1e-5


@dataclass
class Net:
    """A NumPy network seen through one interface, on fixed data."""
    params: dict[str, np.ndarray]                       # live arrays, perturbed in place
    loss: Callable[[], float]                           # the loss the network reports
    grads: Callable[[], dict[str, np.ndarray | None]]   # its analytic gradient of that loss
    description: str


def notebook_net(net: Any, n_samples: int, rng: np.random.Generator) -> Net:
    """The seed notebook's NeuralNetwork: columns are samples."""
    params = net.parameters
    last = max(int(k[1:]) for k in params if k.startswith("w") and k[1:].isdigit())
    x = rng.standard_normal((params["w1"].shape[1], n_samples))
    y = rng.standard_normal((params[f"w{last}"].shape[0], n_samples))

    def loss() -> float:
        _, out = net.forward(x)
        return float(net.compute_loss(out, y))

    def grads() -> dict[str, np.ndarray | None]:
        caches, out = net.forward(x)
        g = net.backward(caches, out, y)
        return {k: g.get("d" + k) for k in params}
    return Net(params, loss, grads, f"{type(net).__name__}: forward -> (caches, output), "
               f"backward(caches, output, y), parameters {sorted(params)}, loss compute_loss")


def protocol_net(model: Any, loss_fn: Any, n_samples: int, rng: np.random.Generator) -> Net:
    """A numpy_nn-style module: rows are samples."""
    if hasattr(model, "to"):
        model.to(np.float64)
    if hasattr(model, "named_slots"):
        slots = {name: (m, k) for name, m, k in model.named_slots()}
        params = {name: m.params[k] for name, (m, k) in slots.items()}
    else:
        slots = None
        params = dict(model.params)
    n_in = _input_size(model, params)
    x = rng.standard_normal((n_samples, n_in))
    gens = model.generators() if hasattr(model, "generators") else []
    states = [g.bit_generator.state for g in gens]

    def forward() -> np.ndarray:
        for g, s in zip(gens, states):           # the same dropout mask every time
            g.bit_generator.state = s
        return model.forward(x)
    out = forward()
    if "CrossEntropy" in type(loss_fn).__name__:
        y = rng.integers(0, out.shape[-1], size=out.shape[:-1])
    else:
        y = rng.standard_normal(out.shape)

    def loss() -> float:
        return float(loss_fn.forward(forward(), y))

    def grads() -> dict[str, np.ndarray | None]:
        if hasattr(model, "zero_grad"):
            model.zero_grad()
        loss_fn.forward(forward(), y)
        model.backward(loss_fn.backward())
        if slots is not None:
            return {name: m.grads[k] for name, (m, k) in slots.items()}
        return {name: model.grads.get(name) for name in params}
    return Net(params, loss, grads, f"{type(model).__name__} (numpy_nn protocol), "
               f"loss {type(loss_fn).__name__}")


def _input_size(model: Any, params: dict[str, np.ndarray]) -> int:
    for m in (model.modules() if hasattr(model, "modules") else [model]):
        if hasattr(m, "in_features"):
            return int(m.in_features)
    for name, p in params.items():
        if name.endswith("weight") and p.ndim == 2:
            return int(p.shape[1])
    raise LoadError("cannot tell the network's input size: give it a Linear first layer "
                    "(in_features) or a 2-D 'weight' (out, in)")


def load_network(target: str, layers: list[int], n_samples: int, seed: int = 0) -> Net:
    obj, _ = loader.load_object(target)
    rng = np.random.default_rng(seed)
    np.random.seed(seed)                            # the notebook initialises from np.random
    try:
        from .. import numpy_nn
        numpy_nn.manual_seed(seed)
    except ImportError:                             # pragma: no cover
        pass
    loss_fn = None
    with quiet(), guard.running(f"constructing {target}"):
        try:
            if inspect.isclass(obj):
                sig = inspect.signature(obj)
                required = [n for n, v in sig.parameters.items()
                            if v.default is inspect.Parameter.empty
                            and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
                if not required:
                    made = obj()
                elif required[0] in LAYER_ARGS and len(required) == 1:
                    made = obj(list(layers))
                else:
                    raise LoadError(f"cannot construct {obj.__name__}{sig}: give a class with "
                                    f"no required argument, one taking layers_dim, or a "
                                    f"module-level function that returns the model")
            elif callable(obj) and not hasattr(obj, "forward"):
                made = obj()
            else:
                made = obj
        except LoadError:
            raise
        except Exception as e:
            raise LoadError(f"constructing {target} failed: {type(e).__name__}: {e}") from e
    if isinstance(made, tuple):
        made, loss_fn = made[0], (made[1] if len(made) > 1 else None)
    if isinstance(getattr(made, "parameters", None), dict) and hasattr(made, "compute_loss"):
        return notebook_net(made, n_samples, rng)
    if hasattr(made, "forward") and hasattr(made, "backward") and hasattr(made, "params"):
        if loss_fn is None:
            from ..numpy_nn import MSELoss
            loss_fn = MSELoss()
        with quiet(), guard.running(f"running {type(made).__name__}.forward on its first "
                                    f"input"):
            return protocol_net(made, loss_fn, n_samples, rng)
    raise LoadError(f"{target} is neither a numpy_nn-style module (forward, backward, params, "
                    f"grads) nor a notebook-style network (forward -> (caches, output), "
                    f"backward, a parameters dict, compute_loss)")


def numeric_gradient(net: Net, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Central differences of the reported loss at the flat entries ``idx`` of p."""
    flat = p.reshape(-1)
    out = np.empty(len(idx))
    for j, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + H
        plus = net.loss()
        flat[i] = old - H
        minus = net.loss()
        flat[i] = old
        out[j] = (plus - minus) / (2 * H)
    return out


SCALES = [(0.5, "the gradient is that of half the reported loss",
           "backward differentiates half the reported loss: it steps along (output - y)/m, "
           "the derivative of 1/2 * mean((output - y)^2), while the loss it reports is "
           "mean((output - y)^2), whose derivative is 2 (output - y)/m",
           "report 0.5 * mean((output - y)^2), or use 2 * (output - y) in backward (which "
           "doubles the step: halve the learning rate to keep the same training)"),
          (2.0, "the gradient is twice that of the reported loss",
           "backward differentiates twice the reported loss (a factor 2 too many)",
           "drop the extra factor 2"),
          (-1.0, "the gradient has the wrong sign", "backward returns minus the gradient",
           "negate it (and step with -lr * grad)")]


def check_gradient(target: str, layers: list[int] | None = None, n_samples: int = 8,
                   seed: int = 0, timeout: float | None = guard.DEFAULT_TIMEOUT) -> Report:
    """Compare a NumPy network's analytic gradients with finite differences of its loss.

    Each call into the network's code may take ``timeout`` seconds, and NumPy's, torch's
    and Python's global state is put back, as in ``check_layer``.
    """
    with guard.session(timeout) as session:
        report = _check_gradient(target, layers, n_samples, seed)
    report.notes.extend(session.notes)
    return report


def _check_gradient(target: str, layers: list[int] | None, n_samples: int,
                    seed: int) -> Report:
    net = load_network(target, layers or [3, 8, 1], n_samples, seed)
    report = Report("gradient", target)
    report.notes.append(net.description)
    rng = np.random.default_rng(seed + 1)
    with quiet(), guard.running(f"running {target}'s forward and backward"):
        try:
            analytic = net.grads()
        except Exception as e:
            raise LoadError(f"backward failed: {type(e).__name__}: {e}") from e
    ratios, bad, missing = {}, [], []
    for name, p in net.params.items():
        a = analytic.get(name)
        if a is None:
            missing.append(name)
            report.table.append({"parameter": name, "shape": list(p.shape), "error": None,
                                 "ratio": None, "ok": False})
            continue
        a = np.asarray(a, dtype=np.float64).reshape(-1)
        if a.size != p.size:
            bad.append(f"{name}: gradient of shape {np.shape(analytic[name])}, parameter "
                       f"{p.shape}")
            continue
        idx = np.arange(p.size) if p.size <= MAX_ENTRIES else \
            np.sort(rng.choice(p.size, MAX_ENTRIES, replace=False))
        with quiet(), guard.running(f"running {target}'s loss {2 * len(idx)} times (finite "
                                    f"differences for {name})"):
            n = numeric_gradient(net, p, idx)
        a = a[idx]
        floor = max(1e-3 * float(np.max(np.abs(n))), 1e-10)
        err = float(np.max(np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)))
        nn = float(n @ n)
        c = float(a @ n) / nn if nn > 0 else float("nan")
        ok = err < TOL
        report.table.append({"parameter": name, "shape": list(p.shape), "error": err,
                             "ratio": c, "ok": ok})
        report.check(f"d loss / d {name}", ok, f"worst relative error {err:.2g}")
        if not ok:
            ratios[name] = (c, float(np.max(np.abs(a - c * n))) / max(float(np.max(np.abs(a))),
                                                                        1e-300))
            hint = next((f" ({why})" for k, why in (
                (1.0 / n_samples, f"1/{n_samples}: a mean over the {n_samples} samples where "
                                  f"their sum belongs"),
                (float(n_samples), f"{n_samples}x: a sum over the {n_samples} samples where "
                                   f"their mean belongs")) if abs(c / k - 1) < 1e-3), "")
            bad.append(f"{name}: worst relative error {err:.2g}, analytic = {c:.4g} x "
                       f"numeric{hint}")
    if missing:
        report.add(finding("gradient-missing", f"no gradient for {', '.join(missing)}"))
    all_off = ratios and len(ratios) == len(report.table) - len(missing)
    cs = [c for c, _ in ratios.values()]
    common = all_off and all(abs(c / cs[0] - 1) < 1e-3 and res < 1e-4
                             for c, res in ratios.values())
    if common and abs(cs[0] - 1) > 1e-3:
        c = cs[0]
        title, cause, fix = next(((t, ca, f) for s, t, ca, f in SCALES
                                  if abs(c / s - 1) < 1e-3),
                                 (f"the gradient is {c:.4g} times that of the reported loss",
                                  None, None))
        report.add(finding("gradient-scaled", [f"every parameter's analytic gradient = "
                                               f"{c:.4g} x the finite difference of the "
                                               f"reported loss"] + bad,
                           title=title, cause=cause, fix=fix))
    elif bad:
        report.add(finding("gradient-wrong", bad))
    return report
