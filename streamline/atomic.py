"""Atomic file and directory writes: nothing half-written is ever taken for done."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import zlib
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


MAX_JSON_BYTES = 256 << 20  # no stage writes a JSON artifact near this (a whole-split samples file: a few MB)


class TooLarge(ValueError):
    pass


def read_json_bytes(path: str | Path) -> bytes:
    """A JSON artifact's bytes (decompressed if its name ends in .gz), refusing one over MAX_JSON_BYTES instead
    of reading a planted or runaway file of gigabytes whole (a gzip bomb included)."""
    path = Path(path)
    with open(path, "rb") as raw:
        f = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise TooLarge(f"over {MAX_JSON_BYTES >> 20} MB")
    return data


def loads(data: bytes | str) -> Any:
    """json.loads, with nesting too deep for Python's parser (RecursionError) read as invalid JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deep") from None


def read_json(path: str | Path) -> Any:
    return loads(read_json_bytes(path))


def read_artifact(
    path: str | Path,
    what: str,
    keys: dict[str, type | tuple] | None = None,
    aside: str | Path | None = None,
    check=None,
) -> dict:
    """A JSON artifact a stage wrote (gzipped if its name ends in .gz), checked: a missing, torn or incomplete one
    is one line, never a traceback.

    `keys`: the fields readers rely on and their types; `check(obj)`: any further problem, in words, or None.
    A damaged artifact is moved aside (`aside`: the file itself, or the dir it belongs to) so that the stage
    that writes it reruns.
    """
    from .errors import StreamlineError

    path = Path(path)
    if not path.is_file():
        raise StreamlineError(f"{path}: no {what} here (run the stage that writes it)")
    try:
        obj = loads(read_json_bytes(path))
        problem = None if isinstance(obj, dict) else "not a JSON object"
    except TooLarge as e:
        obj, problem = None, f"too large ({e}; no stage writes one that size)"
    except (ValueError, UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error):
        obj, problem = None, "torn (not valid JSON)"
    for key, kind in (keys or {}).items():
        if problem is None and (not isinstance(obj.get(key), kind) or isinstance(obj.get(key), bool)):
            problem = f"incomplete (no valid '{key}')"
    if problem is None and check is not None:
        problem = check(obj)
    if problem is None:
        return obj
    from .ownership import move_aside, shown

    aside = Path(aside) if aside is not None else path
    try:
        moved = move_aside(aside)
        where = f"moved {aside.name} aside to {shown(moved, aside)}; run the workflow again to rebuild it"
    except OSError:
        where = "run the stage that writes it again"
    raise StreamlineError(f"{path}: the {what} is {problem}; {where}")


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
            raise StreamlineError(
                f"{target} is being written by another running process; wait for it or stop it"
            ) from None
        yield


@contextmanager
def atomic_dir(path: str | Path, what: str = "output directory") -> Iterator[Path]:
    """Yield a scratch dir next to `path`; it replaces `path` only if the block finishes.

    Only a directory streamline wrote is ever replaced (ownership.py): a user's directory at `path`, or at
    its scratch sibling, is refused in one line before any work. Through a symlink, the directory it points
    to is the one replaced, so the link (and the disk it points to) stays.
    """
    from .errors import StreamlineError
    from .ownership import clear, mark, require_owned, target

    path = Path(path)
    require_owned(path, what)
    real = target(path)
    tmp = real.with_name(real.name + ".partial")
    if tmp.is_symlink():
        raise StreamlineError(f"{tmp}: a symlink where streamline keeps its scratch dir for {path}; remove it")
    clear(tmp, f"scratch dir of {path}")  # left by an interrupted run
    tmp.mkdir(parents=True)
    mark(tmp, what)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if real.exists():
        clear(real, what)
    os.replace(tmp, real)
