"""A run's configuration: what ``fit`` stores in every checkpoint and compares on resume.

A checkpoint continues one run. Resuming it with other settings (another seed, batch size,
learning rate, schedule length) would silently train on other data or with other rules
and still look like a continuation, so ``fit`` refuses any difference and lists each one.

The configuration is made of what ``fit`` sees itself (``fit_config``: epochs, accumulation
steps, world size, micro-batches per epoch, gradient clipping, AMP, parameter dtypes, the
optimizer's and scheduler's settings) and what only the caller knows (``fit``'s ``config``
argument: a seed, a data set size, ...). Everything recorded must match on resume, with one
exception: ``epochs`` may change in a run without a scheduler, where the learning rate does
not depend on the run's length. With a scheduler the schedule was sized for the original
run, and past its end it does not stay at its final rate (cosine climbs back up), so a
longer run is refused. What is not recorded may change freely: ``checkpoint_every``,
``callback``, ``progress``, ``on_nonfinite``, the device.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch

Config = dict[str, Any]
NOT_RECORDED = "(not recorded)"

# Scheduler state that is progress, not a setting (it differs between two checkpoints of
# one run); base_lrs repeats the optimizer's lr.
_SCHEDULER_PROGRESS = {"last_epoch", "base_lrs", "best", "num_bad_epochs", "cooldown_counter",
                       "verbose"}


class ResumeError(ValueError):
    """A checkpoint that this call of ``fit`` may not continue (other settings, or it is
    already past the end)."""


def plain(value: Any) -> Any:
    """``value`` as plain Python that ``torch.load(weights_only=True)`` reads back: numbers,
    strings, None, lists and dicts of them; a one-element tensor as its number; anything
    else as its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return repr(value)


def is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


def fit_config(*, epochs: int, accumulation_steps: int, world_size: int,
               micro_batches_per_epoch: int | None, max_grad_norm: float | None,
               autocast_dtype: torch.dtype | None, scaler: Any, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer, scheduler: Any) -> Config:
    """The settings ``fit`` can see for itself. Call it before any state is loaded: the
    optimizer's and scheduler's settings are read as they were constructed."""
    config: Config = {
        "epochs": epochs, "accumulation_steps": accumulation_steps, "world_size": world_size,
        "micro_batches_per_epoch": micro_batches_per_epoch, "max_grad_norm": max_grad_norm,
        "autocast_dtype": None if autocast_dtype is None else str(autocast_dtype),
        "grad_scaler": scaler is not None,
        "parameter_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
        "optimizer": type(optimizer).__name__,
    }
    groups = optimizer.param_groups
    for i, group in enumerate(groups):
        prefix = "optimizer." if len(groups) == 1 else f"optimizer.groups[{i}]."
        for key, value in group.items():
            if key in ("params", "initial_lr"):
                continue
            # A scheduler moves lr and keeps the constructed one in initial_lr.
            config[prefix + key] = plain(group.get("initial_lr", value) if key == "lr" else value)
    config["scheduler"] = None if scheduler is None else type(scheduler).__name__
    if scheduler is not None:
        for key, value in scheduler.state_dict().items():
            if not key.startswith("_") and key not in _SCHEDULER_PROGRESS:
                config[f"scheduler.{key}"] = plain(value)
    return config


def merge(own: Config, user: Mapping[str, Any] | None) -> Config:
    """``fit``'s own settings and the caller's ``config``; a key in both must agree."""
    if user is None:
        return dict(own)
    if not isinstance(user, Mapping):
        raise TypeError(f"config must be a dict of settings, got {type(user).__name__}")
    for key, value in user.items():
        if not isinstance(key, str) or not is_plain(value):
            raise TypeError(f"config[{key!r}] = {value!r}: a checkpoint's config holds str keys "
                            f"and plain values (numbers, strings, None, lists, dicts)")
        if key in own and not same(own[key], value):
            raise ValueError(f"config[{key!r}] = {value!r}, but fit was called with "
                             f"{key}={own[key]!r}")
    return {**own, **plain(user)}


def same(a: Any, b: Any) -> bool:
    """Equal, where NaN equals NaN (a recorded NaN is the same setting again)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def check_resume(old: Mapping[str, Any], new: Mapping[str, Any], path: Path) -> None:
    """Raise ResumeError listing every field of ``new`` that differs from ``old`` (the
    checkpoint's), as ``name: old -> new``; ``epochs`` may differ without a scheduler."""
    may_extend = old.get("scheduler") is None and new.get("scheduler") is None
    keys = [*old, *(k for k in new if k not in old)]
    lines = [f"  {key}: {_show(old, key)} -> {_show(new, key)}" for key in keys
             if not (key == "epochs" and may_extend)
             and not same(old.get(key, NOT_RECORDED), new.get(key, NOT_RECORDED))]
    if not lines:
        return
    why = ""
    if any(line.startswith("  epochs:") for line in lines):
        why = ("\nepochs may change only in a run without a scheduler: this schedule was sized "
               "for the original run, and past its end it does not stay at its last rate")
    raise ResumeError(f"cannot resume from {path}: {len(lines)} setting(s) differ from the run "
                      f"that wrote it (checkpoint -> now)\n" + "\n".join(lines) + why +
                      "\nresume with the checkpoint's settings, or start the new settings in "
                      "another checkpoint folder")


def _show(config: Mapping[str, Any], key: str) -> str:
    return repr(config[key]) if key in config else NOT_RECORDED
