"""A model dir's identity is its content: SHA-256 of its config and weight files.

The stage that writes a model dir (download, replace, train) records the size, mtime and hash of each
file in `streamline-weights.json`. Every load verifies the dir against that record: a file whose size
changed, or whose mtime changed and whose content no longer hashes to the record, is corrupt, and
the dir is moved aside so that the stage that wrote it runs again. Hashing happens only when a file
changed (or once, for a dir with no record), so a check is a few stat calls.

Stores and manifests carry `fingerprint(dir)`, so a checkpoint retrained in place, or another model of
the same architecture under the same name, never reuses the old hidden states.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .errors import StreamlineError
from .atomic import atomic_write_json

RECORD = "streamline-weights.json"
PATTERNS = ("config.json", "*.safetensors", "*.bin")


def _files(model_dir: Path) -> list[Path]:
    return sorted({f for pattern in PATTERNS for f in model_dir.glob(pattern) if f.is_file()})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _entry(path: Path, known: dict | None = None) -> dict:
    st = path.stat()
    if known and known["size"] == st.st_size and known["mtime_ns"] == st.st_mtime_ns:
        return known
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}


def record(model_dir: str | Path, origin: str | None = None) -> dict:
    """Write the record of what a stage wrote (call it last, inside the dir's atomic write).

    `origin`: the model_name it all came from (a hub id, a pypi:// spec or a path), for the model card's lineage.
    """
    model_dir = Path(model_dir)
    entries = {f.name: _entry(f) for f in _files(model_dir)}
    atomic_write_json(model_dir / RECORD, {"origin": origin, "files": entries})
    return entries


def _read_record(model_dir: Path) -> dict | None:
    path = model_dir / RECORD
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return None  # a record in another format: nothing to check against, rather than a false alarm
    return files if isinstance(files, dict) else None


def origin_of(model_dir: str | Path) -> str | None:
    """The model_name a dir written by streamline came from, if recorded."""
    try:
        return json.loads((Path(model_dir) / RECORD).read_text()).get("origin")
    except (OSError, ValueError, AttributeError):
        return None


def verify(model_dir: str | Path) -> dict | None:
    """The record, checked against the files; a mismatch moves the dir aside and stops with one line."""
    model_dir = Path(model_dir)
    saved = _read_record(model_dir)
    if saved is None:
        return None  # a dir streamline did not write (a user's own model): nothing to check against
    files = {f.name: f for f in _files(model_dir)}
    problem = None
    missing = sorted(set(saved) - set(files))
    if missing:
        problem = f"{missing[0]} is missing (the stage that wrote the dir recorded it)"
    for name in sorted(set(saved) & set(files)):
        if problem is None and _entry(files[name], saved[name])["sha256"] != saved[name]["sha256"]:
            problem = f"{name} does not match what the stage that wrote it recorded"
    if problem:
        aside = model_dir.with_name(f"{model_dir.name}.corrupt-{int(time.time())}")
        model_dir.rename(aside)
        raise StreamlineError(f"model dir {model_dir}: {problem}; moved it to {aside.name}; run the workflow again "
                              f"to rebuild it")
    return saved


def fingerprint(model_dir: str | Path) -> str:
    """16 hex digits identifying the content of a model dir's config and weights."""
    model_dir = Path(model_dir)
    entries = verify(model_dir) or {f.name: _entry(f) for f in _files(model_dir)}
    text = "\n".join(f"{name}:{e['sha256']}" for name, e in sorted(entries.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
