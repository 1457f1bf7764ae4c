"""Train the lightweight network end to end with next-token loss (the paper's LLM loss), under accelerate.

The replaced model (`init_dir`) is loaded whole, and every parameter is frozen except those of layer
slot b, which holds the lightweight network. The slot's parameters are selected EXACTLY, by the
prefix f"{layers_path}.{b}." and checked against the slot module's own parameters (the reference's
substring test on "layers.1" also unfroze layers.10..19).

Run it under `accelerate launch` (see streamline/launch.py and configs/accelerate/): DeepSpeed ZeRO-2
(the reference's setup) or plain DDP, on GPUs or, for tests and demos, on CPU processes (gloo).
- Batches: `batch_size` blocks per process per micro-batch, `gradient_accumulation_step` micro-batches
  per optimizer step (accelerator.accumulate); labels are input_ids with padded positions set to -100.
- AdamW on the trainable parameters only; linear warm-up then cosine decay to min_lr, counted in
  OPTIMIZER steps (train_mse.lr_factor); gradient clipping at max_grad_norm (DeepSpeed: its
  gradient_clipping, set from the same setting).
- Mixed precision comes from the accelerate config; a bf16 (fp16) model always trains under bf16
  (fp16) autocast, with fp32 master weights for the network.
- Validation loss (token-weighted over all processes) and perplexity at step 0, every `val_every`
  optimizer steps and at the end; the best network state is copied (fp32), and if validation never
  improves the initial weights are kept.
- Checkpoints (accelerator.save_state, trainable weights only, plus progress.json naming the complete
  one) every `checkpoint_every` optimizer steps; a killed run resumes from the last one, skipping the
  micro-batches it had consumed. The checkpoint dir is deleted when the run completes.
- The main process exports a plain HF model dir with a model card (loss "llm") and train_log.json in
  the format train_mse writes.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .adapters import get_adapter
from .errors import StreamlineError
from .io import atomic_write_json, read_json
from .pruned import count_params, load_pruned, save_pruned
from .store import TORCH_DTYPES
from .train_args import add_train_arguments, settings_from
from .train_mse import TrainSettings, lr_factor

log = logging.getLogger(__name__)

PROGRESS = "progress.json"  # names the last complete checkpoint; written last, atomically


# --- which parameters train ------------------------------------------------------------------------

def trainable_parameter_names(model: torch.nn.Module, index: int) -> list[str]:
    """Names of exactly the parameters of layer slot `index` (the lightweight network).

    Selected by the exact prefix f"{layers_path}.{index}." and checked against the slot module's own
    parameters by identity, so "model.layers.1." never matches model.layers.10..19.
    """
    adapter = get_adapter(model.config.model_type)
    layers = adapter.layers(model)
    if not 0 <= index < len(layers):
        raise StreamlineError(f"layer slot {index} is out of range: the model has {len(layers)} layers")
    prefix = f"{adapter.layers_path}.{index}."
    names = [n for n, _ in model.named_parameters() if n.startswith(prefix)]
    params = dict(model.named_parameters())
    if {id(params[n]) for n in names} != {id(p) for p in layers[index].parameters()}:
        raise StreamlineError(f"parameters under {prefix} are not those of layer slot {index} (shared weights?)")
    if not names:
        raise StreamlineError(f"layer slot {index} has no parameters to train")
    return names


def freeze_all_but(model: torch.nn.Module, names: list[str]) -> None:
    keep = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)


# --- data ----------------------------------------------------------------------------------------

class Blocks(torch.utils.data.Dataset):
    """Token blocks of one split; labels are input_ids with padded positions set to -100."""

    def __init__(self, ids: np.ndarray, mask: np.ndarray, n: int | None = None):
        self.ids, self.mask = ids, mask
        self.n = len(ids) if n is None else min(n, len(ids))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(np.asarray(self.ids[i], dtype=np.int64))
        mask = torch.from_numpy(np.asarray(self.mask[i], dtype=np.int64))
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


class EpochOrder(torch.utils.data.Sampler):
    """A fixed permutation per epoch (seed + epoch): resuming replays the same order.

    The method is deliberately not called set_epoch: accelerate's dataloaders call set_epoch with
    their own iteration count, which restarts at 0 in a resumed run (and in skip_first_batches).
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def select_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def epoch_plan(micro_per_epoch: int, epochs: float, accumulation: int) -> list[int]:
    """Micro-batches (per process) to run in each epoch.

    accelerate syncs gradients every `accumulation` micro-batches and at the end of each epoch's
    dataloader, so a fractional last epoch is rounded up to whole accumulation groups.
    """
    if epochs <= 0:
        raise StreamlineError(f"epochs: must be > 0, got {epochs}")
    full, frac = int(epochs), epochs - int(epochs)
    plan = [micro_per_epoch] * full
    if frac > 1e-9:
        plan.append(min(micro_per_epoch, math.ceil(math.ceil(frac * micro_per_epoch) / accumulation) * accumulation))
    return plan


