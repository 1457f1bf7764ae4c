"""One export path for every loss: the init model with the network's trained weights, in the model's dtype."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..adapters import get_adapter
from ..artifacts import TrainLog
from ..errors import StreamlineError
from ..model_info import read_info
from ..pruned import TORCH_DTYPES, load_pruned, save_pruned


def training_card(result: TrainLog) -> dict[str, str]:
    """The model card's training rows."""
    s = result.settings
    initial, best = result.initial_val, result.best_val
    rows = {
        "train blocks": f"{result.train_samples} ({result.train_tokens:,} tokens)",
        "optimizer steps": result.total_steps,
        "batch × accumulation × processes": f"{s['batch_size']} × {s['gradient_accumulation_step']} × {result.num_processes}",
        "lr": f"{s['lr']:g} → {s['min_lr']:g} (cosine, warm-up {result.warmup_steps}), "
        f"AdamW betas ({s['adam_beta1']:g}, {s['adam_beta2']:g})",
        "weight decay": s["wd"],
        "epochs": s["epochs"],
        "distributed": f"{result.distributed_type}, mixed precision {result.mixed_precision}",
        "validation": "; ".join(f"{k} {initial[k]:.5g} → {best[k]:.5g}" for k in initial if k != "loss")
        + f" (kept {result.kept}, chosen by {result.select})",
    }
    if result.stage_loss == "mse":
        outliers = (
            f", outliers over {s['mse_outlier_ratio']:g} × the median norm left out"
            if s["mse_loss"] == "robust"
            else ""
        )
        rows["mse"] = f"{s['mse_loss']}{outliers}, skip first {s['skip_first_tokens']} positions"
    if result.stage_loss == "kd":
        rows["kd"] = f"T {s['kd_temperature']:g}, alpha {s['kd_alpha']:g}, top-k {s['kd_top_k'] or 'all'}"
    return rows


def export_model(init_dir: str | Path, out_dir: str | Path, state: dict[str, torch.Tensor], result: TrainLog) -> None:
    """Write the init model with `state`: the network's weights, by their names in the pruned model, or a linear
    patch ("<projection>.delta", streamline/patch.py) to fold into that projection."""
    from ..patch import fold_patches

    info = read_info(init_dir)
    model = load_pruned(init_dir, dtype=TORCH_DTYPES[info.dtype])
    state = fold_patches(model, state)
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise StreamlineError(f"{init_dir}: trained weights {unknown[:3]} are not in the model")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    adapter = get_adapter(model.config.model_type)
    save_pruned(
        model,
        adapter,
        out_dir,
        init_dir,
        replace(info, loss=result.loss, training=training_card(result), final_val=result.best_val),
    )
