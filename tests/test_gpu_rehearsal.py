"""benchmarks/gpu_rehearsal.py, the one prepared GPU run of #28, rehearsed on the CPU at tiny widths: a GPU session
has minutes, so the script must not first meet a broken stage there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = [
    "model",
    "disk_bandwidth",
    "extract_calibration",
    "score",
    "replace",
    "extract_pairs",
    "train_mse",
    "train_llm",
    "train_kd",
    "evaluate_variant",
    "export_gguf",
]


@pytest.mark.slow
def test_every_stage_of_the_gpu_rehearsal_runs_at_tiny_widths(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/gpu_rehearsal.py"),
            "--tiny",
            "--work",
            str(tmp_path / "work"),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    stages = json.loads((out / "gpu_rehearsal.json").read_text())["stages"]
    failed = {name: r["error"] for name, r in stages.items() if "error" in r}
    assert not failed and list(stages) == STAGES, failed or list(stages)
    assert stages["train_llm"]["steps"] > 0 and stages["evaluate_variant"]["perplexity"] > 1
