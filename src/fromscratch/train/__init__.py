"""Training: ``fit`` with gradient accumulation that equals large-batch training, on one
process or many (torch.distributed), with checkpoints that resume bit for bit.

    accumulate.py   the window weighting rule (and why dividing by k is wrong)
    distributed.py  round-robin dealing, DDP, all-reduce of item counts, launching processes
    checkpoint.py   atomic save, reading a checkpoint (CheckpointError), random state
    runconfig.py    the run's configuration, stored in checkpoints and compared on resume
    fit.py          the loop (NonFiniteError on an inf/NaN loss or gradient)
    tasks.py        the small built-in task behind ``fromscratch train`` and the cubic demo
    cli.py          ``fromscratch train`` (torchrun-able)
"""
from .accumulate import sum_and_count
from .checkpoint import CheckpointError, atomic_save, load
from .fit import History, NonFiniteError, fit
from .runconfig import ResumeError

__all__ = ["CheckpointError", "History", "NonFiniteError", "ResumeError", "atomic_save", "fit",
           "load", "sum_and_count"]
