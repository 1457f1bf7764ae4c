"""Training settings: one dataclass, from which `streamline train`'s flags and their defaults are made.

Kept free of torch so that `streamline --help` stays instant. The config keys (config.yaml, the schema)
keep the reference's names; the workflow passes each of them to the matching flag here.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields

from ..errors import StreamlineError

LOSSES = ("mse", "llm", "kd")
MSE_LOSSES = ("plain", "robust", "normalized", "cosine")


def _opt(default, help: str, choices=None, check=None):
    return field(default=default, metadata={"help": help, "choices": choices, "check": check})


def _positive(x) -> bool:
    return x > 0


def _non_negative(x) -> bool:
    return x >= 0


@dataclass
class TrainSettings:
    batch_size: int = _opt(8, "blocks per micro-batch (per process)", check=_positive)
    gradient_accumulation_step: int = _opt(16, "micro-batches per optimizer step", check=_positive)
    epochs: float = _opt(1.0, "passes over the training blocks (fractions allowed)", check=_positive)
    lr: float = _opt(2e-4, "peak learning rate", check=_positive)
    min_lr: float = _opt(5e-5, "learning rate at the end of the cosine decay", check=_non_negative)
    wd: float = _opt(1e-3, "AdamW weight decay (matrices only)", check=_non_negative)
    adam_beta1: float = _opt(0.9, "AdamW beta1", check=lambda x: 0 <= x < 1)
    adam_beta2: float = _opt(0.999, "AdamW beta2 (the reference uses 0.95)", check=lambda x: 0 <= x < 1)
    warmup_ratio: float = _opt(0.03, "fraction of optimizer steps of linear warm-up", check=lambda x: 0 <= x <= 1)
    max_grad_norm: float = _opt(1.0, "gradient clipping", check=_positive)
    val_every: int = _opt(0, "optimizer steps between validations; 0 = about ten per run", check=_non_negative)
    checkpoint_every: int = _opt(0, "optimizer steps between checkpoints; 0 = at every validation",
                                 check=_non_negative)
    train_samples: int = _opt(0, "train on the first N training blocks only; 0 = all", check=_non_negative)
    seed: int = _opt(42, "seed of the data order", check=_non_negative)
    device: str = _opt("auto", "single-process device (auto, cpu, cuda, mps); launched runs take it from accelerate")
    prefetch: int = _opt(4, "micro-batches read ahead", check=_positive)
    # mse
    # robust is the default: it heals at the paper's settings where plain MSE makes the model worse (README)
    mse_loss: str = _opt("robust", "mse: robust (outlier positions left out), plain (the paper), normalized "
                                  "(relative error per token) or cosine (direction + log magnitude)", choices=MSE_LOSSES)
    mse_outlier_ratio: float = _opt(10.0, "mse robust: positions whose target norm exceeds this x the median are "
                                          "left out", check=lambda x: x > 1)
    skip_first_tokens: int = _opt(0, "mse: leave the first k positions (the attention sink) out of the loss",
                                  check=_non_negative)
    # kd
    kd_temperature: float = _opt(1.0, "kd: softmax temperature T of teacher and student", check=_positive)
    kd_alpha: float = _opt(1.0, "kd: weight of the T^2-scaled KL; 1 - alpha weighs the next-token loss",
                           check=lambda x: 0 <= x <= 1)
    kd_top_k: int = _opt(0, "kd: distil the teacher's top-k tokens only (0: the full vocabulary)",
                         check=_non_negative)

    def __post_init__(self) -> None:
        for f in fields(self):
            value, check = getattr(self, f.name), f.metadata.get("check")
            choices = f.metadata.get("choices")
            if check is not None and not check(value):
                raise StreamlineError(f"{f.name}: {value!r} is out of range ({f.metadata['help']})")
            if choices and value not in choices:
                raise StreamlineError(f"{f.name}: {value!r} is not one of {', '.join(choices)}")
        if self.min_lr > self.lr:
            raise StreamlineError(f"min_lr: {self.min_lr} is above lr {self.lr} (allowed: 0..lr)")

    def as_dict(self) -> dict:
        return asdict(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainSettings field, with its default and help."""
    for f in fields(TrainSettings):
        default = f.default if f.default is not MISSING else None
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(default), default=default,
                            choices=f.metadata.get("choices"), help=f"{f.metadata['help']} (default: {default})")


def settings_from(args: argparse.Namespace) -> TrainSettings:
    return TrainSettings(**{f.name: getattr(args, f.name) for f in fields(TrainSettings)})
