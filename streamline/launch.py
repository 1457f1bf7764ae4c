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

import argparse
import os
import re
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
        raise StreamlineError(
            f"llm.accelerate_config: {path} is not valid YAML ({type(e).__name__}, "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if not isinstance(config, dict):
        raise StreamlineError(f"llm.accelerate_config: {path} is not a mapping of accelerate settings")
    return config


ZERO_STAGES = (0, 1, 2, 3)


def check_accelerate_config(config_file: str | Path, cache_file: str | Path | None = None) -> None:
    """The accelerate config, read by accelerate itself (unknown keys, a distributed_type or mixed precision it
    does not know) plus its DeepSpeed section: one line naming the file, before any job starts.

    accelerate's config classes take seconds to import, so a file that passed is remembered by its content
    (in `cache_file`, default .snakemake/streamline/accelerate-configs.json beside Snakemake's own records, so
    a dry run writes nothing under resources/) and costs nothing at the next parse.
    """
    import hashlib
    import json

    config = read_config(config_file)
    digest = hashlib.sha256(Path(config_file).read_bytes()).hexdigest()
    cache = Path(cache_file or ".snakemake/streamline/accelerate-configs.json")
    try:
        if digest in json.loads(cache.read_text()):
            return
    except (OSError, ValueError, TypeError):
        pass
    from accelerate.commands.config.config_args import ClusterConfig

    where = f"llm.accelerate_config: {config_file}"
    try:
        ClusterConfig.from_yaml_file(str(config_file))
    except (ValueError, TypeError, KeyError) as e:
        raise StreamlineError(f"{where} is not a valid accelerate config ({str(e).splitlines()[0]})") from None
    ds = config.get("deepspeed_config")
    if str(config.get("distributed_type", "")).upper() == "DEEPSPEED":
        if not isinstance(ds, dict):
            raise StreamlineError(f"{where}: distributed_type DEEPSPEED needs a deepspeed_config mapping")
        if "deepspeed_config_file" not in ds and ds.get("zero_stage") not in ZERO_STAGES:
            raise StreamlineError(
                f"{where}: deepspeed_config.zero_stage is {ds.get('zero_stage')!r} (allowed: "
                f"{', '.join(map(str, ZERO_STAGES))})"
            )
    n = config.get("num_processes", 1)
    if not isinstance(n, int) or isinstance(n, bool) or (n < 1 and n != -1):
        raise StreamlineError(f"{where}: num_processes is {n!r} (allowed: an integer >= 1)")
    try:
        known = json.loads(cache.read_text())
        known = known if isinstance(known, list) else []
    except (OSError, ValueError):
        known = []
    try:
        from .atomic import atomic_write_json

        atomic_write_json(cache, sorted(set(known) | {digest}))
    except OSError:
        pass  # checked again next time


def distributed_type(config_file: str | Path) -> str:
    return str(read_config(config_file).get("distributed_type", "NO")).upper()


def launch_command(
    config_file: str | Path,
    num_processes: int | None,
    module_args: list[str],
    *,
    module: str = "streamline.cli",
    gpus: int | None = None,
    port: int | None = None,
    cpus: int | None = None,
    mixed_precision: str | None = None,
) -> list[str]:
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
            raise StreamlineError(
                f"llm.accelerate_config: {config_file} has a num_processes that is not a number"
            ) from None
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


def _log_of(module_args: list[str]) -> str | None:
    """The --log file the workers write (a global option, before the stage's name)."""
    for i, arg in enumerate(module_args):
        if arg == "--log" and i + 1 < len(module_args):
            return module_args[i + 1]
        if arg.startswith("--log="):
            return arg.split("=", 1)[1]
    return None


# Where the launcher's own failure report begins (torchrun's ChildFailedError, accelerate's CalledProcessError):
# from there on its stderr is kept for the log, not shown.
REPORT_START = re.compile(
    rb"^(Traceback \(most recent call last\)|E\d{4} \d\d:\d\d:\d\d|\[rank\d+\]:E|W\d{4} .*"
    rb"Sending process \d+ closing signal)",
    re.M,
)


def run(
    config_file: str,
    num_processes: int | None,
    module_args: list[str],
    mixed_precision: str | None = None,
    print_only: bool = False,
) -> int:
    """`streamline launch`: run the accelerate launcher as a child, its stderr passed through as it comes.

    Every failure ends in one line. A worker that stops (on bad input, or on an unexpected exception, whose
    traceback it logs) writes its line to ERROR_FILE; from then on, or from the first line of the launcher's
    own report (torchrun's ChildFailedError, ~30-80 lines), stderr is held back and appended to the workers'
    log, and the one line shown is the worker's, or, for a process that died without a word (killed, out of
    memory), one naming its exit status and the log. Signals (Ctrl-C, a Slurm cancel) are passed on to the
    launcher, which passes them to the workers.
    """
    import signal
    import tempfile

    check_mixed_precision(config_file, mixed_precision)
    cmd = launch_command(config_file, num_processes, module_args, mixed_precision=mixed_precision)
    if print_only:
        import shlex

        print(shlex.join(cmd))
        return 0
    print("launching: " + " ".join(cmd), file=sys.stderr, flush=True)
    fd, error_file = tempfile.mkstemp(prefix="streamline-error-")
    os.close(fd)
    proc = subprocess.Popen(
        cmd, env={**os.environ, ERROR_FILE: error_file}, stderr=subprocess.PIPE, preexec_fn=die_with_parent
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _: proc.send_signal(s))
    held = bytearray()
    try:
        while chunk := os.read(proc.stderr.fileno(), 1 << 16):
            if not held and os.path.getsize(error_file) == 0 and not REPORT_START.search(chunk):
                sys.stderr.buffer.write(chunk)
                sys.stderr.buffer.flush()
                continue
            if not held and (start := REPORT_START.search(chunk)):  # show what came before the report
                sys.stderr.buffer.write(chunk[: start.start()])
                sys.stderr.buffer.flush()
                chunk = chunk[start.start() :]
            held += chunk
        code = proc.wait()
        error = Path(error_file).read_text().splitlines()
    finally:
        os.unlink(error_file)
    log_file = _log_of(module_args)
    if held and log_file:
        with open(log_file, "ab") as f:
            f.write(b"--- the launcher's report ---\n" + bytes(held))
    if code == 0:
        if held:  # a warning that looked like a report: nothing failed, so show it after all
            sys.stderr.buffer.write(bytes(held))
        return 0
    if error:
        print(error[0], file=sys.stderr)  # the worker's own line, once
        return 2
    how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    signals = {9: " (SIGKILL: out of memory, or killed from outside?)", 15: " (SIGTERM)"}
    where = f"; its output is in {log_file}" if log_file and held else (f"; see {log_file}" if log_file else "")
    print(
        f"streamline launch: error: the training processes failed ({how}{signals.get(-code, '')}) without "
        f"saying why{where}",
        file=sys.stderr,
    )
    return 2


def check_mixed_precision(config_file: str | Path, mixed_precision: str | None) -> None:
    """fp16 training needs a GPU: DeepSpeed has no fp16 on CPU, and it would fail only once the workers start."""
    wanted = (mixed_precision or str(read_config(config_file).get("mixed_precision", "no"))).lower()
    if wanted == "fp16" and gpu_count() == 0:
        raise StreamlineError(
            "dtype: float16 trains the llm and kd losses only on a GPU (DeepSpeed and DDP have "
            "no fp16 on a CPU), and this machine shows none; use dtype: bfloat16 or float32 here"
        )


# --- the command: streamline launch -------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .arguments import positive_int

    p.add_argument("--config", required=True, help="accelerate config (configs/accelerate/*.yaml)")
    p.add_argument("--num-processes", type=positive_int, help="default: one per visible GPU, else the config's")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="override the config's")
    p.add_argument("--print", action="store_true", help="print the command instead of running it")
    p.add_argument("args", nargs=argparse.REMAINDER, help="streamline arguments for every process (after --)")


def run_command(a: argparse.Namespace) -> int:
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    return run(a.config, a.num_processes, args, mixed_precision=a.mixed_precision, print_only=a.print)
