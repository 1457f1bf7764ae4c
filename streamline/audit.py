"""Which files a stage opens: with STREAMLINE_AUDIT=DIR set, the CLI records every file under results/ and
resources/ that the process reads or writes, into DIR/<pid>.json at exit.

The workflow test (tests/test_declared_inputs.py) runs the tiny workflow with it, and checks that every file
a job read is one its rule declares as an input (or lies in a declared dir or store): a file read but not
declared is one whose edits Snakemake never sees. Python's audit hook (sys.addaudithook) sees every open()
made by Python code, numpy's memory maps and zarr's chunks included; files opened by native code
(safetensors, torch.save) are not seen, so model dirs are declared as whole dirs.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

ENV = "STREAMLINE_AUDIT"
WATCHED = ("results", "resources")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _relative(path, root: str) -> str | None:
    """`path` relative to the working dir if it lies under results/ or resources/, else None."""
    if isinstance(path, int):  # an open file descriptor
        return None
    try:
        path = os.path.abspath(os.fsdecode(path))
    except (TypeError, ValueError):
        return None
    rel = os.path.relpath(path, root)
    return rel if rel.split(os.sep, 1)[0] in WATCHED else None


def record_opens(folder: str | Path) -> None:
    """Record this process's reads and writes under results/ and resources/ into `folder`/<pid>.json at exit."""
    root, reads, writes = os.getcwd(), set(), set()

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            rel = _relative(path, root)
            if rel is not None:
                written = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
                (writes if written else reads).add(rel)
        elif event == "os.rename" or (event == "os.mkdir" and not os.path.exists(args[0])):
            rel = _relative(args[1] if event == "os.rename" else args[0], root)  # a rename's target, a new dir
            if rel is not None:
                writes.add(rel)

    def dump() -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        record = {"argv": sys.argv, "cwd": root, "reads": sorted(reads), "writes": sorted(writes)}
        (Path(folder) / f"{os.getpid()}.json").write_text(json.dumps(record))

    sys.addaudithook(hook)
    atexit.register(dump)
