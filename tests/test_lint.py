"""The code as its linters and formatters read it: ruff (lint and format) and snakefmt over the whole repository
(settings in pyproject.toml), and Snakemake's own linter, which finds nothing beyond two lints that are decisions,
each checked here."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from workflow_utils import ROOT

# Every rule runs the `streamline` command of the one installed package: a conda env per rule would install the
# same package 19 times (environment.yml is the one env, for conda users).
CONDA = "Specify a conda environment or container for each rule."
# Settings that change nothing a stage computes go to the shell, not to params, so that changing them reruns
# nothing (params are a rerun trigger): batch sizes, devices, writer threads, the checkpoint cadence.
SHELL_CONFIG = "Shell command directly uses variable config from outside of the rule"
NOTHING_COMPUTED = {
    "extract.batch_size",
    "extract.device",
    "extract.writers",
    "eval.device",
    "train.device",
    "train.checkpoint_every",
}
WORKFLOW = [ROOT / "workflow/Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]


def test_snakemake_lint_finds_nothing_but_the_two_decisions(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "workflow/Snakefile"),
            "--configfile",
            str(ROOT / "config.yaml"),
            "-d",
            str(tmp_path),
            "--lint",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    titles = re.findall(r"^\s+\* (.+?):?$", proc.stderr + proc.stdout, re.M)
    assert titles, proc.stderr[-2000:]  # the linter ran and printed its findings
    assert set(titles) <= {CONDA, SHELL_CONFIG.rstrip(":")}, sorted(set(titles) - {CONDA, SHELL_CONFIG})


def test_the_config_a_shell_command_reads_changes_nothing_computed():
    used = {m.replace("][", ".") for f in WORKFLOW for m in re.findall(r"\{config\[(\w+\]\[\w+)\]\}", f.read_text())}
    assert used and used <= NOTHING_COMPUTED, sorted(used - NOTHING_COMPUTED)


def test_one_handler_of_each_kind():
    """Snakemake keeps only the last `onstart` (onsuccess, onerror) it reads: a second one silently drops the
    checks of the first (the resource plan's were lost this way once)."""
    for handler in ("onstart", "onsuccess", "onerror"):
        found = [f.name for f in WORKFLOW for line in f.read_text().splitlines() if line.startswith(f"{handler}:")]
        assert len(found) <= 1, (handler, found)


@pytest.mark.parametrize(
    "command",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["snakefmt", "--check", "workflow"]],
    ids=["ruff", "ruff-format", "snakefmt"],
)
def test_the_code_is_linted_and_formatted(command):
    """`ruff format . && snakefmt workflow && ruff check --fix .` fixes what this finds."""
    proc = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
