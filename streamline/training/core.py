"""The training loop every loss shares: plan, optimizer, schedule, accumulation, validation, keep-best,
checkpoints, resume, the train log and the export of the pruned model.

A loss brings a Recipe: the ReplacedModel (network trainable, everything else frozen), its training
samples, the objective (a function of the model and a batch, see losses.py) and the validation
metrics, one of which picks the state that is kept.

- The plan is counted in OPTIMIZER steps: ceil(epochs x micro-batches per epoch) micro-batches, in groups
  of gradient_accumulation_step; a short last group is scaled by its real size.
- AdamW (decay on matrices only), linear warm-up then cosine decay to min_lr from transformers
  (the reference's schedule; its length is counted in optimizer steps, which the reference got wrong).
- Validation at step 0, every val_every steps and at the end; the best state is copied (fp32). If
  validation never improves, the initial weights are kept and the log says so.
- Checkpoints (accelerate's save_state, trainable weights only, plus progress.json naming the last
  complete one) every checkpoint_every steps; a killed run resumes from the last one and reads exactly
  the micro-batches it had not consumed. A checkpoint that cannot be read is set aside, and the run
  starts afresh. The checkpoint dir is locked while a run uses it; when the run completes it keeps only the
  exported weights and the log, so a rerun whose outputs Snakemake discarded exports them again.
"""

from __future__ import annotations

import errno
import logging
import math
import resource
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .. import progress
from ..artifacts import Progress, TrainLog, TrainStep
from ..errors import StreamlineError
from ..atomic import exclusive, read_json
from ..ownership import mark, move_aside, require_owned
from ..versions import VERSIONS
from ..weights import sha256_file
from .distributed import accelerator_for, checkpoint_kwargs, gather_trainable, is_deepspeed, weights_only_loads
from .model import ReplacedModel
from .settings import TrainSettings
from .sources import micro_batch_plan, read_ahead

log = logging.getLogger(__name__)

PROGRESS = "progress.json"  # names the last complete checkpoint; written last, atomically


@dataclass
class Recipe:
    stage_loss: str                              # mse | llm | kd: the loss this run trains with
    loss: str                                    # the name the log and the model card carry (mse+kd: staged)
    module: ReplacedModel
    train: Any                                   # PairSamples or TokenSamples
    objective: Callable[[ReplacedModel, dict], dict]
    validation: dict[str, tuple[Callable, Any]]  # metric -> (objective, samples)
    select: str                                  # the validation metric that picks the kept state
    inputs: dict = field(default_factory=dict)   # identity of the inputs: a checkpoint made from others is not resumed
    prefix_cache: dict = field(default_factory=dict)  # validation blocks' h_b: the prefix is frozen, so computed once


@dataclass
class Plan:
    micro: list[list[int]]   # this process's micro-batches (sample indices), in order
    gas: int                 # micro-batches per optimizer step
    steps: int
    warmup: int
    val_every: int
    checkpoint_every: int

    def group(self, step: int) -> int:
        """Micro-batches in optimizer step `step` (0-based): gas, or fewer for a short last group."""
        return min(self.gas, len(self.micro) - step * self.gas)


def make_plan(n: int, s: TrainSettings, world: int = 1, rank: int = 0) -> Plan:
    if n == 0:
        raise StreamlineError("train_num_data: there are no training blocks")
    micro = micro_batch_plan(n, s.batch_size, s.epochs, s.seed, world, rank)
    steps = math.ceil(len(micro) / s.gradient_accumulation_step)
    val_every = s.val_every or max(1, steps // 10)
    return Plan(micro, s.gradient_accumulation_step, steps, round(s.warmup_ratio * steps), val_every,
                s.checkpoint_every or val_every)


def make_optimizer(params: list[torch.nn.Parameter], s: TrainSettings) -> torch.optim.AdamW:
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": s.wd}] + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.adam_beta1, s.adam_beta2))


def make_schedule(optimizer, plan: Plan, s: TrainSettings):
    from transformers import get_cosine_with_min_lr_schedule_with_warmup
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, plan.warmup, plan.steps, min_lr=s.min_lr)


