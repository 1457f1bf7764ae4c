"""The Replacement record: what replace.py did to the model, read once from the init dir's streamline.json.

In the ORIGINAL model's numbering, a replacement spans the layers `block` = first..first+span-1. Of
those, the first `kept` layers stay (they are the trainable network: k transformer layers, or one
custom net in slot `first`), and the other span - kept layers are gone. In the PRUNED model the
network sits in slots first..first+kept-1 of the layer list. Training maps h_first to h_{first+span}
(the hidden state after the block, in the original numbering).

    transformer, k layers    span = n + k, kept = k
    ffn / swiglu             span = n + 1, kept = 1 (one custom network)
    none / linear            span = n,     kept = 0 (nothing to train)

A `linear` init dir trained by a loss (linear-{loss}, streamline/patch.py) is read as the block of n + 1 layers from
i-1 (the layer whose MLP output the folded map acts on), kept = 1, `patch` set: layer i-1 stays, and only the
patch on its MLP output projection trains, toward h_{i+n}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import StreamlineError
from ..layout import NETWORKS
from ..model_info import read_info

TRAINABLE_NETS = tuple(n for n, net in NETWORKS.items() if net.trained)


@dataclass(frozen=True)
class Replacement:
    first: int  # b: first layer of the block, original numbering
    span: int  # layers of the original model the block covers
    kept: int  # network slots in the pruned model (0: nothing to train)
    n: int  # layers removed net (layer_intervals)
    net: str
    source_model: str  # the original model dir
    source_layers: int
    dtype: str
    patch: bool = False  # the network is a patch on slot `first`'s MLP output projection, not its weights

    @property
    def block(self) -> list[int]:
        return list(range(self.first, self.first + self.span))

    @property
    def slots(self) -> list[int]:
        """Layer indices of the network in the pruned model."""
        return list(range(self.first, self.first + self.kept))

    @property
    def target(self) -> int:
        """Index of the hidden state the network must reproduce: h_{first+span} of the original model."""
        return self.first + self.span

    @classmethod
    def read(cls, model_dir: str | Path) -> "Replacement":
        path = Path(model_dir) / "streamline.json"
        if not path.is_file():
            raise StreamlineError(f"{model_dir}: no streamline.json (not a model dir written by `streamline replace`)")
        info = read_info(model_dir)
        if NETWORKS[info.net].patch:  # the map on layer i-1's MLP output: that layer's slot holds the patch
            return cls(
                first=info.block[0] - 1,
                span=len(info.block) + 1,
                kept=1,
                n=info.n,
                net=info.net,
                source_model=info.source_model,
                source_layers=info.source_layers,
                dtype=info.dtype,
                patch=True,
            )
        return cls(
            first=info.block[0],
            span=len(info.block),
            kept=info.replacement_layers,
            n=info.n,
            net=info.net,
            source_model=info.source_model,
            source_layers=info.source_layers,
            dtype=info.dtype,
        )

    def require_trainable(self, loss: str) -> None:
        if self.kept == 0:
            raise StreamlineError(f"loss: '{loss}' needs a network to train; network '{self.net}' has none")
