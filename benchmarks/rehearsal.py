"""Rehearse a config at its real widths on this machine: the whole workflow, every job measured next to its plan.

    python benchmarks/rehearsal.py [--configfile configs/rehearsal/llama-3.1-8b-L6.yaml] [--workdir DIR]
                                   [--out rehearsal.json] [--snakemake-args ...]

It runs `snakemake` on the config in DIR (default: a fresh temp dir) with a `streamline` first on PATH that runs
the real one and records, for each job, the peak RSS of its whole process tree (sampled every 0.1 s), its wall
time, and the peak bytes under the paths the job writes (its --out, manifest, checkpoint dir, ...). Then it prints
each job's plan (`streamline plan`: the numbers the rules request from Snakemake) next to what was measured, with
the ratio measured / plan, and writes both to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG_ENV = "STREAMLINE_REHEARSAL_LOG"
# flags whose value is a path the job writes (the join key with the plan is --out, or --json for the report)
WRITES = ("--out", "--manifest", "--checkpoint-dir", "--samples", "--log-json", "--json", "--md", "--html", "--plot")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return 0


def run_job(argv: list[str]) -> int:
    """The shim's body: run `streamline ARGV`, sample its tree's RSS and its outputs' bytes, log one JSON line."""
    import psutil

    written = [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a in WRITES]
    key = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--out", "--json")), None)
    start = time.perf_counter()
    proc = psutil.Popen([sys.executable, "-m", "streamline.cli", *argv])
    peak_rss = peak_disk = 0
    last_disk = 0.0
    loads = []  # the 1-minute load average while the job ran: above the job's own threads, others shared the cores
    while proc.poll() is None:
        loads.append(os.getloadavg()[0])
        rss = 0
        try:
            for p in [proc, *proc.children(recursive=True)]:
                rss += p.memory_info().rss
        except psutil.Error:
            pass
        peak_rss = max(peak_rss, rss)
        if time.perf_counter() - last_disk > 1.0:
            peak_disk, last_disk = max(peak_disk, sum(_size(p) for p in written)), time.perf_counter()
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    final_disk = sum(_size(p) for p in written)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the job and every process it waited for
    record = {
        "argv": argv,
        "key": key,
        "rc": proc.returncode,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "load": round(max(loads[len(loads) // 2 :], default=os.getloadavg()[0]), 2),
        "peak_rss_bytes": peak_rss,
        "peak_disk_bytes": max(peak_disk, final_disk),
        "final_disk_bytes": final_disk,
    }
    with open(os.environ[LOG_ENV], "a") as f:
        f.write(json.dumps(record) + "\n")
    return proc.returncode


def shim_dir(where: Path) -> Path:
    """A directory holding a `streamline` that is this script's job mode."""
    where.mkdir(parents=True, exist_ok=True)
    shim = where / "streamline"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} --job "$@"\n')
    shim.chmod(0o755)
    return where


def measured_jobs(log: Path) -> dict[str, dict]:
    jobs = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record["key"]:
            jobs[record["key"]] = record  # a rerun of the same output replaces the first try
    return jobs


def compare(config_path: Path, workdir: Path, jobs: dict[str, dict]) -> list[dict]:
    """One row per planned job: the plan's numbers next to the measured ones (None where the job did not run)."""
    from streamline.plan import plan_for_config

    os.chdir(workdir)
    plan = plan_for_config(str(config_path.resolve()), device="cpu")
    rows = []
    for job in plan.jobs:
        m = jobs.get(job.out)
        rows.append(
            {
                "rule": job.rule,
                "label": job.label,
                "out": job.out,
                "plan": job.need.to_json(),
                "measured": None
                if m is None
                else {
                    "ram_bytes": m["peak_rss_bytes"],
                    "disk_bytes": m["peak_disk_bytes"],
                    "seconds": m["seconds"],
                    "cpu_seconds": m["cpu_seconds"],
                    "load": m.get("load"),
                    "rc": m["rc"],
                },
            }
        )
    return rows, plan


# The plan's time is judged against wall time on an idle machine: within 25%, or within TIME_FLOOR seconds for a
# job shorter than that (a few seconds of imports and start-up are not worth a ratio).
TIME_FLOOR = 10.0


def time_verdict(plan_s: float, wall_s: float | None, load: float | None, cores: int) -> str:
    """measured / plan, or why the job's time says nothing about the plan: it shared the cores (a load above
    the machine's cores plus half of them; timing.noise's rule for a job running one thread per core)."""
    if wall_s is None:
        return "–"
    if load is not None and load > 1.5 * cores:
        return f"(load {load:.1f})"
    if abs(wall_s - plan_s) <= TIME_FLOOR:
        return f"{wall_s / plan_s:.2f} (small)" if plan_s else "(small)"
    return f"{wall_s / plan_s:.2f}"


def print_table(rows: list[dict], plan) -> None:
    """Markdown: each job's plan next to what was measured, and measured / plan. The plan's time is the job alone
    on this machine, so it is compared with the job's wall time, next to the load it ran under."""

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b else "–"

    def num(x, scale=1e9, digits=2):
        return "–" if x is None else f"{x / scale:.{digits}f}"

    cores = os.cpu_count() or 1
    print(f"plan: {plan.assumptions}")
    print(
        "| job | RAM plan GB | RAM measured GB | ratio | disk plan GB | disk measured GB | ratio | time plan s | "
        "wall s | ratio | CPU s | load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        p, m = r["plan"], r["measured"] or {}
        ram, disk, cpu, wall = m.get("ram_bytes"), m.get("disk_bytes"), m.get("cpu_seconds"), m.get("seconds")
        failed = " (failed)" if m.get("rc") else ""
        print(
            f"| {r['rule']} {r['label']}{failed} | {num(p['ram_bytes'])} | {num(ram)} | {ratio(ram, p['ram_bytes'])} | "
            f"{num(p['disk_bytes'], digits=3)} | {num(disk, digits=3)} | "
            f"{ratio(disk, p['disk_bytes']) if p['disk_bytes'] > 1e7 else '(small)'} | {p['seconds']:.0f} | "
            f"{num(wall, 1, 0)} | {time_verdict(p['seconds'], wall, m.get('load'), cores)} | {num(cpu, 1, 0)} | "
            f"{'–' if m.get('load') is None else m['load']} |"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--job":
        sys.exit(run_job(sys.argv[2:]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default=str(ROOT / "configs/rehearsal/llama-3.1-8b-L6.yaml"))
    ap.add_argument("--workdir", help="where resources/ and results/ go (default: a fresh temp dir)")
    ap.add_argument("--out", default="rehearsal.json")
    ap.add_argument("--compare-only", action="store_true", help="only compare the plan with an earlier run's log")
    ap.add_argument("--snakemake-args", nargs=argparse.REMAINDER, default=[])
    a = ap.parse_args()
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="rehearsal-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "rehearsal-jobs.jsonl"
    out = Path(a.out).resolve()
    if not a.compare_only:  # this machine's throughput first (the plan's time assumption), then the plan itself
        subprocess.run(
            [
                sys.executable,
                "-m",
                "streamline.cli",
                "plan",
                "--configfile",
                str(Path(a.configfile).resolve()),
                "--measure",
                "--device",
                "cpu",
            ],
            cwd=workdir,
            check=True,
        )
        env = {
            **os.environ,
            LOG_ENV: str(log),
            "PATH": f"{shim_dir(workdir / '.shim')}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "workflow/Snakefile"),
            "-d",
            str(workdir),
            "--configfile",
            str(Path(a.configfile).resolve()),
            "--cores",
            "2",
            "-j",
            "1",
            *a.snakemake_args,
        ]
        print("+", " ".join(cmd), flush=True)
        t0 = time.time()
        rc = subprocess.run(cmd, env=env).returncode
        print(f"snakemake exited {rc} after {time.time() - t0:.0f} s", flush=True)
    rows, plan = compare(Path(a.configfile), workdir, measured_jobs(log))
    print_table(rows, plan)
    out.write_text(
        json.dumps(
            {"config": a.configfile, "workdir": str(workdir), "assumptions": plan.assumptions, "rows": rows}, indent=1
        )
    )


if __name__ == "__main__":
    main()
