"""Training checkpoints: accelerate's save_state of the trainable state, the best state and the log so far,
and progress.json naming the last complete one (signed, with the SHA-256 of every file), verified before
anything of a checkpoint is loaded; one that fails is set aside and the run starts afresh."""

from __future__ import annotations

import errno
import logging
import shutil
from contextlib import nullcontext
from pathlib import Path

from ..artifacts import Progress, TrainLog
from ..atomic import exclusive, read_json
from ..errors import StreamlineError
from ..ownership import mark, move_aside, require_owned
from ..weights import sha256_file
from .distributed import checkpoint_kwargs, weights_only_loads

log = logging.getLogger(__name__)

PROGRESS = "progress.json"  # names the last complete checkpoint; written last, atomically


class Unreadable(Exception):
    """A checkpoint that fails its checks before anything was loaded from it."""


class Checkpoints:
    """accelerate checkpoints of the trainable state, plus the best state and the log so far.

    progress.json, written last (signed: artifacts.Progress), names the complete checkpoint and the SHA-256 of
    each of its files; a resume checks it (its digest, a step within the plan, a best that is its validations'
    best) and verifies every file against it before loading anything, so a damaged, edited or replaced file is
    set aside without leaving any of its state behind. When training is done, the dir keeps only the final
    kept weights and the log (`done`): a run whose outputs Snakemake discarded (Ctrl-C of Snakemake while
    the job finished) exports them again instead of training from step 0.
    """

    def __init__(self, directory: str | Path | None, accelerator, fingerprint: dict, total_steps: int):
        self.dir = Path(directory) if directory else None
        self.accelerator, self.fingerprint, self.total_steps = accelerator, fingerprint, total_steps
        self.save_kwargs, self.load_kwargs = checkpoint_kwargs(accelerator)

    def locked(self):
        """Refuse to share the checkpoint dir with a live run (an orphaned job, a second snakemake), or to use a
        directory streamline did not write (its state-*/best-* files would be deleted as leftovers)."""
        if self.dir is None or not self.accelerator.is_main_process:
            return nullcontext()
        require_owned(self.dir, "checkpoint directory")
        return exclusive(self.dir)

    def _progress(self) -> Progress | None:
        """progress.json if it was made with the same inputs; Unreadable if it is torn, changed, out of range
        (a step beyond the plan, a NaN) or names missing files."""
        if self.dir is None or not (self.dir / PROGRESS).exists():
            return None
        try:
            saved = Progress.checked(read_json(self.dir / PROGRESS))
        except (ValueError, UnicodeDecodeError) as e:
            raise Unreadable(f"{PROGRESS} is torn ({type(e).__name__})") from None
        if isinstance(saved, str):  # its digest, its fields, its best against its validations
            raise Unreadable(f"{PROGRESS} is {saved}")
        if saved.fingerprint != self.fingerprint:
            log.info("checkpoint %s was made with other inputs, settings or code; starting afresh", self.dir)
            return None
        if saved.state.step >= self.total_steps and not saved.done:  # checkpoints are saved before the last step
            raise Unreadable(f"{PROGRESS} is at step {saved.state.step} of a {self.total_steps}-step run")
        for name, digest in saved.files.items():  # before anything is loaded
            path = self.dir / name
            if not path.is_file() or sha256_file(path) != digest:
                raise Unreadable(f"{name} is {'missing' if not path.is_file() else 'not what was saved'}")
        return saved

    def resume(self, main: bool) -> tuple[dict, dict | None, dict | None] | None:
        """(state, best_state, finished result or None) of the last complete checkpoint made with the same
        inputs, else None."""
        from safetensors.torch import load_file

        found, keep = None, set()
        try:
            saved = self._progress()
            if saved is not None:
                best = load_file(self.dir / saved.best_file) if main else None
                state = saved.state.to_json()  # the loop's state, as it saved it
                if saved.done:
                    found = (state, best, saved.result)
                else:
                    try:
                        with weights_only_loads():
                            _check_random_states(self.dir / saved.state_dir)
                            self.accelerator.load_state(str(self.dir / saved.state_dir), **self.load_kwargs)
                    except Exception as e:  # verified, yet it does not load: its state may be half applied
                        self._set_aside(main)
                        raise StreamlineError(
                            f"train: checkpoint {self.dir} passed its checksums but cannot be "
                            f"loaded ({type(e).__name__}); it was set aside: run again to start "
                            f"afresh"
                        ) from None
                    found = (state, best, None)
                keep = set(saved.files) | {saved.best_file}
        except (Unreadable, OSError, ValueError) as e:  # nothing was loaded: start afresh in this process
            log.warning(
                "checkpoint %s cannot be read (%s); setting it aside and starting afresh",
                self.dir,
                str(e).splitlines()[0] if str(e) else type(e).__name__,
            )
            found = None
            self._set_aside(main)
        self.accelerator.wait_for_everyone()
        if self.dir and main:
            self.dir.mkdir(parents=True, exist_ok=True)
            mark(self.dir, "checkpoint directory")
            if found is None:
                (self.dir / PROGRESS).unlink(missing_ok=True)
            self._clean({p.split("/")[0] for p in keep})  # leftovers of a checkpoint being written when the run died
        self.accelerator.wait_for_everyone()
        return found

    def _set_aside(self, main: bool) -> None:
        if main and self.dir is not None and self.dir.exists():
            log.warning("moved it to %s", move_aside(self.dir, "unreadable"))

    def save(self, step: int, state: dict, best_state: dict | None) -> None:
        try:
            self._save(step, state, best_state)
        except Exception as e:  # a full disk: OSError, torch's "basic_ios::clear: iostream error", SafetensorError
            free = shutil.disk_usage(self.dir).free
            if free > self.bytes_needed and getattr(e, "errno", None) != errno.ENOSPC and "No space" not in str(e):
                raise
            raise StreamlineError(
                f"disk full writing checkpoint {self.dir}: a checkpoint needs about "
                f"{self.bytes_needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free; free space, or set "
                f"train.checkpoint_every higher"
            ) from None

    bytes_needed = 0  # set by the loop: the trainable weights, their Adam moments and the best copy, in fp32

    def _save(self, step: int, state: dict, best_state: dict | None) -> None:
        name = f"state-{step:07d}"
        self.accelerator.save_state(str(self.dir / name), **self.save_kwargs)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            best_file = self._save_best(state, best_state)
            files = [p for p in sorted((self.dir / name).rglob("*")) if p.is_file()] + [self.dir / best_file]
            self._write_progress({"state_dir": name, "best_file": best_file, "state": state}, files)
            self._clean({name, best_file})
        self.accelerator.wait_for_everyone()

    def _save_best(self, state: dict, best_state: dict) -> str:
        from safetensors.torch import save_file

        best_file = f"best-{state['best_step']:07d}.safetensors"
        if not (self.dir / best_file).exists():
            save_file(best_state, self.dir / (best_file + ".partial"))
            (self.dir / (best_file + ".partial")).replace(self.dir / best_file)
        return best_file

    def _write_progress(self, entry: dict, files: list[Path]) -> None:
        digests = {str(f.relative_to(self.dir)): sha256_file(f) for f in files}
        Progress.from_json({"fingerprint": self.fingerprint, **entry, "files": digests}, PROGRESS).write(
            self.dir / PROGRESS
        )

    def finish(self, result: TrainLog, kept_state: dict) -> None:
        """Keep only the exported weights and the log: enough to export again, nothing to resume from."""
        if self.dir is None:
            return
        try:
            state = {"best_step": result.best_step if result.kept == "best" else 0}
            best_file = self._save_best(state, kept_state)
            self._write_progress(
                {"done": True, "state_dir": None, "best_file": best_file, "state": state, "result": result.to_json()},
                [self.dir / best_file],
            )
            self._clean({best_file})
        except OSError as e:  # the model is exported; only the shortcut for a rerun is lost
            log.warning("could not keep the finished state in %s (%s)", self.dir, e)

    def _clean(self, keep: set[str]) -> None:
        for path in self.dir.iterdir():
            if path.name != PROGRESS and path.name not in keep and path.name.startswith(("state-", "best-")):
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def _check_random_states(state_dir: Path) -> None:
    """Load every process's random state as accelerate will: accelerate logs "Could not load random states" and
    carries on when one fails, and the resumed run would silently stop being reproducible. Every process checks
    all of them, so all agree on setting the checkpoint aside."""
    from accelerate.utils import load

    for path in sorted(state_dir.glob("random_states_*.pkl")):
        states = load(path)
        if not isinstance(states, dict) or not {"random_state", "numpy_random_seed", "torch_manual_seed"} <= set(
            states
        ):
            raise ValueError(f"{path.name} holds no random states")
