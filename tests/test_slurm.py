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
from workflow_utils import ROOT, SNAKEFILE, make_eval_data, tiny_config, write_config

pytestmark = pytest.mark.slurm
pytest.importorskip("snakemake_executor_plugin_slurm", reason="needs the slurm extra: pip install -e '.[slurm]'")

PROFILE = ROOT / "profiles" / "slurm"
# The plugin polls FIRST_POLL_S after a submission, then 10 s later than the previous gap while nothing has
# finished (6, 22, 48 s ...). The tiny jobs take 10-20 s each (two snakemake starts and a torch import), so
# 6 s finds most of them at the second poll.
FIRST_POLL_S = 6
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


def run_snakemake(cluster: SlurmCluster, workdir: Path, *args: str, timeout: int = 1800):
    env = dict(cluster.env)
    # The jobs inherit this environment (sbatch --export=ALL): they need this interpreter's `streamline`.
    env["PATH"] = os.pathsep.join(
        [env["PATH"].split(os.pathsep)[0], str(Path(sys.executable).parent), *env["PATH"].split(os.pathsep)[1:]]
    )
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "-d",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        *args,
    ]
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


def planned_files(log: str) -> dict[str, dict[str, list[str]]]:
    """{rule: {"input": [...], "output": [...]}} from the job blocks snakemake printed while running."""
    jobs: dict[str, dict[str, list[str]]] = {}
    rule = None
    for line in log.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            rule = m[1]
            jobs.setdefault(rule, {"input": [], "output": []})
            continue
        m = re.match(r"^\s+(input|output): (.+)$", line)
        if rule and m:
            jobs[rule][m[1]] += [f.strip() for f in m[2].split(", ")]
        elif not line.startswith(" "):
            rule = None
    return jobs


def test_tiny_workflow_on_slurm(slurm, tmp_path, tiny_llama_dir, text_corpus, record_property):
    workdir = tmp_path / "wf"
    workdir.mkdir()
    config = tiny_config(tiny_llama_dir, text_corpus)
    # lm-eval on one 10-question task (local files), as in test_eval_workflow: the default is 7 tasks x 200.
    config["eval"] = {
        "tasks": ["arc_easy"],
        "limit": 4,
        "batch_size": 4,
        "offline": True,
        "device": "cpu",
        "data": str(make_eval_data(tmp_path / "eval_data")),
    }
    write_config(workdir, config)

    start = time.monotonic()
    proc = run_snakemake(
        slurm,
        workdir,
        "--profile",
        str(PROFILE),
        # test-only: keep the per-job logs as evidence, and poll sooner than a real site would
        "--slurm-keep-successful-logs",
        "--slurm-init-seconds-before-status-checks",
        str(FIRST_POLL_S),
    )
    wall = time.monotonic() - start
    log = proc.stdout + proc.stderr
    print(f"\nslurm workflow wall time: {wall:.1f} s")
    record_property("slurm_workflow_wall_s", round(wall, 1))
    assert proc.returncode == 0, (
        f"snakemake failed ({proc.returncode}) after {wall:.0f} s:\n{log[-6000:]}\n{slurm.logs_tail()}"
    )
    assert "Using profile" in log and str(PROFILE) in log

    # Every artifact of the contract exists, and so does every target of `rule all` and every output of
    # every job, as this very run printed them (so the test follows the workflow as it grows).
    for rel in EXPECTED:
        assert (workdir / rel).exists(), rel
    files = planned_files(log)
    targets, outputs = set(files.pop("all")["input"]), {f for job in files.values() for f in job["output"]}
    assert targets and targets <= outputs, (targets, outputs)
    missing = sorted(f for f in outputs if not (workdir / f).exists())
    assert not missing, missing

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
    # - and the GPU rule was given the (fake) GPU, the cpus the profile asks for, and the memory of the resource
    #   plan (on a cluster the GPU stages are planned on GPUs: `streamline plan --device cuda`).
    extract_ids = [p.stem for p in slurm_logs.values() if "rule_extract_calibration" in p.parts]
    assert len(extract_ids) == 1, extract_ids
    extract = jobs[extract_ids[0]]
    wanted = yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"]["extract_calibration"]
    from streamline.plan import plan_for_config

    planned = next(
        j.need
        for j in plan_for_config(workdir / "config.yaml", device="cuda", root=workdir).jobs
        if j.rule == "extract_calibration"
    ).resources()
    assert extract.get("JOB_GRES") == "gpu:1" and extract.get("TresPerJob") == "gres:gpu:1", extract
    assert extract["CPUs/Task"] == str(wanted["cpus_per_task"]) and extract["Mem"] == str(planned["mem_mb"]), extract
