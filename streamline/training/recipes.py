"""Training the replacement network: one recipe per loss, on one shared core.

A recipe is a data source and a loss on the ReplacedModel:

    loss   trains on                                   validates on (the first one picks the kept state)
    mse    pairs (h_b, h_b+n+k) from a pair store,     ce (next-token loss) on val blocks, mse on val pairs
           or computed online from token blocks
    llm    token blocks                                ce
    kd     token blocks, teacher = the original model  kl (to the original), ce

Adding a loss means adding its function to losses.py and one entry to RECIPES below.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from ..artifacts import TrainLog
from ..errors import StreamlineError
from ..layout import LOSS_TABLE
from ..model_info import read_info
from ..ownership import require_owned
from .core import Recipe, fit
from .replacement import Replacement
from .settings import TrainSettings

MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}  # model dtype -> accelerate


@dataclass(frozen=True)
class LossSpec:
    """A loss as a recipe: its objective and how runs are judged (what it trains on, and whether it needs the
    teacher, are its row in layout.LOSS_TABLE)."""

    objective: Callable[[TrainSettings], Callable]  # the loss function, configured by the settings
    validation: tuple[str, ...]  # metrics on held-out data; the first picks the kept state


def _mse(s: TrainSettings) -> Callable:
    from . import losses

    return partial(
        losses.mse, kind=s.mse_loss, skip_first_tokens=s.skip_first_tokens, outlier_ratio=s.mse_outlier_ratio
    )


def _ce(s: TrainSettings) -> Callable:
    from . import losses

    return losses.ce


def _kd(s: TrainSettings) -> Callable:
    from . import losses

    return partial(losses.kd, temperature=s.kd_temperature, alpha=s.kd_alpha, top_k=s.kd_top_k)


# A new loss is its function in losses.py, one entry here, one row in layout.LOSS_TABLE and its name in the
# schema's `loss` enum (test_schema_agrees checks that they name the same losses).
# A validation metric named after the loss itself is its objective on held-out samples of its own kind; ce and
# kl run the whole pruned model on the val blocks. MSE is judged by ce: the MSE can fall while the model gets worse.
RECIPES: dict[str, LossSpec] = {
    "mse": LossSpec(_mse, ("ce", "mse")),
    "llm": LossSpec(_ce, ("ce",)),
    "kd": LossSpec(_kd, ("kl", "ce")),
}


def build_recipe(
    loss: str,
    init_dir: str | Path,
    s: TrainSettings,
    *,
    data_dir: str | Path,
    pairs_dir: str | Path | None = None,
    teacher_dir: str | Path | None = None,
) -> Recipe:
    from ..loading import load_config, load_layers, model_fingerprint
    from ..pruned import TORCH_DTYPES, load_pruned
    from . import losses
    from .model import ReplacedModel
    from .sources import TokenSamples

    if loss not in RECIPES:
        raise StreamlineError(f"loss: unknown loss '{loss}' (allowed: {', '.join(RECIPES)})")
    spec, row = RECIPES[loss], LOSS_TABLE[loss]
    r = Replacement.read(init_dir)
    r.require_trainable(loss)
    vocab = load_config(init_dir).vocab_size
    val_blocks = TokenSamples(data_dir, "val", vocab_size=vocab)
    _check_settings(loss, s, seq_len=val_blocks.ids.shape[1], vocab=vocab)
    # content, not paths: a moved project resumes its checkpoints, another init never does
    inputs = {"init": model_fingerprint(init_dir), "data": val_blocks.fingerprint}
    objective = spec.objective(s)
    online = row.source == "pairs" and pairs_dir is None  # pairs computed by the frozen prefix and the block
    if row.source == "pairs" and not online:
        train, val_own = _pair_samples(pairs_dir, r, init_dir, s)
        inputs["pairs"] = [train.fingerprint, val_own.fingerprint]
    else:
        train, val_own = TokenSamples(data_dir, "train", s.train_samples, vocab), val_blocks
        inputs["train"] = train.fingerprint
    judges = {"ce": (losses.ce, val_blocks), "kl": (losses.kl, val_blocks), loss: (objective, val_own)}
    validation = {m: judges[m] for m in spec.validation}
    teacher_layers = teacher_config = None
    if row.teacher or online:
        teacher_dir = teacher_dir or r.source_model
        teacher_config = load_config(teacher_dir)
        teacher_layers = load_layers(teacher_dir, r.block, r.dtype)
        inputs["teacher"] = model_fingerprint(teacher_dir)
    model = load_pruned(init_dir, dtype=TORCH_DTYPES[r.dtype])
    model.config.use_cache = False
    module = ReplacedModel(model, r, objective, teacher_layers, teacher_config)
    return Recipe(loss, loss, module, train, objective, validation, next(iter(validation)), inputs)


def _check_settings(loss: str, s: TrainSettings, *, seq_len: int, vocab: int) -> None:
    """Settings that only the data and the model can judge."""
    if loss == "mse" and s.skip_first_tokens >= seq_len:  # every position skipped: a loss of 0 that trains nothing
        raise StreamlineError(
            f"train.skip_first_tokens: {s.skip_first_tokens} leaves no position of a {seq_len}-token "
            f"block in the loss (allowed: 0..{seq_len - 1})"
        )
    if loss == "kd" and s.kd_top_k > vocab:
        raise StreamlineError(f"kd.top_k: {s.kd_top_k} is more than the model's {vocab} tokens (allowed: 0..{vocab})")


def _pair_samples(pairs_dir, r: Replacement, init_dir, s: TrainSettings):
    """The stored pairs (train, val), checked to be those of the init dir's block."""
    from .sources import PairSamples

    train, val = PairSamples(pairs_dir, "train", s.train_samples), PairSamples(pairs_dir, "val")
    for store in (train.store, val.store):  # pairs of another block would train the wrong map
        if store.attrs.get("layers") != [r.first, r.target]:
            raise StreamlineError(
                f"{store.path}: holds h_{store.attrs.get('layers')} but {init_dir} replaces "
                f"layers {r.block[0]}..{r.block[-1]} (needs h_{[r.first, r.target]}); "
                f"extract the pairs of this block"
            )
    return train, val


