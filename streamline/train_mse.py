"""Train the lightweight network alone, mapping h_b to h_{b+n+1} (MSE), from pairs streamed off Zarr.

Only the network (plus rotary embeddings) is in memory; batches are read from pairs.zarr by a
prefetching thread, so RAM is flat in train_num_data. The schedule is counted in optimizer
steps (the reference counted micro-batches and barely decayed). The best validation state is
copied, not referenced; if validation never improves, the initial weights are kept.
A checkpoint after every `checkpoint_every` optimizer steps makes a killed run resume.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from .adapters import get_adapter
from .io import atomic_write_json, read_json
from .pruned import custom_net_class, has_custom_net, load_pruned, read_config, save_pruned
from .store import TORCH_DTYPES, HiddenStore

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    batch_size: int = 8
    gradient_accumulation_step: int = 16
    epochs: float = 1.0
    lr: float = 2e-4
    min_lr: float = 5e-5
    wd: float = 1e-3
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    val_every: int = 0          # optimizer steps between validations; 0 = about ten per run
    checkpoint_every: int = 0   # optimizer steps between checkpoints; 0 = at every validation
    seed: int = 42
    prefetch: int = 4           # micro-batches read ahead
    skip_first_tokens: int = 0  # leave the first k positions (the attention sink) out of the MSE
    device: str = "auto"


# --- the network alone ------------------------------------------------------------------------

def _prefixed_state(model_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    index = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    state = {}
    for name in files:
        with safe_open(model_dir / name, framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    state[key[len(prefix):]] = f.get_tensor(key)
    return state


def load_network(init_dir: str | Path, index: int):
    """Layer slot `index` of a model dir, plus its rotary embeddings, without loading the model."""
    init_dir = Path(init_dir)
    config = read_config(init_dir)
    adapter = get_adapter(config.model_type)
    with torch.device("meta"):  # a skeleton costs no memory; only slot `index` is materialised
        if has_custom_net(config):
            skeleton = custom_net_class(config)(config)
        else:
            skeleton = AutoModelForCausalLM.from_config(config)
    network = adapter.layers(skeleton)[index].to_empty(device="cpu")
    network.load_state_dict(_prefixed_state(init_dir, f"{adapter.layers_path}.{index}."), strict=True)
    rotary = adapter.rotary(skeleton)
    rotary = None if rotary is None else type(rotary)(config=config)
    return network, rotary, config, adapter


# --- batches from the pair store ---------------------------------------------------------------

def store_reader(store: HiddenStore) -> Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return lambda n: (store.read(0, n), store.read(1, n), store.read_mask(n))


def batches(read: Callable, order: list[int], batch_size: int, prefetch: int) -> Iterator[tuple]:
    """Micro-batches (x, y, mask) in `order`, read ahead by a thread so I/O overlaps compute."""
    groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def load(group):
        items = [read(n) for n in group]
        return tuple(torch.stack(t) for t in zip(*items))

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(load, g) for g in groups[:prefetch]]
        for i in range(len(groups)):
            batch = pending.pop(0).result()
            if i + prefetch < len(groups):
                pending.append(pool.submit(load, groups[i + prefetch]))
            yield batch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per_token = (pred.float() - target.float()).pow(2).mean(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


# --- schedule ----------------------------------------------------------------------------------

def lr_factor(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up, then cosine decay to min_lr, in optimizer steps; a factor of `lr`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))) / lr


# --- training ----------------------------------------------------------------------------------

class Trainer:
    def __init__(self, network, rotary, config, adapter, index: int, s: TrainSettings, device: torch.device):
        self.net, self.rotary, self.config, self.adapter, self.index, self.s = network, rotary, config, adapter, index, s
        self.device = device
        self.val_seconds = 0.0
        self.net.to(device=device, dtype=torch.float32).train()  # fp32 master weights whatever the model dtype
        if self.rotary is not None:
            self.rotary.to(device)

    def forward(self, x, mask):
        x = x.to(self.device, torch.float32)
        mask = mask.to(self.device)
        kwargs = self.adapter.layer_kwargs(self.config, x, mask.long(), self.index, self.rotary)
        out = self.net(x, **kwargs)
        return (out[0] if isinstance(out, tuple) else out), mask

    def loss(self, x, y, mask):
        pred, mask = self.forward(x, mask)
        weight = mask.float()
        # The first position of a block is an attention sink whose hidden state is ~100x larger than
        # the others; its squared error can be >95% of the loss. Optionally leave it out.
        weight[:, : self.s.skip_first_tokens] = 0
        return masked_mse(pred, y.to(self.device), weight)

    @torch.no_grad()
    def validate(self, read, samples: list[int]) -> float:
        start = time.perf_counter()
        self.net.eval()
        total, tokens = 0.0, 0
        for x, y, mask in batches(read, samples, self.s.batch_size, self.s.prefetch):
            n_tok = int(mask.sum())
            total += float(self.loss(x, y, mask)) * n_tok
            tokens += n_tok
        self.net.train()
        self.val_seconds += time.perf_counter() - start
        return total / max(tokens, 1)


def train_mse(init_dir: str | Path, pairs_dir: str | Path, out_dir: str | Path, log_json: str | Path,
              settings: TrainSettings, checkpoint_dir: str | Path | None = None, train_read: Callable | None = None,
              train_samples: int | None = None, export: bool = True) -> dict:
    """Train slot b of `init_dir` on pairs_dir/{train,val}; export the best state to `out_dir`.

    `train_read` (sample -> (x, y, mask)) and `train_samples` (use the first N) exist for benchmarks.
    """
    init_dir, pairs_dir, out_dir = Path(init_dir), Path(pairs_dir), Path(out_dir)
    s = settings
    info = read_json(init_dir / "streamline.json")
    index = info["block"][0]
    train_store, val_store = HiddenStore(pairs_dir / "train"), HiddenStore(pairs_dir / "val")
    train_read = train_read or store_reader(train_store)
    val_read, val_samples = store_reader(val_store), list(range(val_store.num_samples))
    network, rotary, config, adapter = load_network(init_dir, index)
    from .models import resolve_device
    trainer = Trainer(network, rotary, config, adapter, index, s, resolve_device(s.device))

    n_train = min(train_samples or train_store.num_samples, train_store.num_samples)
    micro_per_epoch = math.ceil(n_train / s.batch_size)
    total_micro = max(1, math.ceil(s.epochs * micro_per_epoch))
    total_steps = math.ceil(total_micro / s.gradient_accumulation_step)
    warmup = max(1, round(s.warmup_ratio * total_steps))
    val_every = s.val_every or max(1, total_steps // 10)
    ckpt_every = s.checkpoint_every or val_every

    torch.manual_seed(s.seed)
    decay = [p for p in network.parameters() if p.dim() >= 2]
    no_decay = [p for p in network.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=s.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total_steps, warmup, s.lr, s.min_lr))
    state = {"step": 0, "steps": [], "val": [], "best": None, "best_state": None}

    ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
    fingerprint = {"settings": asdict(s), "init": str(init_dir), "pairs": train_store.attrs["fingerprint"],
                   "val": val_store.attrs["fingerprint"]}
    if ckpt and ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        if saved["fingerprint"] == fingerprint:
            network.load_state_dict(saved["net"])
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
            state = saved["state"]
            torch.set_rng_state(saved["rng"])
            log.info("resumed from %s at optimizer step %d of %d", ckpt, state["step"], total_steps)
        else:
            log.info("checkpoint %s was made with other settings; starting afresh", ckpt)

    log.info("training %s at layer slot %d: %.2fM params, %d train / %d val blocks, %d optimizer steps "
             "(batch %d x accumulation %d, %g epochs), lr %g -> %g, warm-up %d", info["net"], index,
             sum(p.numel() for p in network.parameters()) / 1e6, n_train, len(val_samples), total_steps,
             s.batch_size, s.gradient_accumulation_step, s.epochs, s.lr, s.min_lr, warmup)
    start = time.time()
    if not state["val"]:
        initial = trainer.validate(val_read, val_samples)
        state["val"].append({"step": 0, "loss": initial})
        state["best"] = initial
        state["best_state"] = copy.deepcopy(network.state_dict())
        log.info("initial validation MSE %.6f", initial)

    def order_of(epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(s.seed + epoch)
        return torch.randperm(n_train, generator=g).tolist()

    micro_order = [(e, n) for e in range(math.ceil(total_micro / micro_per_epoch)) for n in order_of(e)]
    micro_order = [n for _, n in micro_order][: total_micro * s.batch_size]
    first_micro = state["step"] * s.gradient_accumulation_step
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train {info['net']}-mse", unit="step",
               dynamic_ncols=True)
    accum, running = 0, 0.0
    micro_idx = first_micro
    for x, y, mask in batches(train_read, micro_order[first_micro * s.batch_size:], s.batch_size, s.prefetch):
        loss = trainer.loss(x, y, mask) / s.gradient_accumulation_step
        loss.backward()
        running += float(loss.detach())
        accum += 1
        micro_idx += 1
        if accum < s.gradient_accumulation_step and micro_idx < total_micro:
            continue
        grad_norm = float(torch.nn.utils.clip_grad_norm_(network.parameters(), s.max_grad_norm))
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        state["step"] += 1
        step = state["step"]
        train_loss = running * s.gradient_accumulation_step / accum
        state["steps"].append({"step": step, "loss": train_loss, "lr": opt.param_groups[0]["lr"],
                               "grad_norm": grad_norm})
        accum, running = 0, 0.0
        if step % val_every == 0 or step == total_steps:
            val = trainer.validate(val_read, val_samples)
            state["val"].append({"step": step, "loss": val})
            if val < state["best"]:
                state["best"], state["best_state"] = val, copy.deepcopy(network.state_dict())
            bar.set_postfix_str(f"loss {train_loss:.4g} val {val:.4g} best {state['best']:.4g}")
        else:
            bar.set_postfix_str(f"loss {train_loss:.4g} lr {opt.param_groups[0]['lr']:.2e}")
        bar.update(1)
        if ckpt and (step % ckpt_every == 0) and step < total_steps:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_name(ckpt.name + ".partial")
            torch.save({"fingerprint": fingerprint, "net": network.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "state": state, "rng": torch.get_rng_state()}, tmp)
            tmp.replace(ckpt)
    bar.close()
    seconds = time.time() - start

    initial = state["val"][0]["loss"]
    kept = "best" if state["best"] < initial else "initial"
    if kept == "initial":
        log.warning("validation MSE never improved on the initial %.6f: keeping the initial weights", initial)
    best_step = min(state["val"], key=lambda v: v["loss"])["step"]
    result = {"net": info["net"], "loss": "mse", "index": index, "settings": asdict(s), "total_steps": total_steps,
              "warmup_steps": warmup, "train_samples": n_train, "val_samples": len(val_samples),
              "steps": state["steps"], "val": state["val"], "initial_val_loss": initial,
              "best_val_loss": state["best"], "best_step": best_step, "kept": kept, "seconds": round(seconds, 2),
              "validation_seconds": round(trainer.val_seconds, 2),
              "samples_per_second": round((total_micro - first_micro) * s.batch_size
                                          / max(seconds - trainer.val_seconds, 1e-9), 2)}
    log.info("trained in %.1f s: validation MSE %.6f -> %.6f (best at step %d, kept %s)", seconds, initial,
             state["best"], best_step, kept)
    if export:
        export_model(init_dir, out_dir, state["best_state"], index, info, result)
    atomic_write_json(log_json, result)
    if ckpt and ckpt.exists():
        ckpt.unlink()  # done: the exported model and log replace it
    return result


def export_model(init_dir: Path, out_dir: Path, net_state: dict, index: int, info: dict, result: dict) -> None:
    """The init model with slot `index` holding the trained weights, in the model's own dtype."""
    model = load_pruned(init_dir, dtype=TORCH_DTYPES[info["dtype"]])
    adapter = get_adapter(model.config.model_type)
    adapter.layers(model)[index].load_state_dict(net_state)
    s = result["settings"]
    training = {"train blocks": result["train_samples"], "optimizer steps": result["total_steps"],
                "batch × accumulation": f"{s['batch_size']} × {s['gradient_accumulation_step']}",
                "lr": f"{s['lr']:g} → {s['min_lr']:g} (cosine, warm-up {result['warmup_steps']})",
                "weight decay": s["wd"], "epochs": s["epochs"],
                "validation MSE": f"{result['initial_val_loss']:.5g} → {result['best_val_loss']:.5g} "
                                  f"(kept {result['kept']})"}
    save_pruned(model, adapter, out_dir, init_dir, {**info, "loss": "mse", "training": training,
                                                    "final_val_loss": result["best_val_loss"]})
