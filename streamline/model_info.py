"""streamline.json, the record a pruned model dir carries of how it was made: every stage that loads or
writes a model dir uses it, so it sits apart from the other artifacts (editing those never reruns a stage
that only loads models, such as the calibration extraction)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .layout import NETS, allowed_k
from .records import Count, Record


@dataclass(frozen=True)
class ModelInfo(Record):
    """streamline.json of a model dir a stage wrote (replace, linear, train): what was removed, what replaced
    it, how it was trained. k (`replacement_layers`) means one thing everywhere: the layers kept in the
    block's place, 0 for plain removal (`none`) and the folded map (`linear`)."""

    name: str
    source_model: str
    source_layers: Count
    source_params: Count
    n: Count
    block: list[Count]
    net: str
    replacement_layers: Count
    metric: str
    dtype: str
    loss: str | None = None  # None until trained; "mse+kd" for a staged run
    seed: int | None = None
    training: dict[str, Any] | None = None  # the model card's training rows
    final_val: dict[str, float] | None = None
    params: Count | None = None  # set when the dir is saved
    num_hidden_layers: Count | None = None

    def __post_init__(self) -> None:
        k, net = self.replacement_layers, self.net
        if net not in NETS:
            raise ValueError(f"unknown network {net!r} (known: {', '.join(NETS)})")
        if not allowed_k(net, k):
            raise ValueError(f"network {net} with {k} kept layers")
        if not self.block or self.block != list(range(self.block[0], self.block[0] + len(self.block))):
            raise ValueError(f"block {self.block} is not a run of consecutive layers")


def read_info(model_dir: str | Path) -> ModelInfo:
    """A pruned model dir's streamline.json, checked against the dir's record first: a torn or incomplete one
    moves the dir aside (its stage reruns) with one line."""
    from .weights import verify

    verify(model_dir)
    return ModelInfo.load(Path(model_dir) / "streamline.json", "model dir's streamline.json", aside=model_dir)