# --- distributed helpers ----------------------------------------------------------------------------

def _no_deepspeed_jit_ops() -> None:
    """On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce op (1-4 min) when it sets up its
    communication backend. It is only a speed-up over gloo: skip it, so nothing ever compiles."""
    import importlib
    # not `import deepspeed.comm.torch as m`: deepspeed.comm has an attribute `torch` (the torch package)
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    ds_torch.build_shm_op = lambda: None


def make_accelerator(settings: TrainSettings, model_dtype: str):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    configured = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    wanted = {"bfloat16": "bf16", "float16": "fp16"}.get(model_dtype)
    mixed = wanted if wanted and configured == "no" else None  # None: the launch config decides
    kwargs = []
    launched = "LOCAL_RANK" in os.environ  # under accelerate launch / torchrun; else one plain process
    if launched and not torch.cuda.is_available():
        kwargs.append(InitProcessGroupKwargs(backend="gloo"))
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            _no_deepspeed_jit_ops()
    accelerator = Accelerator(gradient_accumulation_steps=settings.gradient_accumulation_step,
                              mixed_precision=mixed, step_scheduler_with_optimizer=False, kwargs_handlers=kwargs)
    if accelerator.state.deepspeed_plugin is not None:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        for key, value in (("gradient_clipping", settings.max_grad_norm),
                           ("gradient_accumulation_steps", settings.gradient_accumulation_step)):
            if ds.get(key, "auto") not in ("auto", value):
                log.warning("DeepSpeed config has %s = %s; the training setting %s wins", key, ds[key], value)
            ds[key] = value
    return accelerator


def _is_deepspeed(accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None


def slot_state(accelerator, model, names: list[str], prefix: str) -> dict[str, torch.Tensor] | None:
    """fp32 copy of the network's weights (DeepSpeed: its fp32 master copy), on the main process.

    Collective under DeepSpeed: every process must call it.
    """
    params = dict(accelerator.unwrap_model(model).named_parameters())
    out = {}
    for n in names:
        full = None
        if _is_deepspeed(accelerator):
            from deepspeed.utils import safe_get_full_fp32_param
            full = safe_get_full_fp32_param(params[n])
        if accelerator.is_main_process:
            out[n[len(prefix):]] = (params[n].detach() if full is None else full).float().cpu().clone()
    return out if accelerator.is_main_process else None


@torch.no_grad()
def validate(accelerator, model, blocks: Blocks, batch_size: int) -> float:
    """Token-weighted next-token loss over all val blocks; each process takes every world-th block."""
    net = accelerator.unwrap_model(model)  # no DDP/engine collectives in forward: shards may differ in size
    was_training = net.training
    net.eval()
    mine = list(range(accelerator.process_index, len(blocks), accelerator.num_processes))
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for i in range(0, len(mine), batch_size):
        batch = torch.utils.data.default_collate([blocks[j] for j in mine[i:i + batch_size]])
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            loss = net(**batch).loss
        tokens = (batch["labels"][:, 1:] != -100).sum()
        total += torch.stack([loss.double() * tokens, tokens.double()])
    total = accelerator.reduce(total, reduction="sum")
    net.train(was_training)
    return float(total[0] / total[1].clamp(min=1))


# --- checkpoints --------------------------------------------------------------------------------------

def _save_kwargs(accelerator) -> tuple[dict, dict]:
    """Checkpoints hold the trainable weights only (the frozen ones are in init_dir)."""
    if _is_deepspeed(accelerator):
        return {"exclude_frozen_parameters": True}, {"load_module_strict": False}
    return {}, {"strict": False}


def _keep_trainable(models, weights, output_dir) -> None:  # accelerator.save_state pre-hook (non-DeepSpeed)
    for model, state in zip(models, weights):
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in state if k not in trainable]:
            del state[key]


def _clean(ckpt_dir: Path, keep: set[str]) -> None:
    for path in ckpt_dir.iterdir():
        if path.name != PROGRESS and path.name not in keep and (path.name.startswith(("state-", "best-"))):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


# --- training -----------------------------------------------------------------------------------------

