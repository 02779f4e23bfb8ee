"""Files that are whole or absent: atomic replacement, and checking an output folder early.

``atomic_replace(path)`` hands out a temporary path in the same folder; when the writer is
done the file is flushed to disk (``fsync``), renamed over ``path`` with ``os.replace``
(atomic on POSIX and Windows) and the folder is fsynced so that the rename itself is on
disk. A writer that fails (a full disk, an exception, a kill) leaves the previous file as it
was: never a 0-byte or half-written one. Checkpoints, ``model.pt``, ``metrics.json`` and the
demos' figures are all written this way.

``check_writable(folder)`` creates the folder and writes a small probe file into it, so that
a file in the way, a read-only folder or a full disk is reported before a long run starts
rather than when its results are saved. This module needs only the standard library (the
NumPy demos use it without importing torch).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

PROBE_BYTES = 1 << 16    # enough to hit a disk that is full, or all but full


class OutputError(OSError):
    """An output folder that cannot be created or written to."""


@contextmanager
def atomic_replace(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a fresh temporary path next to ``path``, to write the new file to.

    When the block ends normally the file is fsynced and renamed over ``path``; when it
    raises, the temporary file is removed and ``path`` is untouched. The temporary name
    keeps ``path``'s suffix (``.fit.gif.x1y2.tmp.gif``) for writers that infer the format
    from it. Temporary files left by a killed writer are removed by the next write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp*"):
        stale.unlink(missing_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}",
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Replace ``path`` atomically by what ``write(file)`` writes into a binary file."""
    with atomic_replace(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def check_writable(folder: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create ``folder`` if needed and prove that files can be written into it.

    Raises OutputError naming the folder (``what`` says which: "--out", "checkpoint_dir")
    and the reason: a file in the way, no permission, a read-only file system, a full disk.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{what} {folder} is a file, not a folder") from None
    except NotADirectoryError:
        blocker = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
        raise OutputError(f"cannot create {what} {folder}: {blocker or 'a parent'} is a file, "
                          f"not a folder") from None
    except OSError as e:
        raise OutputError(f"cannot create {what} {folder}: {e.strerror or e}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
    except OSError as e:
        raise OutputError(f"cannot write to {what} {folder}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())     # a full disk may only say so here
    except OSError as e:
        raise OutputError(f"cannot write to {what} {folder}: {e.strerror or e}") from None
    finally:
        Path(probe).unlink(missing_ok=True)
    return folder


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)   # Windows fsyncs only a file opened for writing
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":          # Windows cannot open a folder; its rename is durable anyway
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
