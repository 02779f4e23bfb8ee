"""``fromscratch train``: the notebook's MLP on the cubic, in mini-batches, through ``fit``.

    fromscratch train --epochs 20 --batch-size 10 --accumulation-steps 2 --out runs/a
    torchrun --nproc_per_node=2 -m fromscratch train --accumulation-steps 1 --out runs/b

Both take the same steps (2 processes x 1 = 1 process x 2 micro-batches per step). Under
torchrun the process group comes from the environment (gloo on CPU, NCCL on GPU).
With ``--checkpoint-dir`` a killed run continues with ``--resume``, bit for bit on CPU;
the resume must use the run's settings (only --epochs with --schedule constant, --out,
--checkpoint-every, --throttle, --no-progress, --device and --skip-nonfinite may change).
--out and --checkpoint-dir are checked before training: a file in the way, a read-only
folder or a full disk is an error at once, not after the last epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ..argtypes import non_negative_float, output_folder, positive_float, positive_int
from ..atomic import OutputError, atomic_write_text
from . import distributed as dd
from .checkpoint import CheckpointError, atomic_save
from .fit import NonFiniteError, fit
from .runconfig import ResumeError
from .tasks import cubic, mse_sum

DTYPES = {"float32": torch.float32, "float64": torch.float64}
PROG = "fromscratch train"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=positive_int, default=20)
    p.add_argument("--batch-size", type=positive_int, default=10, help="items per micro-batch")
    p.add_argument("--accumulation-steps", type=positive_int, default=1,
                   help="micro-batches per optimizer step on each process")
    p.add_argument("--points", type=positive_int, default=100, help="data set size")
    p.add_argument("--lr", type=positive_float, default=0.1)
    p.add_argument("--momentum", type=non_negative_float, default=0.9)
    p.add_argument("--schedule", choices=["constant", "cosine"], default="cosine",
                   help="cosine decays the rate to 0 over --epochs")
    p.add_argument("--max-grad-norm", type=positive_float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-every", type=positive_int, default=1, help="optimizer steps")
    p.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint-dir (with the same settings; a constant "
                        "schedule may change --epochs)")
    p.add_argument("--skip-nonfinite", action="store_true",
                   help="skip a step whose loss or gradient is inf/NaN (default: stop)")
    p.add_argument("--out", default="train-output", help="where model.pt and metrics.json go")
    p.add_argument("--throttle", type=non_negative_float, default=0.0,
                   help="sleep this many seconds after each step (to watch it, or to kill it)")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments, with the output folders checked (exit 2 when one is unusable)."""
    p = parser()
    args = p.parse_args(argv)
    if args.resume and args.checkpoint_dir is None:
        p.error("--resume needs --checkpoint-dir (the folder to resume from)")
    if int(os.environ.get("RANK", "0")) == 0:    # the writer; before any process group
        output_folder(p, args.out, "--out")
        if args.checkpoint_dir is not None:
            output_folder(p, args.checkpoint_dir, "--checkpoint-dir")
    return args


def run_config(args: argparse.Namespace) -> dict[str, object]:
    """What fit cannot see for itself and a resume must not change (fit records the
    epochs, accumulation, clipping, optimizer and scheduler settings itself)."""
    return {"task": "cubic", "seed": args.seed, "points": args.points,
            "batch_size": args.batch_size, "schedule": args.schedule, "dtype": args.dtype}


def main(argv: list[str]) -> int:
    args = parse(argv)
    distributed = dd.init_from_env()
    try:
        status = _train(args)
    except (ResumeError, OutputError) as e:     # the arguments do not fit: a usage error
        return _fail(e, 2)
    except (CheckpointError, NonFiniteError) as e:
        return _fail(e, 1)
    if distributed:        # on an error, no teardown: it could wait on a dead rank
        dd.finish()
    return status


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in state.items()}


def _fail(error: Exception, status: int) -> int:
    print(f"{PROG}: error: {error}", file=sys.stderr)
    return status


def _train(args: argparse.Namespace) -> int:
    rank, world = dd.rank_and_world()
    cuda = args.device == "cuda" or (args.device == "auto" and dd.uses_gpu())
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")

    model, x, y = cubic(args.seed, n=args.points, dtype=DTYPES[args.dtype])
    model.to(device)
    # Every rank iterates the same order: a per-epoch shuffle seeded by --seed (a
    # DistributedSampler over one replica is exactly that); fit deals it round-robin.
    data = TensorDataset(x, y)
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    steps = args.epochs * -(-len(loader) // (world * args.accumulation_steps))
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
                 if args.schedule == "cosine" else None)

    def throttle(step: int, net: torch.nn.Module, loss: float) -> None:
        time.sleep(args.throttle)

    start = time.perf_counter()
    history = fit(model, loader, mse_sum, optimizer, epochs=args.epochs,
                  accumulation_steps=args.accumulation_steps, max_grad_norm=args.max_grad_norm,
                  scheduler=scheduler, checkpoint_dir=args.checkpoint_dir,
                  checkpoint_every=args.checkpoint_every, resume=args.resume,
                  config=run_config(args),
                  on_nonfinite="skip" if args.skip_nonfinite else "raise",
                  callback=throttle if args.throttle > 0 else None,
                  progress=False if args.no_progress else None)
    seconds = time.perf_counter() - start
    if rank != 0:
        return 0
    out = Path(args.out)
    metrics = {
        "task": "cubic", "final_loss": history.loss[-1] if history.loss else None,
        "steps": history.steps, "epochs": args.epochs, "world_size": world,
        "accumulation_steps": args.accumulation_steps,
        "micro_batches_per_step": world * args.accumulation_steps,
        "resumed_from_step": history.resumed_from, "skipped_steps": history.skipped,
        "seconds": seconds, "loss": history.loss,
    }
    try:
        atomic_save(_cpu(model.state_dict()), out / "model.pt")
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    except OSError as e:   # the disk filled up during training: the old files stay whole
        return _fail(OSError(f"cannot write to --out {out}: {e.strerror or e}"), 1)
    resumed = (f", resumed at step {history.resumed_from}"
               if history.resumed_from is not None else "")
    print(f"{history.steps} steps on {world} process(es) x {args.accumulation_steps} "
          f"micro-batches{resumed}; final loss {metrics['final_loss']:.6f}")
    print(f"model: {out / 'model.pt'}\nmetrics: {out / 'metrics.json'}")
    return 0