# --- validation -----------------------------------------------------------------------------------------

def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def validate(accelerator, module, recipe: Recipe, s: TrainSettings) -> dict[str, float]:
    """Each validation metric, token-weighted over all its samples; each process takes every world-th."""
    net = accelerator.unwrap_model(module)  # no DDP/engine collectives in forward: shards may differ in size
    net.eval()
    out = {}
    for name, (objective, samples) in recipe.validation.items():
        mine = list(range(accelerator.process_index, len(samples), accelerator.num_processes))
        groups = [mine[i:i + s.batch_size] for i in range(0, len(mine), s.batch_size)]
        total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        for group, batch in zip(groups, read_ahead(samples, groups, s.prefetch)):
            batch = _to(batch, accelerator.device)
            if "input_ids" in batch:  # token blocks: the frozen prefix's output never changes, keep it (on the CPU)
                key = (id(samples), tuple(group))
                if key not in recipe.prefix_cache:
                    with accelerator.autocast():
                        recipe.prefix_cache[key] = net.prefix(batch["input_ids"], batch["attention_mask"]).cpu()
                batch["h"] = recipe.prefix_cache[key].to(accelerator.device)
            with accelerator.autocast():
                r = objective(net, batch)
            total += torch.stack([r["loss"].double() * r["count"], r["count"].double()])
        total = accelerator.reduce(total, reduction="sum")
        if total[1] == 0:  # 0 / 0 would read as a perfect score and pick the kept state
            raise StreamlineError(f"train: validation {name} has no token to score (every validation position is "
                                  f"padding or left out); check the data's val split and train.skip_first_tokens")
        out[name] = float(total[0] / total[1])
        if not math.isfinite(out[name]):
            raise StreamlineError(f"train: validation {name} is {out[name]} (NaN/Inf): the model overflows in "
                                  f"this dtype or the lr is too high; try dtype: float32 or a lower lr")
    net.train()
    return out


# --- checkpoints ----------------------------------------------------------------------------------------

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
                        raise StreamlineError(f"train: checkpoint {self.dir} passed its checksums but cannot be "
                                              f"loaded ({type(e).__name__}); it was set aside: run again to start "
                                              f"afresh") from None
                    found = (state, best, None)
                keep = set(saved.files) | {saved.best_file}
        except (Unreadable, OSError, ValueError) as e:  # nothing was loaded: start afresh in this process
            log.warning("checkpoint %s cannot be read (%s); setting it aside and starting afresh", self.dir,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
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
            raise StreamlineError(f"disk full writing checkpoint {self.dir}: a checkpoint needs about "
                                  f"{self.bytes_needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free; free space, or set "
                                  f"train.checkpoint_every higher") from None

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
            self.dir / PROGRESS)

    def finish(self, result: TrainLog, kept_state: dict) -> None:
        """Keep only the exported weights and the log: enough to export again, nothing to resume from."""
        if self.dir is None:
            return
        try:
            state = {"best_step": result.best_step if result.kept == "best" else 0}
            best_file = self._save_best(state, kept_state)
            self._write_progress({"done": True, "state_dir": None, "best_file": best_file, "state": state,
                                  "result": result.to_json()}, [self.dir / best_file])
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
        if not isinstance(states, dict) or not {"random_state", "numpy_random_seed", "torch_manual_seed"} <= set(states):
            raise ValueError(f"{path.name} holds no random states")


# --- the loop -------------------------------------------------------------------------------------------

