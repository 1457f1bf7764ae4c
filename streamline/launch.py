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


def distributed_type(config_file: str | Path) -> str:
    import yaml
    path = Path(config_file)
    if not path.exists():
        raise StreamlineError(f"accelerate config {path} does not exist")
    config = yaml.safe_load(path.read_text()) or {}
    return str(config.get("distributed_type", "NO")).upper()


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
        import yaml
        n = num_processes or int((yaml.safe_load(Path(config_file).read_text()) or {}).get("num_processes", 1))
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


def run(config_file: str, num_processes: int | None, module_args: list[str], mixed_precision: str | None = None,
        print_only: bool = False) -> None:
    """`streamline launch`: replace this process by the accelerate launcher (signals then reach it directly)."""
    cmd = launch_command(config_file, num_processes, module_args, mixed_precision=mixed_precision)
    if print_only:
        import shlex
        print(shlex.join(cmd))
        return
    print("launching: " + " ".join(cmd), file=sys.stderr, flush=True)
    os.execvp(cmd[0], cmd)
