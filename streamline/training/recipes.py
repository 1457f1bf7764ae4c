"""Training the replacement network: one recipe per loss, on one shared core.

A recipe is a data source and a loss on the ReplacedModel:

    loss   trains on                                   validates on (the first one picks the kept state)
    mse    pairs (h_b, h_b+n+k) from a pair store,     ce (next-token loss) on val blocks, mse on val pairs
           or computed online from token blocks
    llm    token blocks                                ce
    kd     token blocks, teacher = the original model  kl (to the original), ce

Adding a loss means adding its function to losses.py and a branch to `build_recipe` below.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..errors import StreamlineError
from ..atomic import atomic_write_json, read_json
from .core import Recipe, fit
from .replacement import Replacement
from .settings import LOSSES, TrainSettings

MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}  # model dtype -> accelerate


def build_recipe(loss: str, init_dir: str | Path, s: TrainSettings, *, data_dir: str | Path,
                 pairs_dir: str | Path | None = None, teacher_dir: str | Path | None = None) -> Recipe:
    from ..loading import load_config, load_layers
    from ..pruned import load_pruned
    from ..store import TORCH_DTYPES, store_dir
    from . import losses
    from .model import ReplacedModel
    from .sources import PairSamples, TokenSamples

    if loss not in LOSSES:
        raise StreamlineError(f"loss: unknown loss '{loss}' (allowed: {', '.join(LOSSES)})")
    r = Replacement.read(init_dir)
    r.require_trainable(loss)
    online = loss == "mse" and pairs_dir is None
    val_blocks = TokenSamples(data_dir, "val")
    inputs = {"init": str(Path(init_dir).resolve()), "data": val_blocks.fingerprint}
    if loss == "mse":
        objective = partial(losses.mse, kind=s.mse_loss, skip_first_tokens=s.skip_first_tokens,
                            outlier_ratio=s.mse_outlier_ratio)
        if online:
            train, val_pairs = TokenSamples(data_dir, "train", s.train_samples), val_blocks
        else:
            train = PairSamples(store_dir(pairs_dir, "train"), s.train_samples)
            val_pairs = PairSamples(store_dir(pairs_dir, "val"))
            inputs["pairs"] = [train.fingerprint, val_pairs.fingerprint]
        # held-out next-token loss picks the kept state: the MSE can fall while the model gets worse
        validation, select = {"ce": (losses.ce, val_blocks), "mse": (objective, val_pairs)}, "ce"
    elif loss == "llm":
        objective, train = losses.ce, TokenSamples(data_dir, "train", s.train_samples)
        validation, select = {"ce": (losses.ce, val_blocks)}, "ce"
    else:
        objective = partial(losses.kd, temperature=s.kd_temperature, alpha=s.kd_alpha, top_k=s.kd_top_k)
        train = TokenSamples(data_dir, "train", s.train_samples)
        validation, select = {"kl": (losses.kl, val_blocks), "ce": (losses.ce, val_blocks)}, "kl"
    if isinstance(train, TokenSamples):
        inputs["train"] = train.fingerprint
    teacher_layers = teacher_config = None
    if loss == "kd" or online:
        teacher_dir = teacher_dir or r.source_model
        teacher_config = load_config(teacher_dir)
        teacher_layers = load_layers(teacher_dir, r.block, r.dtype)
        inputs["teacher"] = str(Path(teacher_dir).resolve())
    model = load_pruned(init_dir, dtype=TORCH_DTYPES[r.dtype])
    model.config.use_cache = False
    module = ReplacedModel(model, r, objective, teacher_layers, teacher_config)
    return Recipe(loss, module, train, objective, validation, select, inputs)


def train(loss: str, init_dir: str | Path, out_dir: str | Path, log_json: str | Path, settings: TrainSettings, *,
          data_dir: str | Path, pairs_dir: str | Path | None = None, teacher_dir: str | Path | None = None,
          checkpoint_dir: str | Path | None = None) -> dict:
    """Train the network of `init_dir` with `loss`; export the kept state to `out_dir`, the log to `log_json`.

    `init_dir` may itself be a trained model (staged training, e.g. MSE then distillation): the log and
    the model card then name the loss `{earlier}+{loss}`.
    """
    from .export import export_model

    recipe = build_recipe(loss, init_dir, settings, data_dir=data_dir, pairs_dir=pairs_dir, teacher_dir=teacher_dir)
    earlier = read_json(Path(init_dir) / "streamline.json").get("loss")
    recipe.loss = f"{earlier}+{loss}" if earlier else loss

    def finish(result: dict, state: dict) -> None:
        export_model(init_dir, out_dir, state, result)
        atomic_write_json(log_json, result)

    return fit(recipe, settings, finish, checkpoint_dir=checkpoint_dir,
               mixed_precision=mixed_precision(loss, recipe.module.replacement.dtype))


def mixed_precision(loss: str, dtype: str) -> str | None:
    """MSE trains the network alone in fp32 ("no"). The whole-model losses of a bf16 (fp16) model always run
    under bf16 (fp16) autocast; for an fp32 model the launch decides (the workflow passes "no")."""
    import os
    if loss == "mse":
        return "no"
    wanted = MIXED_PRECISION[dtype]
    return wanted if wanted != "no" and os.environ.get("ACCELERATE_MIXED_PRECISION", "no") == "no" else None
