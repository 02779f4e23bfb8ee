"""``fit``: the training loop, with gradient accumulation that equals large-batch training.

One optimizer step per *window* of micro-batches, on one process or many:

    for each micro-batch j of the window (W*k of them, k on each of W processes):
        forward; (s_j, n_j) = loss_fn(output, target)
        backward s_j * W / N_hat           (no_sync on all but the last micro-batch)
    N = sum of n_j over the window and every process (one all-reduce)
    unscale (AMP) -> gradient *= N_hat / N -> clip the full gradient
    -> loss and gradient finite? -> step -> scheduler -> zero

so that after the step the parameters are those of one step on the whole window taken as
one batch with loss sum_j s_j / N (accumulate.py has the derivation). Checkpoints are
written between windows and hold everything needed to continue bit for bit, and the run's
configuration, which a resume must match (runconfig.py).
"""
from __future__ import annotations

import math
import numbers
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping

import torch
from torch import nn

from ..atomic import OutputError, check_writable
from . import checkpoint as ckpt
from . import distributed as dd
from . import runconfig
from .accumulate import Window, sum_and_count
from .progress import progress_bar

_END = object()
LossFn = Callable[[Any, Any], Any]   # (output, target) -> (sum, count) or a scalar mean
Callback = Callable[[int, nn.Module, float], None]
OnNonFinite = Literal["raise", "skip"]
# What every checkpoint written by fit holds (load checks for them).
KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "rng_epoch_start", "epoch",
        "micro_batch", "config", "history")


class NonFiniteError(FloatingPointError):
    """A window's loss or gradient was inf or NaN: no step was taken and nothing saved."""


class _NonFinite(Exception):
    """Raised by _window_step with what was not finite; fit adds where it happened."""


@dataclass
class History:
    """What ``fit`` logged, one entry per window (optimizer step)."""

    loss: list[float] = field(default_factory=list)       # window's sum / N: same for any k, W
    items: list[float] = field(default_factory=list)      # N, the window's item count
    lr: list[float] = field(default_factory=list)         # first param group's lr at the step
    grad_norm: list[float] = field(default_factory=list)  # before clipping (max_grad_norm set)
    skipped: list[int] = field(default_factory=list)      # steps not taken: AMP's inf/NaN
    #                                                       gradient, or on_nonfinite="skip"
    resumed_from: int | None = None                       # step of the checkpoint resumed

    @property
    def steps(self) -> int:
        return len(self.loss)


