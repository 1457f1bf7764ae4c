"""A real, single-node Slurm cluster on loopback, for tests of the Slurm execution profile.

    with SlurmCluster(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", "--wrap", "true"], env=cluster.env)

What it does:
- installs Debian/Ubuntu's munge, slurmctld, slurmd and slurm-client with apt-get when they are missing
  (as root, or through passwordless `sudo -n`); callers turn `SlurmUnavailable` into a pytest skip;
- writes a private slurm.conf + gres.conf in a temp dir: proctrack/linuxproc, task/none, no accounting
  (no slurmdbd, so `sacct` does not work: use `slurm-status-command: squeue`), NodeAddr=127.0.0.1, free
  ports, state and spool dirs in the temp dir, one fake GPU backed by /dev/null, one default partition;
- starts munged (private key, private socket dir with mode 755), slurmctld and `slurmd -N <node>` by hand
  in the foreground (no systemd), and waits until `sinfo` shows the node idle (about 1 s);
- tears down by PID only (never by process name): cancels the cluster's jobs by id, then stops slurmd,
  slurmctld and munged. `__exit__` runs on test failures too.

SLURM_CONF: snakemake-executor-plugin-slurm-jobstep strips every SLURM_* variable before its inner `srun`,
so `env` puts a small `srun` wrapper first on PATH that sets SLURM_CONF again. Nothing under /etc is touched.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ["munge", "slurmctld", "slurmd", "slurm-client"]
BINARIES = ["munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel"]


class SlurmUnavailable(RuntimeError):
    """Slurm can't be installed or started here (no apt-get, no root/sudo, ...). Tests should skip."""


def _sbin_path() -> str:
    parts = os.environ.get("PATH", "").split(os.pathsep)
    extra = [p for p in ("/usr/local/sbin", "/usr/sbin", "/sbin") if p not in parts]
    return os.pathsep.join(parts + extra)


def _which(name: str) -> str | None:
    return shutil.which(name, path=_sbin_path())