def fit(recipe: Recipe, s: TrainSettings, finish: Callable[[TrainLog, dict], None], *,
        checkpoint_dir: str | Path | None = None, mixed_precision: str | None = "no") -> TrainLog:
    """Train `recipe` and return the train log.

    The main process calls finish(result, kept_state) (export the model, write the log) before the
    checkpoints are pruned to the final state; kept_state holds the network's kept weights by their
    pruned-model names.
    """
    with accelerator_for(s, mixed_precision) as accelerator:
        return _fit(accelerator, recipe, s, finish, checkpoint_dir)


def _fit(accelerator, recipe: Recipe, s: TrainSettings, finish: Callable, checkpoint_dir) -> TrainLog:
    main = accelerator.is_main_process
    torch.manual_seed(s.seed)
    if accelerator.device.type == "cuda":  # fp32 matmuls (the MSE network, fp32 master weights) on the tensor cores
        torch.backends.cuda.matmul.allow_tf32 = True
    plan = make_plan(len(recipe.train), s, accelerator.num_processes, accelerator.process_index)
    names = recipe.module.trainable
    initial_state = recipe.module.trainable_state() if main else None  # exact, before DeepSpeed casts anything
    optimizer = make_optimizer([p for p in recipe.module.parameters() if p.requires_grad], s)
    scheduler = make_schedule(optimizer, plan, s)
    fingerprint = {"loss": recipe.loss, "settings": s.as_dict(), "inputs": recipe.inputs,
                   "version": VERSIONS["train"],  # a checkpoint made by training code of another version is not resumed
                   "world": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type),
                   "mixed_precision": accelerator.mixed_precision}
    ckpt = Checkpoints(checkpoint_dir, accelerator, fingerprint, plan.steps)
    ckpt.bytes_needed = 4 * 4 * sum(p.numel() for p in recipe.module.parameters() if p.requires_grad)
    module, optimizer, scheduler = accelerator.prepare(recipe.module.to(accelerator.device), optimizer, scheduler)
    params = [p for p in module.parameters() if p.requires_grad]
    with ckpt.locked():
        found = ckpt.resume(main)
        if found and found[2] is not None:  # finished earlier (its outputs were discarded): export it again
            log.info("training already finished in %s (its outputs were removed since): exporting its kept state "
                     "again", ckpt.dir)
            if main:
                finish(found[2], found[1])
            accelerator.wait_for_everyone()
            return found[2]
        state, best_state = found[:2] if found else ({"step": 0, "steps": [], "val": [], "best": None,
                                                      "best_step": 0, "tokens": 0}, initial_state)
        resumed_at = state["step"] if found else None
        if found:
            log.info("resumed from %s at optimizer step %d of %d", ckpt.dir, state["step"], plan.steps)
        _describe(recipe, s, plan, accelerator)
        start = time.time()
        if not state["val"]:
            log.info("initial validation: %s", _fmt(_validation(accelerator, module, recipe, s, state)[0]))
        bar = progress.bar(total=plan.steps, initial=state["step"], unit="step", disable=not main,
                           desc=f"train {recipe.module.replacement.net}-{recipe.loss}")
        batches = read_ahead(recipe.train, plan.micro[state["step"] * plan.gas:], s.prefetch)
        while state["step"] < plan.steps:
            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
            train_loss, tokens, terms = _accumulate(accelerator, module, batches, plan, plan.group(state["step"]))
            if terms == 0:  # a loss over nothing is 0 and trains nothing, silently
                raise StreamlineError(f"train: step {state['step'] + 1} has no token in its loss (every position is "
                                      f"padding or left out by skip_first_tokens / the outlier filter); check the "
                                      f"data's attention masks and train.skip_first_tokens")
            grad_norm = accelerator.clip_grad_norm_(params, s.max_grad_norm)
            optimizer.step()
            # fp16's loss scaler skips a step whose gradients overflowed (routine in an fp16 run's first steps)
            skipped = bool(accelerator.optimizer_step_was_skipped)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state["step"] += 1
            state["tokens"] += tokens
            step = state["step"]
            norm = None if grad_norm is None or skipped else float(grad_norm)
            if not math.isfinite(train_loss) or (norm is not None and not math.isfinite(norm)):
                what = f"training loss is {train_loss}" if not math.isfinite(train_loss) else f"gradient norm is {norm}"
                raise StreamlineError(f"train: the {what} (NaN/Inf) at step {step}: the model overflows in this dtype "
                                      f"or the lr is too high; try dtype: float32 or a lower lr")
            if skipped:
                state["skipped_steps"] = state.get("skipped_steps", 0) + 1
                log.info("step %d skipped by the fp16 loss scaler (gradients overflowed; the scale is lowered)", step)
            state["steps"].append({"step": step, "loss": train_loss, "lr": lr, "grad_norm": norm, "skipped": skipped})
            if step % plan.val_every == 0 or step == plan.steps:
                metrics, improved = _validation(accelerator, module, recipe, s, state)
                current = gather_trainable(accelerator, module, names) if improved else None  # collective
                if improved:
                    best_state = current
                bar.set_postfix_str(f"loss {train_loss:.4g} val {recipe.select} {metrics[recipe.select]:.4g} "
                                    f"best {state['best']:.4g}")
                log.info("step %d/%d: train loss %.5g, validation %s%s", step, plan.steps, train_loss, _fmt(metrics),
                         " (best)" if improved else "")
            else:
                bar.set_postfix_str(f"loss {train_loss:.4g} lr {lr:.2e}")
            bar.update(1)
            if ckpt.dir and step % plan.checkpoint_every == 0 and step < plan.steps:
                ckpt.save(step, state, best_state)
        bar.close()
        seconds = time.time() - start
        tokens = int(accelerator.reduce(torch.tensor(state["tokens"], device=accelerator.device), reduction="sum"))
        result = _result(recipe, s, plan, state, accelerator, seconds, tokens, resumed_at)
        del module, optimizer, scheduler
        recipe.module = None  # the export reads the init dir afresh: never two copies of the model at once
        accelerator.free_memory()
        if main:
            kept_state = initial_state if result.kept == "initial" else best_state
            finish(result, kept_state)
            ckpt.finish(result, kept_state)
        accelerator.wait_for_everyone()
    return result


