"""The whole tiny-model workflow through `--profile profiles/slurm` on a real single-node Slurm.

Run with `python -m pytest -m slurm tests/test_slurm.py`. The cluster (tests/slurm_cluster.py) installs
Debian's munge/slurm packages when missing and skips cleanly where it can't (no apt-get, no root/sudo).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import SlurmCluster, SlurmUnavailable
from workflow_utils import ROOT, SNAKEFILE, tiny_config, write_config

pytestmark = pytest.mark.slurm

PROFILE = ROOT / "profiles" / "slurm"
EXPECTED = [
    "resources/models/tiny/config.json",
    "results/tiny/calibration.json",
    "results/tiny/n2/scores.json",
    "results/tiny/n2/scores.png",
]


def profile_peak() -> dict[str, int]:
    """The largest cpus/memory/gpus any rule asks for in the profile, so the test node can take every job."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    requests = [profile.get("default-resources", {}), *profile.get("set-resources", {}).values()]
    return {
        "cpus": max(int(r.get("cpus_per_task", 1)) for r in requests),
        "memory_mb": max(int(r.get("mem_mb", 0)) for r in requests),
        "gpus": max([int(r.get("gpu", 0)) for r in requests] + [1]),
    }


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), **profile_peak()).start()
    except SlurmUnavailable as e:
        pytest.skip(f"no local Slurm cluster: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()


def run_snakemake(cluster: SlurmCluster, workdir: Path, *args: str, timeout: int = 900):
    env = dict(cluster.env)
    # The jobs inherit this environment (sbatch --export=ALL): they need this interpreter's `streamline`.
    env["PATH"] = os.pathsep.join([env["PATH"].split(os.pathsep)[0], str(Path(sys.executable).parent),
                                   *env["PATH"].split(os.pathsep)[1:]])
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    # cwd=ROOT: run as a user would, from the repository root (so profiles/default is read too).
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def job_stats(text: str) -> dict[str, int]:
    table = text.split("Job stats:", 1)[1]
    stats = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            if stats:
                break
            continue
        stats[m[1]] = int(m[2])
    return stats


def test_tiny_workflow_on_slurm(slurm, tmp_path, tiny_llama_dir, text_corpus):
    workdir = tmp_path / "wf"
    workdir.mkdir()
    write_config(workdir, tiny_config(tiny_llama_dir, text_corpus))

    start = time.monotonic()
    proc = run_snakemake(slurm, workdir, "--profile", str(PROFILE),
                         # test-only: keep the per-job logs as evidence, and poll sooner than a real site would
                         "--slurm-keep-successful-logs", "--slurm-init-seconds-before-status-checks", "2")
    wall = time.monotonic() - start
    log = proc.stdout + proc.stderr
    print(f"\nslurm workflow wall time: {wall:.1f} s")
    assert proc.returncode == 0, f"snakemake failed ({proc.returncode}) after {wall:.0f} s:\n{log[-6000:]}\n" \
                                 f"{slurm.logs_tail()}"
    assert "Using profile" in log and str(PROFILE) in log

    # Every artifact of the contract, and every file of the DAG (rule all's targets included) is up to date.
    for rel in EXPECTED:
        assert (workdir / rel).exists(), rel
    summary = run_snakemake(slurm, workdir, "--summary", "--workflow-profile", "none")
    assert summary.returncode == 0, summary.stderr
    rows = [line.split("\t") for line in summary.stdout.splitlines()[1:] if "\t" in line]
    assert rows, summary.stdout
    outputs = {row[0]: row for row in rows}
    for rel in EXPECTED:
        assert rel in outputs or str(Path(rel).parent) in outputs, (rel, sorted(outputs))
    for path, row in outputs.items():
        assert (workdir / path).exists(), path
        assert "ok" in row, row  # status column: no output is missing, incomplete or outdated

    # Proof that each job went through sbatch on this cluster:
    # - snakemake logs the Slurm job id of every submission,
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", log)
    stats = job_stats(log)
    remote_jobs = stats["total"] - stats.get("all", 0)
    assert len(submitted) == remote_jobs >= 4, (submitted, stats)
    # - slurmctld accepted exactly those batch jobs and saw each of them finish,
    assert sorted(slurm.submitted_job_ids(), key=int) == sorted(submitted, key=int)
    assert set(slurm.completed_job_ids()) >= set(submitted)
    # - and the plugin's per-job sbatch log exists for each of them (rules that must have run included).
    slurm_logs = {p.stem: p for p in (workdir / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert set(submitted) <= set(slurm_logs), (submitted, sorted(slurm_logs))
    ran = {p.relative_to(workdir / ".snakemake" / "slurm_logs").parts[0] for p in slurm_logs.values()}
    assert {"rule_download_model", "rule_prepare_data", "rule_extract_calibration", "rule_score"} <= ran, ran
    # - slurmctld still holds every job record (MinJobAge): each completed with exit code 0,
    jobs = {job_id: slurm.show_job(job_id) for job_id in submitted}
    for job_id, job in jobs.items():
        assert job.get("JobState") == "COMPLETED" and job.get("ExitCode") == "0:0", (job_id, job)
    # - and the GPU rule was given the (fake) GPU, with the cpus and memory the profile asks for.
    extract_ids = [p.stem for p in slurm_logs.values() if "rule_extract_calibration" in p.parts]
    assert len(extract_ids) == 1, extract_ids
    extract = jobs[extract_ids[0]]
    wanted = yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"]["extract_calibration"]
    assert "gres/gpu=1" in extract["AllocTRES"].split(","), extract
    assert extract["CPUs/Task"] == str(wanted["cpus_per_task"]) and extract["MinMemoryNode"] == f"{wanted['mem_mb']}M"
