"""Training settings: one dataclass, from which `streamline train`'s flags and the workflow's flags are made.

Each field names its config key; where the schema (streamline/config.schema.yaml) gives that key a
default, the field's default IS the schema's, read from it, so the CLI and the workflow cannot drift apart.
Keys the config must set (lr, batch_size, ...: the reference's names) have no schema default; their CLI
default is the paper's value here. Kept free of torch so that `streamline --help` stays instant.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields

from ..errors import StreamlineError
from ..layout import LOSSES, WHOLE_MODEL_LOSSES  # the names (re-exported); layout.LOSS_TABLE and recipes.RECIPES

#                                                  hold what each loss is
from ..schema import schema_default

MSE_LOSSES = ("plain", "robust", "normalized", "cosine")


def _opt(
    help: str, *, key: str | None = None, default=MISSING, choices=None, check=None, losses=LOSSES, rerun: bool = True
):
    """A setting. `key`: its config key (default from the schema when it has one); `losses`: the losses it
    applies to; `rerun`: whether the workflow passes it as a flag (a change then reruns training)."""
    from_schema = schema_default(key) if key else MISSING
    if (from_schema is MISSING) == (default is MISSING):
        raise AssertionError(f"{key}: give a default here or in the schema, not both")  # a programming error
    return field(
        default=default if from_schema is MISSING else from_schema,
        metadata={"help": help, "choices": choices, "check": check, "key": key, "losses": losses, "rerun": rerun},
    )


def _positive(x) -> bool:
    return x > 0


def _non_negative(x) -> bool:
    return x >= 0


@dataclass
class TrainSettings:
    batch_size: int = _opt("blocks per micro-batch (per process)", key="batch_size", default=8, check=_positive)
    gradient_accumulation_step: int = _opt(
        "micro-batches per optimizer step", key="gradient_accumulation_step", default=16, check=_positive
    )
    epochs: float = _opt(
        "passes over the training blocks (fractions allowed)", key="epochs", default=1.0, check=_positive
    )
    lr: float = _opt("peak learning rate", key="lr", default=2e-4, check=_positive)
    min_lr: float = _opt(
        "learning rate at the end of the cosine decay", key="min_lr", default=5e-5, check=_non_negative
    )
    wd: float = _opt("AdamW weight decay (matrices only)", key="wd", default=1e-3, check=_non_negative)
    adam_beta1: float = _opt("AdamW beta1", key="adam_beta1", check=lambda x: 0 <= x < 1)
    adam_beta2: float = _opt("AdamW beta2 (the reference uses 0.95)", key="adam_beta2", check=lambda x: 0 <= x < 1)
    seed: int = _opt("seed of the data order", key="seed", default=42, check=_non_negative)
    warmup_ratio: float = _opt(
        "fraction of optimizer steps of linear warm-up", key="train.warmup_ratio", check=lambda x: 0 <= x <= 1
    )
    max_grad_norm: float = _opt("gradient clipping", key="train.max_grad_norm", check=_positive)
    val_every: int = _opt(
        "optimizer steps between validations; 0 = about ten per run", key="train.val_every", check=_non_negative
    )
    checkpoint_every: int = _opt(
        "optimizer steps between checkpoints; 0 = at every validation",
        key="train.checkpoint_every",
        check=_non_negative,
        rerun=False,
    )
    device: str = _opt(
        "single-process device (auto, cpu, cuda, mps); launched runs take it from accelerate",
        key="train.device",
        rerun=False,
    )
    prefetch: int = _opt("micro-batches read ahead", default=4, check=_positive)
    # mse
    mse_loss: str = _opt(
        "mse: robust (outlier positions left out), plain (the paper), normalized (relative error "
        "per token) or cosine (direction + log magnitude)",
        key="train.mse_loss",
        choices=MSE_LOSSES,
        losses=("mse",),
    )
    mse_outlier_ratio: float = _opt(
        "mse robust: positions whose target norm exceeds this x the median are left out",
        key="train.mse_outlier_ratio",
        check=lambda x: x > 1,
        losses=("mse",),
    )
    skip_first_tokens: int = _opt(
        "mse: leave the first k positions (the attention sink) out of the loss",
        key="train.skip_first_tokens",
        check=_non_negative,
        losses=("mse",),
    )
    train_samples: int = _opt(
        "train on the first N training blocks only; 0 = all", default=0, check=_non_negative, losses=WHOLE_MODEL_LOSSES
    )
    # kd
    kd_temperature: float = _opt(
        "kd: softmax temperature T of teacher and student", key="kd.temperature", check=_positive, losses=("kd",)
    )
    kd_alpha: float = _opt(
        "kd: weight of the T^2-scaled KL; 1 - alpha weighs the next-token loss",
        key="kd.alpha",
        check=lambda x: 0 <= x <= 1,
        losses=("kd",),
    )
    kd_top_k: int = _opt(
        "kd: distil the teacher's top-k tokens only (0: the full vocabulary)",
        key="kd.top_k",
        check=_non_negative,
        losses=("kd",),
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value, check = getattr(self, f.name), f.metadata.get("check")
            choices = f.metadata.get("choices")
            if check is not None and not check(value):
                raise StreamlineError(f"{f.name}: {value!r} is out of range ({f.metadata['help']})")
            if choices and value not in choices:
                raise StreamlineError(f"{f.name}: {value!r} is not one of {', '.join(choices)}")
            if f.type == "float" and isinstance(value, int):  # YAML's 10 is a float setting's 10.0
                setattr(self, f.name, float(value))
        if self.min_lr > self.lr:
            raise StreamlineError(f"min_lr: {self.min_lr} is above lr {self.lr} (allowed: 0..lr)")

    def as_dict(self) -> dict:
        return asdict(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainSettings field, with its default and help."""
    for f in fields(TrainSettings):
        kind = {"int": int, "float": float, "str": str}[f.type]
        default = kind(f.default)
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=kind,
            default=default,
            choices=f.metadata.get("choices"),
            help=f"{f.metadata['help']} (default: {default})",
        )


