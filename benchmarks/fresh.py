"""Run a snippet in a fresh Python process: peak RSS is only comparable between runs that start clean."""

from __future__ import annotations

import json
import subprocess
import sys


def run_fresh(code: str, payload: dict) -> dict:
    """Run `code` with `payload` as JSON in sys.argv[1]; its last stdout line is the JSON it reports.
    A failing child stops the benchmark with the child's own last error line."""
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(payload)], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"benchmark child process failed (exit {proc.returncode}): {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