def _accumulate(accelerator, module, batches: Iterator[dict], plan: Plan, group: int) -> tuple[float, int, float]:
    """Forward and backward over one optimizer step's `group` micro-batches: (mean loss over processes, tokens,
    terms the losses averaged over all processes: 0 means every position was masked or skipped)."""
    losses, tokens = [], torch.zeros((), dtype=torch.long, device=accelerator.device)
    terms = torch.zeros((), dtype=torch.float32, device=accelerator.device)
    for i in range(group):
        batch = _to(next(batches), accelerator.device)
        boundary = i == group - 1
        accelerator.sync_gradients = boundary
        with nullcontext() if boundary else accelerator.no_sync(module):
            with accelerator.autocast():
                out = module(**batch)
            # accelerate (or DeepSpeed) divides by gas: a short group is scaled by its real size
            accelerator.backward(out["loss"] * (plan.gas / group))
        losses.append(out["loss"].detach().float())
        terms += out["count"].detach().float()
        tokens += batch["attention_mask"].sum()
    loss, terms = accelerator.reduce(torch.stack([torch.stack(losses).mean(), terms]), reduction="sum").tolist()
    return loss / accelerator.num_processes, int(tokens), terms


def _validation(accelerator, module, recipe: Recipe, s: TrainSettings, state: dict) -> tuple[dict, bool]:
    """Validate, log it in `state`, and say whether the selected metric improved on the best so far."""
    t0 = time.time()
    metrics = validate(accelerator, module, recipe, s)
    state["validation_seconds"] = state.get("validation_seconds", 0.0) + time.time() - t0
    value = metrics[recipe.select]
    state["val"].append({"step": state["step"], "loss": value, **metrics})
    improved = state["best"] is not None and value < state["best"]
    if state["best"] is None or improved:
        state["best"], state["best_step"] = value, state["step"]
    return metrics, improved


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.5g}" + (f" (perplexity {math.exp(min(v, 700)):.2f})" if k == "ce" else "")
                     for k, v in metrics.items())


