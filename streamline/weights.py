"""A model dir's identity is its content: SHA-256 of its config and weight files.

The stage that writes a model dir (download, replace, train) records the size, mtime, inode, ctime and
hash of each file in `streamline-weights.json`. Every load verifies the dir against that record: a file
whose size changed, or whose mtime, inode or ctime changed and whose content no longer hashes to the
record, is corrupt, and the dir is moved aside so that the stage that wrote it runs again. A file put in
place by `cp -a` or `rsync -a` keeps its size and mtime but gets a new inode and ctime, so it is hashed.
Hashing happens only when a file's stat changed (or once, for a dir with no record), so a check is a few
stat calls; a rehash reads the file once (about 1 GB/s, so ~20 s for a 16 GB model).

Stores and manifests carry `fingerprint(dir)`, so a checkpoint retrained in place, or another model of
the same architecture under the same name, never reuses the old hidden states.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .atomic import atomic_write_json
from .errors import StreamlineError
from .ownership import move_aside, shown

RECORD = "streamline-weights.json"
PATTERNS = ("config.json", "streamline.json", "*.safetensors", "*.bin")


def _files(model_dir: Path) -> list[Path]:
    return sorted({f for pattern in PATTERNS for f in model_dir.glob(pattern) if f.is_file()})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


STAT_KEYS = ("size", "mtime_ns", "ino", "ctime_ns")


def _stat(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "ctime_ns": st.st_ctime_ns}


def _entry(path: Path, known: dict | None = None) -> dict:
    """The file's stat and hash; the hash is reused only if size, mtime, inode and ctime are all unchanged."""
    stat = _stat(path)
    if known and all(known.get(k) == stat[k] for k in STAT_KEYS):
        return known
    return {**stat, "sha256": sha256_file(path)}


def record(model_dir: str | Path, origin: str | None = None, base_model: str | None = None) -> dict:
    """Write the record of what a stage wrote (call it last, inside the dir's atomic write).

    `origin`: the model_name it all came from (a hub id, a pypi:// spec or a path); `base_model`: the hub id of
    the model it is (the config's base_model, or a hub origin), for the model card's lineage.
    """
    model_dir = Path(model_dir)
    entries = {f.name: _entry(f) for f in _files(model_dir)}
    atomic_write_json(model_dir / RECORD, {"origin": origin, "base_model": base_model, "files": entries})
    return entries


class _Torn(Exception):
    pass


def _read_record(model_dir: Path) -> dict | None:
    """The recorded files; None for no record or one in another layout (valid JSON without "files"), which
    gives nothing to check against. A record that is not even JSON was damaged: raise _Torn."""
    path = model_dir / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise _Torn from None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not all(isinstance(e, dict) and "sha256" in e for e in files.values()):
        return None
    return files


def lineage_of(model_dir: str | Path) -> tuple[str | None, str | None]:
    """(origin, base_model) a dir written by streamline recorded: where it came from, and its hub id if known."""
    try:
        saved = json.loads((Path(model_dir) / RECORD).read_text())
        return saved.get("origin"), saved.get("base_model")
    except (OSError, ValueError, AttributeError):
        return None, None


def origin_of(model_dir: str | Path) -> str | None:
    """The model_name a dir written by streamline came from, if recorded."""
    return lineage_of(model_dir)[0]


def verify(model_dir: str | Path) -> dict | None:
    """The record, checked against the files; a mismatch moves the dir aside and stops with one line."""
    model_dir = Path(model_dir)
    problem = None
    try:
        saved = _read_record(model_dir)
    except _Torn:
        saved, problem = {}, f"{RECORD} is torn (not valid JSON), so nothing in the dir can be trusted"
    if saved is None:
        return None  # a dir streamline did not write (a user's own model): nothing to check against
    files = {f.name: f for f in _files(model_dir)}
    missing = sorted(set(saved) - set(files))
    if missing and problem is None:
        problem = f"{missing[0]} is missing (the stage that wrote the dir recorded it)"
    fresh = {}
    for name in sorted(set(saved) & set(files)):
        if problem is None:
            fresh[name] = _entry(files[name], saved[name])  # hashed only if its stat changed
            if fresh[name]["sha256"] != saved[name]["sha256"]:
                problem = f"{name} does not match what the stage that wrote it recorded"
    if problem:
        aside = move_aside(model_dir)
        raise StreamlineError(
            f"model dir {model_dir}: {problem}; moved it to {shown(aside, model_dir)} (the last damaged copy kept); "
            f"run the workflow again to rebuild it"
        )
    if fresh != saved:  # same content, new stat (a copy, a touch, a record of the older layout): hash once only
        _rewrite_files(model_dir, fresh)
    return fresh


def _rewrite_files(model_dir: Path, files: dict) -> None:
    try:
        record = json.loads((model_dir / RECORD).read_text())
        atomic_write_json(model_dir / RECORD, {**record, "files": files})
    except OSError:
        pass  # a read-only dir: the next load hashes again, which is only slower


def source_identity(files: list[str | Path], cache_file: str | Path) -> str:
    """Content identity of a local model_name's files, for the workflow's download params: a checkpoint
    replaced in place (even by `cp -a`, which keeps mtimes) changes it, so the download reruns.

    Each file is hashed only when its size, mtime, inode or ctime differ from the hash cached in
    `cache_file` (so a 16 GB model is read once, ~20 s, and then costs a stat per file per `snakemake`).
    """
    cache_file = Path(cache_file)
    try:
        cache = json.loads(cache_file.read_text())
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        cache = {}
    text, changed = [], False
    for f in sorted(Path(p).resolve() for p in files):
        entry = _entry(f, cache.get(str(f)))
        changed |= entry != cache.get(str(f))
        cache[str(f)] = entry
        text.append(f"{f.name}:{entry['sha256']}")
    if changed:
        try:
            atomic_write_json(cache_file, cache)
        except OSError:
            pass  # no cache: hashed again next time
    return hashlib.sha256("\n".join(text).encode()).hexdigest()[:16] if text else ""


def fingerprint(model_dir: str | Path) -> str:
    """16 hex digits identifying the content of a model dir's config and weights."""
    model_dir = Path(model_dir)
    entries = verify(model_dir) or {f.name: _entry(f) for f in _files(model_dir)}
    text = "\n".join(f"{name}:{e['sha256']}" for name, e in sorted(entries.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