def train_llm(init_dir: str | Path, data_dir: str | Path, out_dir: str | Path, log_json: str | Path,
              settings: TrainSettings, checkpoint_dir: str | Path | None = None,
              train_samples: int | None = None) -> dict:
    """Train slot b of `init_dir` with next-token loss on data_dir's train blocks; export the best state."""
    from safetensors.torch import load_file, save_file

    from .data import load_split

    init_dir, data_dir, out_dir = Path(init_dir), Path(data_dir), Path(out_dir)
    s = settings
    info = read_json(init_dir / "streamline.json")
    if info["net"] == "none":
        raise StreamlineError("loss: 'llm' needs a lightweight network to train; net 'none' has none")
    index = info["block"][0]
    model_dtype = info.get("dtype", "float32")

    accelerator = make_accelerator(s, model_dtype)
    main = accelerator.is_main_process
    torch.manual_seed(s.seed)

    model = load_pruned(init_dir, dtype=TORCH_DTYPES[model_dtype])
    adapter = get_adapter(model.config.model_type)
    prefix = f"{adapter.layers_path}.{index}."
    names = trainable_parameter_names(model, index)
    freeze_all_but(model, names)
    adapter.layers(model)[index].float()  # fp32 master weights for the network whatever the model dtype
    model.config.use_cache = False
    initial_state = {n[len(prefix):]: p.detach().float().clone() for n, p in model.named_parameters()
                     if p.requires_grad} if main else None  # exact, before DeepSpeed casts anything

    train_ids, train_mask = load_split(data_dir, "train")
    val_ids, val_mask = load_split(data_dir, "val")
    train_set, val_set = Blocks(train_ids, train_mask, train_samples), Blocks(val_ids, val_mask)
    if len(train_set) == 0 or len(val_set) == 0:
        raise StreamlineError(f"train_num_data/data.val_num_data: {data_dir} has {len(train_set)} train and "
                              f"{len(val_set)} val blocks; LLM-loss training needs both")
    sampler = EpochOrder(len(train_set), s.seed)
    train_dl = torch.utils.data.DataLoader(train_set, batch_size=s.batch_size, sampler=sampler)

    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": s.wd}] + ([{"params": no_decay, "weight_decay": 0.0}]
                                                           if no_decay else [])
    optimizer = torch.optim.AdamW(groups, lr=s.lr)

    # sizes are known once the dataloader is sharded across processes
    world = accelerator.num_processes
    micro_per_epoch = math.ceil(len(train_set) / (s.batch_size * world))
    plan = epoch_plan(micro_per_epoch, s.epochs, s.gradient_accumulation_step)
    steps_per_epoch = [math.ceil(n / s.gradient_accumulation_step) for n in plan]
    total_steps = sum(steps_per_epoch)
    warmup = max(1, round(s.warmup_ratio * total_steps))
    val_every = s.val_every or max(1, total_steps // 10)
    ckpt_every = s.checkpoint_every or val_every
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, s.lr, s.min_lr))

    if not _is_deepspeed(accelerator):
        accelerator.register_save_state_pre_hook(_keep_trainable)
    model, optimizer, train_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, scheduler)
    if len(train_dl) != micro_per_epoch:
        raise RuntimeError(f"expected {micro_per_epoch} micro-batches per epoch and process, got {len(train_dl)}")
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    save_kwargs, load_kwargs = _save_kwargs(accelerator)

    state = {"step": 0, "steps": [], "val": [], "best": None, "best_step": 0}
    best_state = initial_state
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    fingerprint = {"settings": asdict(s), "init": str(init_dir.resolve()), "data": str(data_dir.resolve()),
                   "train_samples": len(train_set), "num_processes": world,
                   "distributed_type": str(accelerator.distributed_type), "mixed_precision": accelerator.mixed_precision}
    resumed_at = None
    if ckpt_dir and (ckpt_dir / PROGRESS).exists():
        progress = read_json(ckpt_dir / PROGRESS)
        if progress["fingerprint"] == fingerprint:
            accelerator.load_state(str(ckpt_dir / progress["state_dir"]), **load_kwargs)
            state = progress["state"]
            if main:
                best_state = load_file(ckpt_dir / progress["best_file"])
            resumed_at = state["step"]
            log.info("resumed from %s at optimizer step %d of %d", ckpt_dir / progress["state_dir"], state["step"],
                     total_steps)
        else:
            log.info("checkpoint %s was made with other settings; starting afresh", ckpt_dir)
    accelerator.wait_for_everyone()
    if ckpt_dir and main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        keep = set()
        if resumed_at is not None:
            keep = {progress["state_dir"], progress["best_file"]}
        else:
            (ckpt_dir / PROGRESS).unlink(missing_ok=True)
        _clean(ckpt_dir, keep)  # leftovers of a checkpoint that was being written when the run died
    accelerator.wait_for_everyone()

    n_total = count_params(accelerator.unwrap_model(model))
    n_train = sum(p.numel() for p in trainable_params)
    log.info("LLM-loss training of %s at layer slot %d (%s): %.2fM of %.2fM params trainable (%d tensors); "
             "%d train / %d val blocks of %d tokens; %d process(es) (%s, mixed precision %s); %d optimizer steps "
             "(batch %d x accumulation %d x %d processes, %g epochs, %d micro-batches per epoch per process); "
             "lr %g -> %g, warm-up %d; validation every %d, checkpoint every %d steps",
             info["net"], index, prefix, n_train / 1e6, n_total / 1e6, len(names), len(train_set), len(val_set),
             train_ids.shape[1], world, accelerator.distributed_type, accelerator.mixed_precision, total_steps,
             s.batch_size, s.gradient_accumulation_step, world, s.epochs, micro_per_epoch, s.lr, s.min_lr, warmup,
             val_every, ckpt_every)

    start = time.time()
    if not state["val"]:
        initial = validate(accelerator, model, val_set, s.batch_size)
        state["val"].append({"step": 0, "loss": initial, "perplexity": math.exp(min(initial, 700))})
        state["best"] = initial
        log.info("initial validation loss %.5f (perplexity %.2f)", initial, math.exp(min(initial, 700)))

    def checkpoint(step: int) -> None:
        name = f"state-{step:07d}"
        accelerator.save_state(str(ckpt_dir / name), **save_kwargs)
        accelerator.wait_for_everyone()
        if main:
            best_file = f"best-{state['best_step']:07d}.safetensors"
            if not (ckpt_dir / best_file).exists():
                save_file(best_state, ckpt_dir / (best_file + ".partial"))
                (ckpt_dir / (best_file + ".partial")).replace(ckpt_dir / best_file)
            atomic_write_json(ckpt_dir / PROGRESS, {"fingerprint": fingerprint, "state_dir": name,
                                                    "best_file": best_file, "state": state})
            _clean(ckpt_dir, {name, best_file})
        accelerator.wait_for_everyone()

    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train {info['net']}-llm", unit="step",
               dynamic_ncols=True, disable=not main)
    model.train()
    step, micro_run = state["step"], 0
    for epoch, n_micro in enumerate(plan):
        first = sum(steps_per_epoch[:epoch])
        if step >= first + steps_per_epoch[epoch]:
            continue
        sampler.select_epoch(epoch)
        skip = (step - first) * s.gradient_accumulation_step
        loader = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
        micro, running, count = skip, torch.zeros((), device=accelerator.device), 0
        for batch in loader:
            if micro >= n_micro:
                break
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(trainable_params, s.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro += 1
            micro_run += 1
            running += loss.detach().float()
            count += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            state["step"] = step
            train_loss = float(accelerator.reduce(running / count, reduction="mean"))
            running, count = torch.zeros((), device=accelerator.device), 0
            lr = scheduler.get_last_lr()[0]
            state["steps"].append({"step": step, "loss": train_loss, "lr": lr,
                                   "grad_norm": None if grad_norm is None else float(grad_norm)})
            if step % val_every == 0 or step == total_steps:
                val = validate(accelerator, model, val_set, s.batch_size)
                state["val"].append({"step": step, "loss": val, "perplexity": math.exp(min(val, 700))})
                improved = val < state["best"]
                current = slot_state(accelerator, model, names, prefix) if improved else None  # collective
                if improved:
                    state["best"], state["best_step"], best_state = val, step, current
                bar.set_postfix_str(f"loss {train_loss:.4g} val {val:.4g} best {state['best']:.4g}")
                log.info("step %d/%d: train loss %.4f, validation loss %.4f (perplexity %.2f)%s", step,
                         total_steps, train_loss, val, math.exp(min(val, 700)), " best" if improved else "")
            else:
                bar.set_postfix_str(f"loss {train_loss:.4g} lr {lr:.2e}")
            bar.update(1)
            if ckpt_dir and step % ckpt_every == 0 and step < total_steps:
                checkpoint(step)
    bar.close()
    seconds = time.time() - start
    if step != total_steps:
        raise RuntimeError(f"ran {step} optimizer steps, planned {total_steps}")

    initial = state["val"][0]["loss"]
    kept = "best" if state["best"] < initial else "initial"
    if kept == "initial":
        log.warning("validation loss never improved on the initial %.5f: keeping the initial weights", initial)
    result = {"net": info["net"], "loss": "llm", "index": index, "settings": asdict(s), "total_steps": total_steps,
              "warmup_steps": warmup, "train_samples": len(train_set), "val_samples": len(val_set),
              "steps": state["steps"], "val": state["val"], "initial_val_loss": initial,
              "best_val_loss": state["best"], "best_step": state["best_step"], "kept": kept,
              "initial_perplexity": math.exp(min(initial, 700)), "best_perplexity": math.exp(min(state["best"], 700)),
              "trainable_parameters": names, "trainable_params": n_train, "num_processes": world,
              "distributed_type": str(accelerator.distributed_type).split(".")[-1],
              "mixed_precision": accelerator.mixed_precision, "resumed_at_step": resumed_at,
              "seconds": round(seconds, 2),
              "samples_per_second": round(micro_run * s.batch_size * world / max(seconds, 1e-9), 2)}
    log.info("trained in %.1f s: validation loss %.5f -> %.5f, perplexity %.2f -> %.2f (best at step %d, kept %s)",
             seconds, initial, state["best"], result["initial_perplexity"], result["best_perplexity"],
             state["best_step"], kept)

    accelerator.wait_for_everyone()
    del model, optimizer, scheduler, train_dl
    accelerator.free_memory()
    if main:
        export_llm_model(init_dir, out_dir, initial_state if kept == "initial" else best_state, index, info, result)
        atomic_write_json(log_json, result)
        if ckpt_dir and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)  # done: the exported model and log replace it
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def export_llm_model(init_dir: Path, out_dir: Path, net_state: dict, index: int, info: dict, result: dict) -> None:
    """The init model with slot `index` holding the trained weights, in the model's own dtype."""
    model = load_pruned(init_dir, dtype=TORCH_DTYPES[info.get("dtype", "float32")])
    adapter = get_adapter(model.config.model_type)
    adapter.layers(model)[index].load_state_dict(net_state)
    s = result["settings"]
    training = {"train blocks": result["train_samples"], "optimizer steps": result["total_steps"],
                "batch × accumulation × processes":
                    f"{s['batch_size']} × {s['gradient_accumulation_step']} × {result['num_processes']}",
                "lr": f"{s['lr']:g} → {s['min_lr']:g} (cosine, warm-up {result['warmup_steps']})",
                "weight decay": s["wd"], "epochs": s["epochs"],
                "distributed": f"{result['distributed_type']}, mixed precision {result['mixed_precision']}",
                "validation loss": f"{result['initial_val_loss']:.5g} → {result['best_val_loss']:.5g} "
                                   f"(perplexity {result['initial_perplexity']:.4g} → "
                                   f"{result['best_perplexity']:.4g}; kept {result['kept']})"}
    save_pruned(model, adapter, out_dir, init_dir, {**info, "loss": "llm", "training": training,
                                                    "final_val_loss": result["best_val_loss"]})