def _describe(recipe: Recipe, s: TrainSettings, plan: Plan, accelerator) -> None:
    r = recipe.module.replacement
    n_train = sum(p.numel() for p in recipe.module.parameters() if p.requires_grad)
    log.info("%s training of %s (k=%d layer slots %s; block %d..%d of the original): %.2fM trainable params; "
             "%d train blocks, validation on %s; %d process(es) (%s, mixed precision %s); %d optimizer steps of "
             "%d micro-batches x %d blocks x %d processes (%g epochs); lr %g -> %g, warm-up %d; validation every "
             "%d, checkpoint every %d steps", recipe.loss, r.net, r.kept, r.slots, r.block[0], r.block[-1],
             n_train / 1e6, len(recipe.train), {k: len(v[1]) for k, v in recipe.validation.items()},
             accelerator.num_processes, accelerator.distributed_type, accelerator.mixed_precision, plan.steps,
             plan.gas, s.batch_size, accelerator.num_processes, s.epochs, s.lr, s.min_lr, plan.warmup,
             plan.val_every, plan.checkpoint_every)


def _result(recipe: Recipe, s: TrainSettings, plan: Plan, state: dict, accelerator, seconds: float, tokens: int,
            resumed_at: int | None) -> TrainLog:
    val_seconds = state.get("validation_seconds", 0.0)
    r = recipe.module.replacement
    initial = state["val"][0]
    kept = "best" if state["best"] < initial["loss"] else "initial"
    best = min(state["val"], key=lambda v: v["loss"])
    warnings = []
    if kept == "initial":
        warnings.append(f"training never improved validation {recipe.select} on the untrained network's "
                        f"{initial['loss']:.5g} (best {state['best']:.5g}): the exported model keeps the INITIAL "
                        f"weights")
    elif "ce" in initial and best["ce"] > initial["ce"]:
        warnings.append(f"training made held-out perplexity worse: {math.exp(initial['ce']):.4g} -> "
                        f"{math.exp(best['ce']):.4g} for the kept state")
    for w in warnings:
        log.warning("WARNING: %s", w)
    log.info("trained in %.1f s: validation %s %.6g -> %.6g (best at step %d, kept %s)", seconds, recipe.select,
             initial["loss"], state["best"], best["step"], kept)
    micro_run = len(plan.micro) - (resumed_at or 0) * plan.gas
    return TrainLog(
        net=r.net, loss=recipe.loss, stage_loss=recipe.stage_loss, replacement_layers=r.kept, slots=r.slots,
        block=r.block, settings=s.as_dict(), select=recipe.select, total_steps=plan.steps, warmup_steps=plan.warmup,
        train_samples=len(recipe.train), train_tokens=tokens,
        val_samples={k: len(v[1]) for k, v in recipe.validation.items()},
        steps=[TrainStep(**step) for step in state["steps"]], val=state["val"], initial_val_loss=initial["loss"],
        best_val_loss=state["best"], initial_val={k: v for k, v in initial.items() if k != "step"},
        best_val={k: v for k, v in best.items() if k != "step"}, best_step=state["best_step"], kept=kept,
        num_processes=accelerator.num_processes, distributed_type=str(accelerator.distributed_type).split(".")[-1],
        mixed_precision=accelerator.mixed_precision, deepspeed=is_deepspeed(accelerator), resumed_at_step=resumed_at,
        seconds=round(seconds, 2), validation_seconds=round(val_seconds, 2),
        samples_per_second=round(micro_run * s.batch_size * accelerator.num_processes
                                 / max(seconds - val_seconds, 1e-9), 2),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # this process
        peak_gpu_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        skipped_steps=state.get("skipped_steps", 0), warnings=warnings)
