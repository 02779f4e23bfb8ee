"""Checkpoints that survive a kill, that say what is wrong with a bad file, and the random
state that makes resuming exact.

``atomic_save`` writes through ``fromscratch.atomic``: a temporary file in the same folder,
fsynced, renamed over the old checkpoint with ``os.replace``, the folder fsynced. A process
killed at any point leaves either the previous checkpoint or the new one, never half of one.

``load`` reads tensors and plain Python only (``weights_only=True``: loading never runs code)
and turns every way a file can be unreadable (empty, truncated, not a checkpoint, another
program's pickle, missing keys) into one CheckpointError that names the file and the fault.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from ..atomic import atomic_write

CHECKPOINT = "checkpoint.pt"
ZIP_START = b"PK\x03\x04"     # a zip archive's first local file header


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read: the message names the file and the fault."""


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path``, atomically (see ``fromscratch.atomic``)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load(path: str | os.PathLike[str], map_location: Any = "cpu",
         keys: Iterable[str] = ()) -> Any:
    """Read a checkpoint written by ``atomic_save`` (tensors and plain Python only).

    ``keys``: those the checkpoint must hold (it must then be a dict). Raises
    CheckpointError when the file is missing, empty, truncated, not a torch checkpoint,
    holds other objects than tensors and plain Python, or lacks one of ``keys``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    # torch.save writes a zip archive whose directory is its last record: a file cut short
    # loses it, so this tells "truncated" and "not a checkpoint" apart before torch.load.
    if not zipfile.is_zipfile(path):
        head = _head(path)
        if head.startswith(ZIP_START):
            raise CheckpointError(f"checkpoint {path} is truncated: {size} bytes of a zip "
                                  f"archive (as torch.save writes) without its end")
        raise CheckpointError(f"checkpoint {path} is not a torch checkpoint: {size} bytes "
                              f"that are not a zip archive (they start with {head!r})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain "
                              f"Python, so fromscratch will not unpickle it (that could run "
                              f"code): {_unpickler_reason(e)}") from None
    except Exception as e:    # torch reports a damaged archive as any of several types
        raise CheckpointError(f"checkpoint {path} is damaged ({size} bytes): "
                              f"{type(e).__name__}: {_first_sentence(e)}") from None
    required = list(keys)
    if required:
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {path} was not written by fromscratch.train: "
                                  f"it holds a {type(state).__name__}, not a dict")
        missing = [k for k in required if k not in state]
        if missing:
            raise CheckpointError(f"checkpoint {path} was not written by fromscratch.train: "
                                  f"missing keys {', '.join(missing)}")
    return state


def _head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _unpickler_reason(error: Exception) -> str:
    """The one line of torch's weights-only message that says what it met (the rest is
    advice to load with ``weights_only=False``, which would run the file's code)."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n\n|$)", str(error), re.S)
    return " ".join(found.group(1).split()) if found else _first_sentence(error)


def _first_sentence(error: Exception) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return text.split(". ")[0]


# --- random state ---------------------------------------------------------------------

def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python's, NumPy's and torch's (CPU, CUDA, and the loader's own generator) states,
    as tensors and plain Python so that ``torch.load(weights_only=True)`` reads them."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