def root_prefix() -> list[str]:
    """[] as root, ["sudo", "-n"] with passwordless sudo, else SlurmUnavailable."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    raise SlurmUnavailable("Slurm daemons need root: not root and no passwordless sudo")


def ensure_installed(timeout: int = 600) -> None:
    """Install the Slurm and munge packages with apt-get if any binary is missing."""
    missing = [b for b in BINARIES if not _which(b)]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise SlurmUnavailable(f"Slurm is not installed (missing {', '.join(missing)}) and apt-get is unavailable")
    sudo = root_prefix()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [
        *sudo,
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        *PACKAGES,
    ]
    proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:  # stale or empty package lists: update once and retry
        subprocess.run([*sudo, "apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=timeout)
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=timeout)
    missing = [b for b in BINARIES if not _which(b)]
    if proc.returncode != 0 or missing:
        raise SlurmUnavailable(
            f"apt-get install {' '.join(PACKAGES)} failed (rc {proc.returncode}, "
            f"missing {missing}): {proc.stderr.strip()[-500:]}"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _meminfo_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024


class SlurmCluster:
    """One slurmctld + one slurmd on 127.0.0.1, with a private config. Use as a context manager.

    cpus / memory_mb / gpus are what the node *declares* (SlurmdParameters=config_overrides), so a profile
    written for a big site still schedules on a small test machine. Nothing is enforced: task/none,
    proctrack/linuxproc, no cgroups.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        node: str = "streamline1",
        partition: str = "debug",
        cpus: int | None = None,
        memory_mb: int | None = None,
        gpus: int = 1,
        min_job_age: int = 3600,
        start_timeout: float = 60,
    ):
        self._own_workdir = workdir is None
        self.root = Path(workdir or tempfile.mkdtemp(prefix="slurm-")).resolve()
        self.node, self.partition = node, partition
        self.cpus = max(cpus or 0, os.cpu_count() or 1)
        self.memory_mb = max(memory_mb or 0, _meminfo_mb())
        self.gpus, self.min_job_age, self.start_timeout = gpus, min_job_age, start_timeout
        self.conf = self.root / "etc" / "slurm.conf"
        self.ctld_log = self.root / "log" / "slurmctld.log"
        self.slurmd_log = self.root / "log" / "slurmd.log"
        self.munge_log = self.root / "log" / "munged.log"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        self.bin = self.root / "bin"
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self._sudo: list[str] = []
        self.env: dict[str, str] = {}

    # ------------------------------------------------------------------ setup
    def _write_files(self) -> None:
        for sub in ("etc", "log", "state", "spool", "bin", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        host = socket.gethostname().split(".")[0]
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        self.conf.write_text(f"""\
# Private single-node test cluster written by tests/slurm_cluster.py
ClusterName=streamlinetest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
# squeue-based job status needs finished jobs to stay visible (the plugin wants >= 3 x its first poll
# interval); an hour also keeps every job record for `scontrol show job` after a long test run.
MinJobAge={self.min_job_age}
StateSaveLocation={self.root / "state"}
SlurmdSpoolDir={self.root / "spool"}
SlurmctldPidFile={self.root / "run" / "slurmctld.pid"}
SlurmdPidFile={self.root / "run" / "slurmd.pid"}
SlurmctldLogFile={self.ctld_log}
SlurmdLogFile={self.slurmd_log}
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb}{gres} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        # Fake GPUs: /dev/null as the device file; nothing checks it without cgroup device constraints.
        (self.conf.parent / "gres.conf").write_text(
            f"NodeName={self.node} Name=gpu Count={self.gpus} File=/dev/null\n" if self.gpus else ""
        )
        # The jobstep plugin drops SLURM_CONF before its inner srun: re-add it in a wrapper first on PATH.
        real_srun = _which("srun")
        wrapper = self.bin / "srun"
        wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}"\nexport SLURM_CONF\nexec {real_srun} "$@"\n')
        wrapper.chmod(0o755)
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), PATH=os.pathsep.join([str(self.bin), _sbin_path()]))
        for var in list(self.env):  # a caller inside a Slurm job must not leak its job into ours
            if var.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_")) and var != "SLURM_CONF":
                del self.env[var]

    def _root_run(self, *cmd: str) -> None:
        subprocess.run([*self._sudo, *cmd], check=True, capture_output=True, timeout=30)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        proc = subprocess.Popen(
            [*self._sudo, *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
        )
        log.close()
        self._procs.append((name, proc))

    def _check_alive(self) -> None:
        for name, proc in self._procs:
            if proc.poll() is not None:
                out = (self.root / "log" / f"{name}.out").read_text(errors="replace")[-2000:]
                raise SlurmUnavailable(
                    f"{name} exited with {proc.returncode} during start-up:\n{out}\n{self.logs_tail()}"
                )

    def _wait(self, what: str, ready) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not ready():
            self._check_alive()
            if time.monotonic() > deadline:
                raise SlurmUnavailable(
                    f"timed out after {self.start_timeout:.0f} s waiting for {what}\n{self.logs_tail()}"
                )
            time.sleep(0.1)

    def node_state(self) -> str:
        proc = subprocess.run(
            ["sinfo", "-h", "-N", "-n", self.node, "-o", "%T"], capture_output=True, text=True, env=self.env, timeout=10
        )
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def start(self) -> "SlurmCluster":
        ensure_installed()
        self._sudo = root_prefix()
        self._write_files()
        try:
            # munged refuses group/other-writable socket dirs; clients of any user need 755 to reach it.
            munge_dir = self.munge_socket.parent
            key = self.root / "etc" / "munge.key"
            self._root_run("install", "-d", "-m", "755", str(munge_dir))
            self._root_run("sh", "-c", f"umask 077 && head -c 1024 /dev/urandom > '{key}'")
            self._spawn(
                "munged",
                [
                    _which("munged"),
                    "--foreground",
                    "--force",
                    f"--socket={self.munge_socket}",
                    f"--key-file={key}",
                    f"--log-file={self.munge_log}",
                    f"--pid-file={self.root / 'run' / 'munged.pid'}",
                    f"--seed-file={self.root / 'run' / 'munged.seed'}",
                ],
            )
            self._wait("munged", self.munge_socket.exists)
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)])
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait(f"node {self.node} idle", lambda: self.node_state() == "idle")
        except BaseException:
            self.stop()
            raise
        return self

    # --------------------------------------------------------------- teardown
    def job_ids(self) -> list[str]:
        proc = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=self.env, timeout=10)
        return proc.stdout.split() if proc.returncode == 0 else []

    def stop(self) -> None:
        if any(name == "slurmctld" and p.poll() is None for name, p in self._procs):
            ids = self.job_ids()
            if ids:  # by job id, on this private cluster only
                subprocess.run(["scancel", *ids], capture_output=True, env=self.env, timeout=10)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and any(
                    s not in ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "") for s in self._job_states(ids)
                ):
                    time.sleep(0.2)
        for name, proc in reversed(self._procs):  # slurmd, slurmctld, munged: by PID only
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
                except ProcessLookupError:
                    pass
        self._procs.clear()
        if self._sudo and self.root.exists():  # hand root-owned state, key and logs back to the test user
            subprocess.run(
                [*self._sudo, "chown", "-R", f"{os.getuid()}:{os.getgid()}", str(self.root)],
                capture_output=True,
                timeout=30,
            )
        if self._own_workdir:
            shutil.rmtree(self.root, ignore_errors=True)

    def _job_states(self, ids: list[str]) -> list[str]:
        proc = subprocess.run(
            ["squeue", "-h", "-j", ",".join(ids), "-o", "%T"], capture_output=True, text=True, env=self.env, timeout=10
        )
        return proc.stdout.split() if proc.returncode == 0 else []

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- evidence
    def submitted_job_ids(self) -> list[str]:
        """Job ids slurmctld accepted from sbatch, read from its own log (no accounting database needed)."""
        text = self.ctld_log.read_text(errors="replace") if self.ctld_log.exists() else ""
        return re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", text)

    def show_job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (slurmctld keeps finished jobs for MinJobAge seconds)."""
        proc = subprocess.run(
            ["scontrol", "show", "job", "-d", "-o", str(job_id)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=10,
        )
        return dict(re.findall(r"(\S+?)=(\S*)", proc.stdout)) if proc.returncode == 0 else {}

    def completed_job_ids(self) -> list[str]:
        text = self.ctld_log.read_text(errors="replace") if self.ctld_log.exists() else ""
        return re.findall(r"_job_complete: JobId=(\d+) done", text)

    def logs_tail(self, chars: int = 3000) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace")[-chars:]
            out.append(f"--- {path.name}\n{text}")
        return "\n".join(out)