def fit(model: nn.Module, loader: Iterable[Any], loss_fn: LossFn,
        optimizer: torch.optim.Optimizer, *, epochs: int = 1, accumulation_steps: int = 1,
        max_grad_norm: float | None = None, scaler: torch.amp.GradScaler | None = None,
        scheduler: Any = None, checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 50, resume: bool = False, config: Mapping[str, Any] | None = None,
        on_nonfinite: OnNonFinite = "raise", autocast_dtype: torch.dtype | None = None,
        callback: Callback | None = None, progress: bool | None = None) -> History:
    """Train ``model`` on ``loader``'s micro-batches ``(input, target)`` for ``epochs``.

    ``loss_fn(output, target)`` returns ``(sum_of_item_losses, number_of_items)``, or a
    plain mean over ``len(target)`` items. Every ``accumulation_steps`` micro-batches
    (times the number of processes when torch.distributed is initialised) make one
    optimizer step, equal to one step on those micro-batches taken as one batch; the
    epoch's last window may be shorter. ``scheduler.step()`` follows every optimizer step
    that was taken (not one that AMP's ``scaler`` skipped). ``max_grad_norm`` clips the
    window's full gradient once, after unscaling.

    Under torch.distributed the model is wrapped in DistributedDataParallel and micro-batch
    i of the loader goes to rank i mod W; every rank must iterate the same loader in the
    same order (seed its shuffle; ``set_epoch(epoch)`` is called on the loader, its sampler
    and batch sampler when they have it).

    With ``checkpoint_dir`` (created and test-written before the first step) a checkpoint
    is written atomically every ``checkpoint_every`` steps, at the end of each epoch and at
    the end; ``resume=True`` continues from it when it exists. The checkpoint records the
    run's configuration: fit's own settings and the caller's ``config`` (plain values that
    fit cannot see: a seed, a data set size). A resume with any recorded setting changed
    raises ResumeError listing each one; ``epochs`` may change only without a scheduler.

    A window whose loss or gradient is inf or NaN is never stepped on: ``on_nonfinite=
    "raise"`` stops with NonFiniteError (the last checkpoint stays the last good one),
    ``"skip"`` drops the window's gradient and goes on (the step is listed in
    ``History.skipped``). With an AMP ``scaler`` an inf/NaN gradient is the scaler's to
    skip, as usual.

    ``callback(step, model, loss)`` runs after each step (before that step's checkpoint).
    ``autocast_dtype`` (e.g. torch.float16, with a ``scaler``) runs the forward under
    ``torch.autocast``. ``progress`` shows a bar (None: when stdout is a terminal).
    ``loader`` must be re-iterable (a DataLoader, a list), once per epoch.
    Returns the History.
    """
    _check_arguments(epochs, accumulation_steps, checkpoint_every, max_grad_norm, resume,
                     checkpoint_dir, on_nonfinite)
    net = dd.unwrap(model)
    rank, world = dd.rank_and_world()
    k = accumulation_steps
    generator = getattr(loader, "generator", None)
    generator = generator if isinstance(generator, torch.Generator) else None
    path = Path(checkpoint_dir) / ckpt.CHECKPOINT if checkpoint_dir is not None else None
    per_epoch = len(loader) if hasattr(loader, "__len__") else None   # type: ignore[arg-type]
    run_config = runconfig.merge(runconfig.fit_config(
        epochs=epochs, accumulation_steps=k, world_size=world, micro_batches_per_epoch=per_epoch,
        max_grad_norm=max_grad_norm, autocast_dtype=autocast_dtype, scaler=scaler, model=net,
        optimizer=optimizer, scheduler=scheduler), config)
    if path is not None:
        _check_folder(path.parent, rank)
    start = _Start()
    if resume and path is not None and path.exists():
        start = _resume(path, run_config, epochs, rank, net, optimizer, scheduler, scaler)
    history = start.history
    saver = _Saver(path, rank, generator, run_config, net, optimizer, scheduler, scaler,
                   history)

    step = partial(_window_step, net=net, loss_fn=loss_fn, optimizer=optimizer, k=k,
                   world=world, device=next(net.parameters()).device,
                   max_grad_norm=max_grad_norm, scaler=scaler, scheduler=scheduler,
                   autocast_dtype=autocast_dtype, on_nonfinite=on_nonfinite)
    ddp = dd.wrap(model)     # a model already in DDP is kept as it is
    ddp.train()
    optimizer.zero_grad(set_to_none=True)

    total = epochs * math.ceil(per_epoch / (world * k)) if per_epoch is not None else None
    show = progress if rank == 0 else False
    with progress_bar(total, show, completed=history.steps) as update:
        for epoch in range(start.epoch, epochs):
            _set_epoch(loader, epoch)
            it, index, epoch_rng = _begin_epoch(loader, epoch, generator,
                                                start if epoch == start.epoch else None)
            while window := dd.read_window(it, world * k):
                index += len(window)
                try:
                    logged = step(ddp, dd.deal(window, rank, world), history)
                except _NonFinite as bad:
                    raise NonFiniteError(_nonfinite_message(
                        str(bad), history.steps + 1, epoch, index - len(window), index, path,
                        saver.last_saved)) from None
                if logged:
                    update(history.loss[-1])
                    if callback is not None:
                        callback(history.steps, net, history.loss[-1])
                    if path is not None and history.steps % checkpoint_every == 0:
                        saver.save(epoch, index, epoch_rng)
            if path is not None:
                saver.save(epoch + 1, 0, ckpt.rng_state(generator))
    return history


def _check_arguments(epochs: int, accumulation_steps: int, checkpoint_every: int,
                     max_grad_norm: float | None, resume: bool,
                     checkpoint_dir: str | Path | None, on_nonfinite: str) -> None:
    """fit's arguments, each refused with its name and value before anything runs."""
    _check_count("epochs", epochs)
    _check_count("accumulation_steps", accumulation_steps)
    _check_count("checkpoint_every", checkpoint_every)
    if max_grad_norm is not None and not (
            isinstance(max_grad_norm, numbers.Real) and not isinstance(max_grad_norm, bool)
            and math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be a finite number > 0 (or None), "
                         f"got {max_grad_norm!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from")
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")


