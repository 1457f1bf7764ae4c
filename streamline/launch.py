"""Build (and run) the `accelerate launch` command for LLM-loss training on this machine.

    launch_command(config_file, num_processes, module_args) -> ["accelerate", "launch", ...] as argv

On a machine with GPUs the config is used as it is, with one process per GPU asked for.
Without a GPU, the same configs run CPU processes over gloo:
- DeepSpeed configs: DeepSpeed detects the CPU itself; training picks gloo and skips DeepSpeed's
  JIT-compiled shared-memory op. ACCELERATE_USE_CPU must NOT be set (accelerate would drop DeepSpeed).
- Other configs (DDP): ACCELERATE_USE_CPU=1, which turns MULTI_GPU into MULTI_CPU.
- Cores are shared out: --num_cpu_threads_per_process = cores // processes.
Every command gets a free --main_process_port, so concurrent runs on one machine do not collide.

The command is built where it runs: `streamline launch --config X --num-processes N -- train ...` (what
the Snakemake rule calls) detects the machine at run time, on the node the job landed on, and runs
`python -m streamline.cli train ...` in every process: one entry point, launched or not.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from .errors import StreamlineError


def gpu_count() -> int:
    """GPUs visible to this process, without importing torch (CUDA_VISIBLE_DEVICES, else nvidia-smi)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_config(config_file: str | Path) -> dict:
    """The accelerate config file, or one line naming it (missing, not YAML, not a mapping)."""
    import yaml
    path = Path(config_file)
    if not path.is_file():
        raise StreamlineError(f"llm.accelerate_config: {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise StreamlineError(f"llm.accelerate_config: {path} is not valid YAML ({type(e).__name__}, "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(config, dict):
        raise StreamlineError(f"llm.accelerate_config: {path} is not a mapping of accelerate settings")
    return config


def distributed_type(config_file: str | Path) -> str:
    return str(read_config(config_file).get("distributed_type", "NO")).upper()


def launch_command(config_file: str | Path, num_processes: int | None, module_args: list[str], *,
                   module: str = "streamline.cli", gpus: int | None = None, port: int | None = None,
                   cpus: int | None = None, mixed_precision: str | None = None) -> list[str]:
    """argv that runs `python -m module module_args` under accelerate on this machine.

    num_processes: processes to start (the GPUs the job was given); None = one per visible GPU, or the
    config's num_processes on a CPU-only machine. An `env VAR=...` prefix carries the CPU settings.
    """
    kind = distributed_type(config_file)
    gpus = gpu_count() if gpus is None else gpus
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    env: dict[str, str] = {}
    if gpus > 0:
        n = num_processes or gpus
        if n > gpus:
            raise StreamlineError(f"accelerate: {n} processes asked for, but this machine shows {gpus} GPU(s)")
    else:
        try:
            n = num_processes or int(read_config(config_file).get("num_processes", 1))
        except (TypeError, ValueError):
            raise StreamlineError(f"llm.accelerate_config: {config_file} has a num_processes that is not a "
                                  f"number") from None
        if kind != "DEEPSPEED":
            env["ACCELERATE_USE_CPU"] = "1"
        if cpus is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        cmd += ["--num_cpu_threads_per_process", str(max(1, cpus // max(1, n)))]
    if n < 1:
        raise StreamlineError(f"accelerate: num_processes must be >= 1, got {n}")
    cmd += ["--num_processes", str(n), "--num_machines", "1", "--main_process_port", str(port or free_port())]
    if mixed_precision:  # follows the model's dtype: an fp32 model trains in fp32, whatever the config says
        cmd += ["--mixed_precision", mixed_precision]
    if n > 1 and kind == "NO":
        cmd.append("--multi_gpu")  # a single-process config asked for several processes
    cmd += ["-m", module, *module_args]
    return (["env", *(f"{k}={v}" for k, v in env.items())] if env else []) + cmd


def die_with_parent() -> None:
    """End this process when the process that started it dies (Linux: prctl PR_SET_PDEATHSIG).

    Snakemake runs each stage as a child; killing Snakemake (SIGKILL, a lost node) would otherwise leave
    the stage running, and a rerun would share its checkpoint dir or store with the orphan. Under
    accelerate launch the parent is the launcher, which starts each worker in a session of its own.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


ERROR_FILE = "STREAMLINE_ERROR_FILE"  # where a launched worker writes its one-line error


def run(config_file: str, num_processes: int | None, module_args: list[str], mixed_precision: str | None = None,
        print_only: bool = False) -> int:
    """`streamline launch`: run the accelerate launcher as a child, its stderr passed through as it comes.

    A worker that stops on bad input writes its one line to ERROR_FILE; from then on the launcher's own
    report (torchrun's ChildFailedError, ~30 lines) is held back, and that one line is the error shown.
    Signals (Ctrl-C, a Slurm cancel) are passed on to the launcher, which passes them to the workers.
    """
    import signal
    import tempfile
    cmd = launch_command(config_file, num_processes, module_args, mixed_precision=mixed_precision)
    if print_only:
        import shlex
        print(shlex.join(cmd))
        return 0
    print("launching: " + " ".join(cmd), file=sys.stderr, flush=True)
    fd, error_file = tempfile.mkstemp(prefix="streamline-error-")
    os.close(fd)
    proc = subprocess.Popen(cmd, env={**os.environ, ERROR_FILE: error_file}, stderr=subprocess.PIPE,
                            preexec_fn=die_with_parent)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _: proc.send_signal(s))
    try:
        held_back = False
        while chunk := os.read(proc.stderr.fileno(), 1 << 16):
            held_back = held_back or os.path.getsize(error_file) > 0
            if not held_back:
                sys.stderr.buffer.write(chunk)
                sys.stderr.buffer.flush()
        code = proc.wait()
        error = Path(error_file).read_text().splitlines()
    finally:
        os.unlink(error_file)
    if code != 0 and error:
        print(error[0], file=sys.stderr)  # the worker's own line, once
        return 2
    return code
