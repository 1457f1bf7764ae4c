"""What a stage may delete or replace: only a directory it can show it wrote.

Every directory streamline writes (model dirs, data dirs, hidden-state stores, the eval data, checkpoint
dirs, and the `.partial` scratch dirs they are built in) gets MARKER first, before anything else is put in
it. A path that exists without it (and without the records an older release left, see `_legacy`) belongs
to the user: it is refused in one line that names it, and nothing in it is touched. An empty directory
holds nothing to lose, so it may be used.

A directory that is a symlink (a store or a model moved to a bigger disk) is cleared or replaced where the
link points, so the link, and the disk the user chose, stay as they are.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import StreamlineError

MARKER = ".streamline"


def mark(directory: str | Path, kind: str) -> None:
    """Claim a directory streamline has just created (call it before writing anything else in it)."""
    (Path(directory) / MARKER).write_text(json.dumps({"written_by": "streamline", "kind": kind}) + "\n")


def _legacy(directory: Path) -> bool:
    """Directories written before MARKER existed, recognised by the record their stage always wrote."""
    if (directory / "streamline-weights.json").is_file():  # a model dir (download, replace, train, linear)
        return True
    if (directory / "meta.json").is_file() and (directory / "calib_input_ids.npy").is_file():  # a data dir
        return True
    if (directory / "progress.json").is_file():  # a training checkpoint dir
        return True
    try:  # a hidden-state store: its group attributes carry streamline's fingerprint and format
        attrs = json.loads((directory / "zarr.json").read_text()).get("attributes", {})
        return isinstance(attrs, dict) and "fingerprint" in attrs and "format" in attrs
    except (OSError, ValueError, AttributeError):
        return False


def owned(directory: str | Path) -> bool:
    """True if streamline wrote this directory (or it is empty: nothing in it can be lost)."""
    directory = Path(directory)
    if not directory.is_dir():
        return False
    return (directory / MARKER).is_file() or _legacy(directory) or not any(directory.iterdir())


def require_owned(path: str | Path, what: str = "output") -> None:
    """Refuse, in one line, a path that exists and is not streamline's to delete or replace."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() and not path.exists():
        return  # a dangling link: written through, never deleted (`target`)
    if not path.is_dir():
        raise StreamlineError(
            f"{path}: exists and is a file, not a {what} streamline wrote; remove it yourself or pick another path"
        )
    if not owned(path):
        raise StreamlineError(
            f"{path}: exists and was not written by streamline (no {MARKER} marker in it); "
            f"streamline never deletes what it did not write: remove it yourself or pick another "
            f"path for this {what}"
        )


def target(path: str | Path) -> Path:
    """Where writing `path` really goes: the directory a symlink points to (created if the link dangles)."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def clear(path: str | Path, what: str = "output") -> None:
    """Empty an owned directory for a fresh start: through a symlink its target's contents go, the link stays."""
    path = Path(path)
    require_owned(path, what)
    real = target(path)
    if not real.exists():
        return
    if real != path:  # keep the target dir itself (and its place on the other disk)
        for child in real.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    else:
        shutil.rmtree(path)


def move_aside(path: str | Path, why: str = "corrupt") -> Path:
    """Move a damaged file or directory out of the way (so its stage reruns) as `NAME.{why}-<time>`, keeping only
    the newest such copy per path (a model-sized copy per damage event would fill the disk). Through a
    symlink, the directory it points to is moved, on its own disk; the link stays, and the rerun writes
    through it again. Returns where it went."""
    import time

    real = target(path)
    aside = real.with_name(f"{real.name}.{why}-{int(time.time())}")
    for old in real.parent.glob(f"{real.name}.{why}-*"):
        if old.name[len(real.name) + len(why) + 2 :].isdigit() and (old.is_file() or owned(old)):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    real.rename(aside)
    return aside


def shown(moved: Path, original: str | Path) -> str:
    """Where something was moved aside, for a message: its name when it sits beside the original."""
    return moved.name if moved.parent == Path(original).parent else str(moved)