@dataclass
class _Start:
    """Where a run starts: from scratch, or where a checkpoint left it (epoch, micro-batch,
    this rank's random state at the epoch's start and at the checkpoint)."""
    history: History = field(default_factory=History)
    epoch: int = 0
    micro_batch: int = 0
    rng_epoch: Any = None
    rng_now: Any = None


def _resume(path: Path, run_config: dict, epochs: int, rank: int, net: nn.Module,
            optimizer: torch.optim.Optimizer, scheduler: Any,
            scaler: torch.amp.GradScaler | None) -> _Start:
    """Load the checkpoint at ``path`` into the model, optimizer, scheduler and scaler,
    after checking that it was written by a run with this configuration."""
    state = ckpt.load(path, keys=KEYS)      # on the CPU: load_state_dict moves what it must
    runconfig.check_resume(state["config"], run_config, path)
    if state["epoch"] > epochs:
        raise runconfig.ResumeError(f"cannot resume from {path}: it has finished "
                                    f"{state['epoch']} epochs, more than epochs={epochs}")
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None:
        scaler.load_state_dict(state["scaler"])
    history = History(**state["history"])
    history.resumed_from = history.steps
    return _Start(history, state["epoch"], state["micro_batch"],
                  state["rng_epoch_start"][rank], state["rng"][rank])


class _Saver:
    """Writes fit's checkpoint (rank 0, atomically) with every rank's random state, and
    remembers the step of the last one written (the last good one, for error messages)."""

    def __init__(self, path: Path | None, rank: int, generator: torch.Generator | None,
                 run_config: dict, net: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, scaler: torch.amp.GradScaler | None, history: History):
        self.path, self.rank, self.generator, self.run_config = path, rank, generator, run_config
        self.net, self.optimizer, self.scheduler, self.scaler = net, optimizer, scheduler, scaler
        self.history = history
        self.last_saved = history.resumed_from

    def save(self, epoch: int, index: int, epoch_rng: dict[str, Any]) -> None:
        rngs = dd.all_gather_object(ckpt.rng_state(self.generator))   # every rank's stream
        epoch_rngs = dd.all_gather_object(epoch_rng)
        if self.rank == 0 and self.path is not None:
            ckpt.atomic_save({
                "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rngs, "rng_epoch_start": epoch_rngs,
                "epoch": epoch, "micro_batch": index, "config": self.run_config,
                "history": {k: v for k, v in asdict(self.history).items()
                            if k != "resumed_from"},
            }, self.path)
        self.last_saved = self.history.steps


def _begin_epoch(loader: Iterable[Any], epoch: int, generator: torch.Generator | None,
                 start: _Start | None) -> tuple[Any, int, dict[str, Any]]:
    """(the epoch's iterator, micro-batches already consumed, the random state at the
    epoch's start). Resuming in the middle of an epoch, the loader is replayed from the
    epoch's start up to where the checkpoint was taken, then the random state of that
    moment is put back."""
    resuming = start is not None and start.rng_epoch is not None
    if resuming:
        ckpt.set_rng_state(start.rng_epoch, generator)
    epoch_rng = ckpt.rng_state(generator)
    it = iter(loader)
    index = 0
    if resuming and start.micro_batch > 0:
        for index in range(1, start.micro_batch + 1):
            if next(it, _END) is _END:
                raise ValueError(f"the loader gave {index - 1} micro-batches in epoch "
                                 f"{epoch}, the checkpoint was taken after "
                                 f"{start.micro_batch}")
        ckpt.set_rng_state(start.rng_now, generator)
    return it, index, epoch_rng


