"""Shared pieces of the training tests: a token task with padding, a plain large-batch
reference, the notebook's divide-by-k loop, and workers for spawned gloo processes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from fromscratch.nn import BatchNorm, SyncBatchNorm
from fromscratch.train import fit
from fromscratch.train.fit import NonFiniteError

IGNORE = -100
T, FEATURES, CLASSES = 6, 4, 3


def token_batches(n_batches: int, seed: int = 0,
                  poison: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Micro-batches of 1..4 sequences of T tokens; a random tail of each is padding
    (target IGNORE), so micro-batches hold different numbers of items. Micro-batch
    ``poison`` gets an inf input (its loss and gradient are then NaN)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(n_batches):
        b = 1 + (i * 7) % 4
        x = torch.randn(b, T, FEATURES, generator=g, dtype=torch.float64)
        y = torch.randint(0, CLASSES, (b, T), generator=g)
        lengths = torch.randint(1, T + 1, (b,), generator=g)
        y[torch.arange(T) >= lengths[:, None]] = IGNORE
        batches.append((x, y))
    if poison is not None:
        batches[poison][0][0, 0, 0] = float("inf")
    return batches


def token_model(seed: int = 0, norm: type[nn.Module] | None = None) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(FEATURES, 16)]
    if norm is not None:
        layers.append(norm(16, momentum=0.3))
    layers += [nn.Tanh(), nn.Linear(16, CLASSES)]
    return nn.Sequential(*layers).double()


def ce_sum(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over tokens that are not padding, their number)."""
    total = F.cross_entropy(output.reshape(-1, CLASSES), target.reshape(-1),
                            ignore_index=IGNORE, reduction="sum")
    return total, (target != IGNORE).sum()


def ce_mean(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output.reshape(-1, CLASSES), target.reshape(-1), ignore_index=IGNORE)


def make_optimizer(name: str, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    if name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-2)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))


def windows(batches: list[Any], size: int) -> list[list[Any]]:
    return [batches[i:i + size] for i in range(0, len(batches), size)]


def concat(window: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([b[0] for b in window]), torch.cat([b[1] for b in window])


def large_batch(model: nn.Module, batches: list[Any], k: int, optimizer: Any, scheduler: Any,
                epochs: int = 1, max_grad_norm: float | None = None) -> list[float]:
    """The definition: each window concatenated into one batch, torch's own mean loss."""
    losses = []
    for _ in range(epochs):
        for window in windows(batches, k):
            x, y = concat(window)
            loss = ce_mean(model(x), y)
            loss.backward()
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    return losses


def divide_by_k(model: nn.Module, batches: list[Any], k: int, optimizer: Any, scheduler: Any,
                epochs: int = 1) -> None:
    """The notebook's loop: every micro-batch mean divided by k, step every k or at the end."""
    for _ in range(epochs):
        for i, (x, y) in enumerate(batches):
            (ce_mean(model(x), y) / k).backward()
            if (i + 1) % k == 0 or (i + 1) == len(batches):
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# --- workers for spawned processes (module-level so that spawn can import them) --------

def fit_worker(rank: int, cfgs: dict[str, dict[str, Any]], out: str) -> None:
    """fit on W processes, one run per config; rank 0 saves parameters and history.

    With ``count_syncs`` the model is wrapped in DDP here (fit keeps a DDP model as it is)
    with a communication hook that counts gradient all-reduces.
    """
    results = {}
    for name, cfg in cfgs.items():
        norm = {"sync": SyncBatchNorm, "bn": BatchNorm, None: None}[cfg.get("norm")]
        device = torch.device(cfg.get("device", "cpu"))
        if device.type == "cuda":
            torch.cuda.set_device(0)
        model = token_model(norm=norm).to(device)
        optimizer, scheduler = make_optimizer(cfg["optimizer"], model)
        syncs = {"n": 0}
        net: nn.Module = model
        if cfg.get("count_syncs"):
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
            net = nn.parallel.DistributedDataParallel(model)

            def hook(state, bucket):  # DDP checks the annotations: leave them out
                syncs["n"] += 1
                return allreduce_hook(None, bucket)
            net.register_comm_hook(None, hook)
        loss_fn: Callable[..., Any] = ce_mean if cfg.get("mean_loss") else ce_sum
        try:
            history = fit(net, token_batches(cfg["n_batches"], poison=cfg.get("poison")),
                          loss_fn, optimizer, scheduler=scheduler, epochs=cfg["epochs"],
                          accumulation_steps=cfg["k"], max_grad_norm=cfg.get("max_grad_norm"),
                          on_nonfinite=cfg.get("on_nonfinite", "raise"), progress=False)
        except NonFiniteError as e:   # every rank must raise it, or the others would hang
            results[name] = {"error": str(e)}
            continue
        results[name] = {"params": {k: v.cpu() for k, v in params(model).items()},
                         "loss": history.loss, "skipped": history.skipped,
                         "items": history.items, "lr": history.lr, "syncs": syncs["n"]}
    if rank == 0:
        torch.save(results, Path(out) / "fit.pt")


def sync_bn_worker(rank: int, cases: list[tuple[int, ...]], out: str) -> None:
    """For each case of per-rank row counts: SyncBatchNorm on this rank's slice of one
    global batch, two training steps then eval; everything saved for the parent."""
    results = []
    for sizes in cases:
        xs, dys, w, b = sync_bn_data(sizes)
        start = sum(sizes[:rank])
        layer = SyncBatchNorm(5, momentum=0.3, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        record: dict[str, Any] = {"sizes": sizes}
        try:
            for step, (x, dy) in enumerate(zip(xs, dys)):
                xr = x[start:start + sizes[rank]].clone().requires_grad_()
                y = layer(xr)
                y.backward(dy[start:start + sizes[rank]])
                record[f"y{step}"], record[f"dx{step}"] = y.detach(), xr.grad
                record[f"dw{step}"], record[f"db{step}"] = layer.weight.grad.clone(), layer.bias.grad.clone()
                layer.weight.grad = layer.bias.grad = None
            record["running"] = (layer.running_mean.clone(), layer.running_var.clone(),
                                 int(layer.num_batches_tracked))
            layer.eval()
            record["eval"] = layer(xs[0][start:start + sizes[rank]]).detach()
        except ValueError as e:
            record["error"] = str(e)
        results.append(record)
    torch.save(results, Path(out) / f"sync_bn_rank{rank}.pt")


def sync_bn_data(sizes: tuple[int, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                   torch.Tensor, torch.Tensor]:
    """Two global batches (N, 3, 5), mean-shifted, random upstream gradients."""
    g = torch.Generator().manual_seed(sum(sizes))
    n = sum(sizes)
    xs = [torch.randn(n, 3, 5, generator=g, dtype=torch.float64) * 2 + 3 for _ in range(2)]
    dys = [torch.randn(n, 3, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    w = torch.randn(5, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    return xs, dys, w, b


# --- `fromscratch train` in this process ------------------------------------------------

TINY = ["--points", "20", "--batch-size", "5", "--epochs", "2", "--no-progress"]   # 8 steps


def train_cli(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    """Run ``fromscratch train ARGV`` here: (exit status, stdout, stderr); a usage error's
    SystemExit becomes its status."""
    from fromscratch import cli
    try:
        status = cli.main(["train", *argv])
    except SystemExit as e:
        status = int(e.code or 0)
    out, err = capsys.readouterr()
    return status, out, err
