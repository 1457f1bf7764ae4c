"""Command-line flags shared by `streamline train` (MSE) and `streamline train-llm` (LLM loss).

Kept free of torch so that `streamline --help` stays instant.
"""

from __future__ import annotations

import argparse


def add_train_arguments(p: argparse.ArgumentParser, source_flag: str, source_help: str) -> None:
    p.add_argument("--init", required=True, help="the replaced, untrained model dir")
    p.add_argument(source_flag, required=True, help=source_help)
    p.add_argument("--out", required=True, help="output model dir")
    p.add_argument("--log-json", required=True)
    p.add_argument("--checkpoint-dir", help="where checkpoints live while training (enables resume)")
    p.add_argument("--train-samples", type=int, help="use only the first N train blocks")
    p.add_argument("--batch-size", type=int, default=8, help="blocks per micro-batch (per process)")
    p.add_argument("--gradient-accumulation-step", type=int, default=16)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--min-lr", type=float, default=5e-5)
    p.add_argument("--wd", type=float, default=1e-3)
    p.add_argument("--warmup-ratio", type=float, default=0.03)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--val-every", type=int, default=0, help="optimizer steps; 0 = about ten per run")
    p.add_argument("--checkpoint-every", type=int, default=0, help="optimizer steps; 0 = at every validation")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto", help="MSE only; LLM loss takes its devices from accelerate")
    p.add_argument("--skip-first-tokens", type=int, default=0,
                   help="MSE only: leave the first k positions (attention sink) out of the loss")


def settings_from(a: argparse.Namespace):
    from .train_mse import TrainSettings
    return TrainSettings(batch_size=a.batch_size, gradient_accumulation_step=a.gradient_accumulation_step,
                         epochs=a.epochs, lr=a.lr, min_lr=a.min_lr, wd=a.wd, warmup_ratio=a.warmup_ratio,
                         max_grad_norm=a.max_grad_norm, val_every=a.val_every, checkpoint_every=a.checkpoint_every,
                         seed=a.seed, device=a.device, skip_first_tokens=a.skip_first_tokens)
