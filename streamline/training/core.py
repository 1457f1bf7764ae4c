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

import logging
import math
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .. import progress
from ..artifacts import TrainLog, TrainStep
from ..errors import StreamlineError
from ..versions import VERSIONS
from .checkpoints import Checkpoints
from .distributed import accelerator_for, gather_trainable, is_deepspeed
from .model import ReplacedModel
from .settings import TrainSettings
from .sources import micro_batch_plan, read_ahead

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    stage_loss: str  # mse | llm | kd: the loss this run trains with
    loss: str  # the name the log and the model card carry (mse+kd: staged)
    module: ReplacedModel
    train: Any  # PairSamples or TokenSamples
    objective: Callable[[ReplacedModel, dict], dict]
    validation: dict[str, tuple[Callable, Any]]  # metric -> (objective, samples)
    select: str  # the validation metric that picks the kept state
    inputs: dict = field(default_factory=dict)  # identity of the inputs: a checkpoint made from others is not resumed
    prefix_cache: dict = field(default_factory=dict)  # validation blocks' h_b: the prefix is frozen, so computed once


@dataclass
class Plan:
    micro: list[list[int]]  # this process's micro-batches (sample indices), in order
    gas: int  # micro-batches per optimizer step
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
    return Plan(
        micro,
        s.gradient_accumulation_step,
        steps,
        round(s.warmup_ratio * steps),
        val_every,
        s.checkpoint_every or val_every,
    )


def make_optimizer(params: list[torch.nn.Parameter], s: TrainSettings) -> torch.optim.AdamW:
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": s.wd}] + (
        [{"params": no_decay, "weight_decay": 0.0}] if no_decay else []
    )
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
        groups = [mine[i : i + s.batch_size] for i in range(0, len(mine), s.batch_size)]
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
            raise StreamlineError(
                f"train: validation {name} has no token to score (every validation position is "
                f"padding or left out); check the data's val split and train.skip_first_tokens"
            )
        out[name] = float(total[0] / total[1])
        if not math.isfinite(out[name]):
            raise StreamlineError(
                f"train: validation {name} is {out[name]} (NaN/Inf): the model overflows in "
                f"this dtype or the lr is too high; try dtype: float32 or a lower lr"
            )
    net.train()
    return out


# --- the loop -------------------------------------------------------------------------------------------


def fit(
    recipe: Recipe,
    s: TrainSettings,
    finish: Callable[[TrainLog, dict], None],
    *,
    checkpoint_dir: str | Path | None = None,
    mixed_precision: str | None = "no",
) -> TrainLog:
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
    fingerprint = {
        "loss": recipe.loss,
        "settings": s.as_dict(),
        "inputs": recipe.inputs,
        "version": VERSIONS["train"],  # a checkpoint made by training code of another version is not resumed
        "world": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
    }
    ckpt = Checkpoints(checkpoint_dir, accelerator, fingerprint, plan.steps)
    ckpt.bytes_needed = 4 * 4 * sum(p.numel() for p in recipe.module.parameters() if p.requires_grad)
    module, optimizer, scheduler = accelerator.prepare(recipe.module.to(accelerator.device), optimizer, scheduler)
    params = [p for p in module.parameters() if p.requires_grad]
    with ckpt.locked():
        found = ckpt.resume(main)
        if found and found[2] is not None:  # finished earlier (its outputs were discarded): export it again
            log.info(
                "training already finished in %s (its outputs were removed since): exporting its kept state again",
                ckpt.dir,
            )
            if main:
                finish(found[2], found[1])
            accelerator.wait_for_everyone()
            return found[2]
        state, best_state = (
            found[:2]
            if found
            else ({"step": 0, "steps": [], "val": [], "best": None, "best_step": 0, "tokens": 0}, initial_state)
        )
        resumed_at = state["step"] if found else None
        if found:
            log.info("resumed from %s at optimizer step %d of %d", ckpt.dir, state["step"], plan.steps)
        _describe(recipe, s, plan, accelerator)
        start = time.time()
        if not state["val"]:
            log.info("initial validation: %s", _fmt(_validation(accelerator, module, recipe, s, state)[0]))
        bar = progress.bar(
            total=plan.steps,
            initial=state["step"],
            unit="step",
            disable=not main,
            desc=f"train {recipe.module.replacement.net}-{recipe.loss}",
        )
        batches = read_ahead(recipe.train, plan.micro[state["step"] * plan.gas :], s.prefetch)
        while state["step"] < plan.steps:
            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
            train_loss, tokens, terms = _accumulate(accelerator, module, batches, plan, plan.group(state["step"]))
            if terms == 0:  # a loss over nothing is 0 and trains nothing, silently
                raise StreamlineError(
                    f"train: step {state['step'] + 1} has no token in its loss (every position is "
                    f"padding or left out by skip_first_tokens / the outlier filter); check the "
                    f"data's attention masks and train.skip_first_tokens"
                )
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
                raise StreamlineError(
                    f"train: the {what} (NaN/Inf) at step {step}: the model overflows in this dtype "
                    f"or the lr is too high; try dtype: float32 or a lower lr"
                )
            if skipped:
                state["skipped_steps"] = state.get("skipped_steps", 0) + 1
                log.info("step %d skipped by the fp16 loss scaler (gradients overflowed; the scale is lowered)", step)
            state["steps"].append({"step": step, "loss": train_loss, "lr": lr, "grad_norm": norm, "skipped": skipped})
            if step % plan.val_every == 0 or step == plan.steps:
                metrics, improved = _validation(accelerator, module, recipe, s, state)
                current = gather_trainable(accelerator, module, names) if improved else None  # collective
                if improved:
                    best_state = current
                bar.set_postfix_str(
                    f"loss {train_loss:.4g} val {recipe.select} {metrics[recipe.select]:.4g} best {state['best']:.4g}"
                )
                log.info(
                    "step %d/%d: train loss %.5g, validation %s%s",
                    step,
                    plan.steps,
                    train_loss,
                    _fmt(metrics),
                    " (best)" if improved else "",
                )
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
    return ", ".join(
        f"{k} {v:.5g}" + (f" (perplexity {math.exp(min(v, 700)):.2f})" if k == "ce" else "") for k, v in metrics.items()
    )


