"""Readers of the JSON artifacts stages hand to each other, each checked before it is used.

A stage never trusts a file another stage wrote: a torn, incomplete or edited artifact is one line that
names it (and is moved aside, so the stage that writes it reruns), never a KeyError deep in a stage.
Kept free of torch: every stage that reads an artifact imports this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .atomic import read_artifact
from .errors import StreamlineError
from .layout import UNTRAINED


def read_scores(path: str | Path, *extra: str) -> dict:
    """A scores.json, checked: n, span, metric and a block of consecutive layers (plus `extra` fields if named)."""
    def check(s: dict) -> str | None:
        block = s["block"]
        ok = block and all(isinstance(i, int) for i in block) and block == list(range(block[0], block[0] + len(block)))
        return None if ok and len(block) == s["span"] else f"naming no valid block ({block})"

    keys = {"n": int, "span": int, "block": list, "metric": str, **{k: (list, int, float, str) for k in extra}}
    return read_artifact(path, "block scores", keys, check=check)


@dataclass(frozen=True)
class ModelInfo:
    """streamline.json of a model dir a stage wrote (replace, linear, train): what was removed, what replaced
    it, how it was trained. Written by `to_json`, read back by `from_json` (every reader: training, export,
    the model card, the report through eval.json), so k means one thing everywhere: the layers kept in the
    block's place, 0 for plain removal (`none`) and the folded map (`linear`)."""
    name: str
    source_model: str
    source_layers: int
    source_params: int
    n: int
    block: list
    net: str
    replacement_layers: int
    metric: str
    dtype: str
    loss: str | None = None          # None until trained; "mse+kd" for a staged run
    seed: int | None = None
    training: dict | None = None     # the model card's training rows
    final_val: dict | None = None
    params: int | None = None        # set when the dir is saved
    num_hidden_layers: int | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict, where: str | Path = "streamline.json") -> "ModelInfo":
        problem = _info_problem(obj)
        if problem:
            raise StreamlineError(f"{where}: {problem}; rebuild the model dir")
        return cls(**{f.name: obj[f.name] for f in fields(cls) if f.name in obj})


_REQUIRED = {"name": str, "source_model": str, "source_layers": int, "source_params": int, "n": int, "block": list,
             "net": str, "replacement_layers": int, "metric": str, "dtype": str}


def _info_problem(obj: dict) -> str | None:
    for key, kind in _REQUIRED.items():
        if not isinstance(obj.get(key), kind) or isinstance(obj.get(key), bool):
            return f"incomplete (no valid '{key}')"
    k, net = obj["replacement_layers"], obj["net"]
    if (k == 0) != (net in UNTRAINED) or k < 0 or (k > 1 and net != "transformer"):
        return f"incomplete (network {net} with {k} kept layers)"
    return None


def read_info(model_dir: str | Path) -> ModelInfo:
    """A pruned model dir's streamline.json, checked against the dir's record first: a torn or incomplete one
    moves the dir aside (its stage reruns) with one line."""
    from .weights import verify
    verify(model_dir)
    obj = read_artifact(Path(model_dir) / "streamline.json", "model dir's streamline.json", _REQUIRED,
                        aside=model_dir, check=_info_problem)
    return ModelInfo.from_json(obj, Path(model_dir) / "streamline.json")
