"""Atomic file and directory writes: nothing half-written is ever taken for done."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp file path next to `path` to write to; it becomes `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON: a NaN or Inf is refused (one line naming the file), never written as `NaN`."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False)
    except ValueError:
        from .errors import StreamlineError
        raise StreamlineError(f"{path}: the stage computed a NaN or Inf; refusing to write it") from None
    atomic_write_text(path, text + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


@contextmanager
def exclusive(target: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `target` (a store or checkpoint dir) while writing it.

    A second writer (an orphaned job, a second workflow in the same dir) stops with one line instead of
    writing the same files. The lock is the kernel's (fcntl), so it dies with the process that held it.
    """
    import fcntl
    from .errors import StreamlineError
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StreamlineError(f"{target} is being written by another running process; wait for it or stop "
                                  f"it") from None
        yield


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a scratch dir next to `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