def train(
    loss: str,
    init_dir: str | Path,
    out_dir: str | Path,
    log_json: str | Path,
    settings: TrainSettings,
    *,
    data_dir: str | Path,
    pairs_dir: str | Path | None = None,
    teacher_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainLog:
    """Train the network of `init_dir` with `loss`; export the kept state to `out_dir`, the log to `log_json`.

    `init_dir` may itself be a trained model (staged training, e.g. MSE then distillation): the log and
    the model card then name the loss `{earlier}+{loss}`.
    """
    from .export import export_model

    require_owned(out_dir, "model directory")  # before hours of training, not at the export
    if checkpoint_dir is not None:
        require_owned(checkpoint_dir, "checkpoint directory")
    recipe = build_recipe(loss, init_dir, settings, data_dir=data_dir, pairs_dir=pairs_dir, teacher_dir=teacher_dir)
    earlier = read_info(init_dir).loss
    recipe.loss = f"{earlier}+{loss}" if earlier else loss

    def finish(result: TrainLog, state: dict) -> None:
        export_model(init_dir, out_dir, state, result)
        result.write(log_json)

    return fit(
        recipe,
        settings,
        finish,
        checkpoint_dir=checkpoint_dir,
        mixed_precision=mixed_precision(loss, recipe.module.replacement.dtype),
    )


def mixed_precision(loss: str, dtype: str) -> str | None:
    """MSE trains the network alone in fp32 ("no"). The whole-model losses of a bf16 (fp16) model always run
    under bf16 (fp16) autocast; for an fp32 model the launch decides (the workflow passes "no")."""
    import os

    if loss == "mse":
        return "no"
    wanted = MIXED_PRECISION[dtype]
    return wanted if wanted != "no" and os.environ.get("ACCELERATE_MIXED_PRECISION", "no") == "no" else None


# --- the command: streamline train --------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .settings import LOSSES
    from .settings import add_arguments as add_settings

    p.add_argument(
        "--loss",
        choices=LOSSES,
        default="mse",
        help="mse: hidden-state pairs; llm: next-token loss; kd: distillation from the original model",
    )
    p.add_argument("--init", required=True, help="the replaced model dir (untrained, or trained by an earlier stage)")
    p.add_argument(
        "--data",
        required=True,
        help="prepared data dir: validation blocks, and training blocks for llm, kd and online mse",
    )
    p.add_argument(
        "--pairs",
        help="mse: the pair store (its manifest, or its dir with train/ and val/); omit to compute the pairs online",
    )
    p.add_argument("--teacher", help="the original model dir (kd, online mse); default: the init dir's source_model")
    p.add_argument("--out", required=True, help="output model dir")
    p.add_argument("--log-json", required=True, help="the train log")
    p.add_argument("--checkpoint-dir", help="where checkpoints live while training (enables resume)")
    add_settings(p)


def run(a: argparse.Namespace) -> None:
    from .settings import settings_from

    train(
        a.loss,
        a.init,
        a.out,
        a.log_json,
        settings_from(a),
        data_dir=a.data,
        pairs_dir=a.pairs,
        teacher_dir=a.teacher,
        checkpoint_dir=a.checkpoint_dir,
    )