def _check_count(name: str, value: Any) -> None:
    """A positive whole number: not a bool, not a float such as 1.5 or 2.0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_folder(folder: Path, rank: int) -> None:
    """Rank 0 (the writer) proves it can write into ``folder`` before training starts;
    every rank raises its verdict, so that none waits for a rank that has stopped."""
    problem = None
    if rank == 0:
        try:
            check_writable(folder, "checkpoint_dir")
        except OutputError as e:
            problem = str(e)
    problem = dd.all_gather_object(problem)[0]
    if problem is not None:
        raise OutputError(problem)


def _nonfinite_message(problem: str, step: int, epoch: int, first: int, last: int,
                       path: Path | None, last_saved: int | None) -> str:
    batches = f"micro-batch {last}" if last == first + 1 else f"micro-batches {first + 1}..{last}"
    where = f"step {step} (epoch {epoch + 1}, {batches}): {problem}; no step was taken"
    hint = " (to skip such steps: on_nonfinite='skip', fromscratch train --skip-nonfinite)"
    if path is None:
        return where + hint
    kept = (f"{path} still holds step {last_saved}, the last good one" if last_saved is not None
            else f"no checkpoint had been written to {path} yet")
    return f"{where} and nothing was saved: {kept}{hint}"


def _window_step(ddp: nn.Module, batches: list[Any], history: History, *, net: nn.Module,
                 loss_fn: LossFn, optimizer: torch.optim.Optimizer, k: int, world: int,
                 device: torch.device, max_grad_norm: float | None,
                 scaler: torch.amp.GradScaler | None, scheduler: Any,
                 autocast_dtype: torch.dtype | None, on_nonfinite: OnNonFinite) -> bool:
    """Forward and backward this rank's micro-batches of one window, then one step.

    Returns False when the window had no items at all (nothing to step on, nothing logged).
    A non-finite loss or gradient raises _NonFinite (on_nonfinite="raise") or is logged as
    a skipped step; every rank decides alike, as both are global (summed or all-reduced).
    """
    window: Window | None = None
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else nullcontext())
    for j, batch in enumerate(batches):
        inputs, target = _split(_to(batch, device))
        with dd.no_sync(ddp, sync=j == len(batches) - 1):
            with autocast:
                total, count = sum_and_count(loss_fn(ddp(inputs), target), target)
            if window is None:   # N_hat from the first micro-batch of every rank
                window = Window.start(dd.all_reduce_sum([count], device)[0], k, world)
            loss = window.loss_to_backward(total, count)
            (scaler.scale(loss) if scaler is not None else loss).backward()
    assert window is not None
    count, loss_sum = dd.all_reduce_sum([window.count, window.loss_sum], device)
    if count == 0:
        warnings.warn("a window had no items (every target ignored); no step taken",
                      stacklevel=3)
        optimizer.zero_grad(set_to_none=True)
        return False

    params = [p for p in net.parameters() if p.grad is not None]
    if scaler is not None:
        scaler.unscale_(optimizer)
    correction = window.correction(count)
    if correction != 1.0:
        for p in params:
            p.grad.mul_(correction)
    if max_grad_norm is not None:
        norm = float(nn.utils.clip_grad_norm_(params, max_grad_norm))
    else:
        norm = _grad_norm(params) if scaler is None else 0.0   # AMP checks its own gradient
    problem = _nonfinite(loss_sum / count, norm, amp=scaler is not None)
    if problem is not None and on_nonfinite == "raise":
        optimizer.zero_grad(set_to_none=True)
        raise _NonFinite(problem)
    if max_grad_norm is not None:
        history.grad_norm.append(norm)
    history.lr.append(float(optimizer.param_groups[0]["lr"]))
    if problem is not None:
        stepped = False
    elif scaler is not None:
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        stepped = not scaler.get_scale() < scale   # the scale backs off only on a skipped step
    else:
        optimizer.step()
        stepped = True
    if stepped and scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    history.loss.append(loss_sum / count)
    history.items.append(count)
    if not stepped:
        history.skipped.append(len(history.loss))
    return True


def _grad_norm(params: list[torch.Tensor]) -> float:
    """The full gradient's 2-norm, as clip_grad_norm_ computes it (inf/NaN if an entry is)."""
    if not params:
        return 0.0
    norms = [torch.linalg.vector_norm(p.grad).to(params[0].grad.device) for p in params]
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def _nonfinite(loss: float, grad_norm: float, amp: bool) -> str | None:
    """What is wrong with a window, or None. Under AMP an inf/NaN gradient is an overflow
    that the scaler skips and answers with a smaller scale: not an error."""
    if amp and not math.isfinite(grad_norm):
        return None
    if not math.isfinite(loss):
        return f"the loss is {loss}"
    if not math.isfinite(grad_norm):
        return f"the gradient norm is {grad_norm}"
    return None


def _split(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(f"fit expects each micro-batch to be (input, target), got "
                    f"{type(batch).__name__}"
                    f"{' of length ' + str(len(batch)) if hasattr(batch, '__len__') else ''}")


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _set_epoch(loader: Any, epoch: int) -> None:
    """DistributedSampler's convention: reshuffle deterministically per epoch."""
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