def config_value(config: dict, key: str):
    """The value of a dotted config key in a validated config (defaults applied)."""
    for part in key.split("."):
        config = config[part]
    return config


def train_budget(config: dict, loss: str) -> int:
    """The training blocks a one-block run of `loss` trains on: the whole-model losses' first
    llm.max_train_samples (at most every block), MSE's every block (its pair store holds train_num_data pairs).
    Pruning in rounds splits it."""
    blocks = config["train_num_data"]
    return min(config["llm"]["max_train_samples"] or blocks, blocks) if loss in WHOLE_MODEL_LOSSES else blocks


def workflow_flags(config: dict, loss: str, train_samples: int | None = None) -> list[str]:
    """`streamline train` flags from a validated config: every setting of `loss` that changes the trained weights
    (the workflow passes them as params, so a change reruns training). `train_samples`: a round's share of the
    training blocks (prune.rounds), for every loss."""
    flags = []
    for f in fields(TrainSettings):
        if f.name == "train_samples" and train_samples is not None:
            flags += ["--train-samples", str(train_samples)]
            continue
        if loss not in f.metadata["losses"] or not f.metadata["rerun"]:
            continue
        if f.name == "train_samples":  # the whole-model losses' token budget (MSE trains on all stored pairs)
            value = config["llm"]["max_train_samples"] or config["train_num_data"]
        elif f.metadata["key"]:
            value = config_value(config, f.metadata["key"])
        else:
            continue
        flags += ["--" + f.name.replace("_", "-"), str(value)]
    return flags


def settings_from(args: argparse.Namespace) -> TrainSettings:
    return TrainSettings(**{f.name: getattr(args, f.name) for f in fields(TrainSettings)})