# --- command line -----------------------------------------------------------------------------------------

def run(a: argparse.Namespace) -> dict:
    return train_llm(a.init, a.data, a.out, a.log_json, settings_from(a), checkpoint_dir=a.checkpoint_dir,
                     train_samples=a.train_samples)


def die_with_launcher() -> None:
    """Under torchrun (accelerate launch), end this worker when its launcher dies.

    torchrun starts each worker in a session of its own, so killing the launcher's process group (Ctrl-C
    aside: SIGKILL, a killed Snakemake job) leaves the workers running: they would finish the run and
    delete the checkpoints while a rerun is resuming from them. Linux only (prctl PR_SET_PDEATHSIG).
    """
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher is already gone
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """`accelerate launch [...] -m streamline.train_llm --init ... --data ... --out ... --log-json ...`"""
    die_with_launcher()
    parser = argparse.ArgumentParser(prog="streamline.train_llm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", help="also write log lines to this file (main process)")
    add_train_arguments(parser, "--data", "prepared data dir (train/val token blocks)")
    args = parser.parse_args(argv)
    from .cli import setup_logging
    is_main = int(os.environ.get("RANK", "0")) == 0
    setup_logging(args.log if is_main else None, logging.INFO if is_main else logging.WARNING, mode="a")
    try:
        run(args)
    except StreamlineError as e:
        print(f"streamline train-llm: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