def _describe(recipe: Recipe, s: TrainSettings, plan: Plan, accelerator) -> None:
    r = recipe.module.replacement
    n_train = sum(p.numel() for p in recipe.module.parameters() if p.requires_grad)
    log.info(
        "%s training of %s (k=%d layer slots %s; block %d..%d of the original): %.2fM trainable params; "
        "%d train blocks, validation on %s; %d process(es) (%s, mixed precision %s); %d optimizer steps of "
        "%d micro-batches x %d blocks x %d processes (%g epochs); lr %g -> %g, warm-up %d; validation every "
        "%d, checkpoint every %d steps",
        recipe.loss,
        r.net,
        r.kept,
        r.slots,
        r.block[0],
        r.block[-1],
        n_train / 1e6,
        len(recipe.train),
        {k: len(v[1]) for k, v in recipe.validation.items()},
        accelerator.num_processes,
        accelerator.distributed_type,
        accelerator.mixed_precision,
        plan.steps,
        plan.gas,
        s.batch_size,
        accelerator.num_processes,
        s.epochs,
        s.lr,
        s.min_lr,
        plan.warmup,
        plan.val_every,
        plan.checkpoint_every,
    )


def _result(
    recipe: Recipe,
    s: TrainSettings,
    plan: Plan,
    state: dict,
    accelerator,
    seconds: float,
    tokens: int,
    resumed_at: int | None,
) -> TrainLog:
    val_seconds = state.get("validation_seconds", 0.0)
    r = recipe.module.replacement
    initial = state["val"][0]
    kept = "best" if state["best"] < initial["loss"] else "initial"
    best = min(state["val"], key=lambda v: v["loss"])
    warnings = []
    if kept == "initial":
        warnings.append(
            f"training never improved validation {recipe.select} on the untrained network's "
            f"{initial['loss']:.5g} (best {state['best']:.5g}): the exported model keeps the INITIAL "
            f"weights"
        )
    elif "ce" in initial and best["ce"] > initial["ce"]:
        warnings.append(
            f"training made held-out perplexity worse: {math.exp(initial['ce']):.4g} -> "
            f"{math.exp(best['ce']):.4g} for the kept state"
        )
    for w in warnings:
        log.warning("WARNING: %s", w)
    log.info(
        "trained in %.1f s: validation %s %.6g -> %.6g (best at step %d, kept %s)",
        seconds,
        recipe.select,
        initial["loss"],
        state["best"],
        best["step"],
        kept,
    )
    micro_run = len(plan.micro) - (resumed_at or 0) * plan.gas
    return TrainLog(
        net=r.net,
        loss=recipe.loss,
        stage_loss=recipe.stage_loss,
        replacement_layers=r.kept,
        slots=r.slots,
        block=r.block,
        settings=s.as_dict(),
        select=recipe.select,
        total_steps=plan.steps,
        warmup_steps=plan.warmup,
        train_samples=len(recipe.train),
        train_tokens=tokens,
        val_samples={k: len(v[1]) for k, v in recipe.validation.items()},
        steps=[TrainStep(**step) for step in state["steps"]],
        val=state["val"],
        initial_val_loss=initial["loss"],
        best_val_loss=state["best"],
        initial_val={k: v for k, v in initial.items() if k != "step"},
        best_val={k: v for k, v in best.items() if k != "step"},
        best_step=state["best_step"],
        kept=kept,
        num_processes=accelerator.num_processes,
        distributed_type=str(accelerator.distributed_type).split(".")[-1],
        mixed_precision=accelerator.mixed_precision,
        deepspeed=is_deepspeed(accelerator),
        resumed_at_step=resumed_at,
        seconds=round(seconds, 2),
        validation_seconds=round(val_seconds, 2),
        samples_per_second=round(
            micro_run * s.batch_size * accelerator.num_processes / max(seconds - val_seconds, 1e-9), 2
        ),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # this process
        peak_gpu_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        skipped_steps=state.get("skipped_steps", 0),
        warnings=warnings,
    )
