"""``fromscratch train``: the notebook's MLP on the cubic, in mini-batches, through ``fit``.

    fromscratch train --epochs 20 --batch-size 10 --accumulation-steps 2 --out runs/a
    torchrun --nproc_per_node=2 -m fromscratch train --accumulation-steps 1 --out runs/b

Both take the same steps (2 processes x 1 = 1 process x 2 micro-batches per step). Under
torchrun the process group comes from the environment (gloo on CPU, NCCL on GPU).
With ``--checkpoint-dir`` a killed run continues with ``--resume``, bit for bit on CPU.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from . import distributed as dd
from .fit import fit
from .tasks import cubic, mse_sum

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fromscratch train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=10, help="items per micro-batch")
    p.add_argument("--accumulation-steps", type=int, default=1,
                   help="micro-batches per optimizer step on each process")
    p.add_argument("--points", type=int, default=100, help="data set size")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--schedule", choices=["constant", "cosine"], default="cosine")
    p.add_argument("--max-grad-norm", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-every", type=int, default=1, help="optimizer steps")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    p.add_argument("--out", default="train-output", help="where model.pt and metrics.json go")
    p.add_argument("--throttle", type=float, default=0.0,
                   help="sleep this many seconds after each step (to watch it, or to kill it)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if not dd.init_from_env():
        return _train(args)
    status = _train(args)          # on an error, no teardown: it could wait on a dead rank
    dd.finish()
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
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
                 if args.schedule == "cosine" else None)

    def throttle(step: int, net: torch.nn.Module, loss: float) -> None:
        time.sleep(args.throttle)

    start = time.perf_counter()
    history = fit(model, loader, mse_sum, optimizer, epochs=args.epochs,
                  accumulation_steps=args.accumulation_steps, max_grad_norm=args.max_grad_norm,
                  scheduler=scheduler, checkpoint_dir=args.checkpoint_dir,
                  checkpoint_every=args.checkpoint_every, resume=args.resume,
                  callback=throttle if args.throttle > 0 else None,
                  progress=False if args.no_progress else None)
    seconds = time.perf_counter() - start
    if rank != 0:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out / "model.pt")
    metrics = {
        "task": "cubic", "final_loss": history.loss[-1] if history.loss else None,
        "steps": history.steps, "epochs": args.epochs, "world_size": world,
        "accumulation_steps": args.accumulation_steps,
        "micro_batches_per_step": world * args.accumulation_steps,
        "resumed_from_step": history.resumed_from, "seconds": seconds, "loss": history.loss,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    resumed = (f", resumed at step {history.resumed_from}"
               if history.resumed_from is not None else "")
    print(f"{history.steps} steps on {world} process(es) x {args.accumulation_steps} "
          f"micro-batches{resumed}; final loss {metrics['final_loss']:.6f}")
    print(f"model: {out / 'model.pt'}\nmetrics: {out / 'metrics.json'}")
    return 0
