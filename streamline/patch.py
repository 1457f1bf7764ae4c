"""The trainable linear patch of `network: linear` with a loss (`linear-mse`, `linear-kd`, `linear-llm`; LinearPatch,
Chen et al., NeurIPS 2025): the folded map, trained.

The `linear` init dir is a plain model whose layer i-1 MLP output projection already holds the estimated map T
(linear.py). Training puts a patch on that projection's output,

    M -> M (I + D),     D (H x H) the only trainable weights, zero at the start,

so the model starts exactly as the estimate, and a loss (by the original block's output, or the model's own next
tokens) moves the map away from it. At export D is folded into the projection (W -> (I + D)^T W, b -> b (I + D)),
in float64: the trained model is again a plain model of its family with L-n layers and no extra parameter,
loadable without remote code and exportable to GGUF; an untrained patch (D = 0) gives the estimate's weights bit
for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import StreamlineError

PARAM = "delta"  # the patch's trainable matrix, by its name under the projection: "<projection path>.delta"


class LinearPatch(nn.Module):
    """A frozen projection followed by the trainable patch I + D on its output."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.delta = nn.Parameter(torch.zeros(base.out_features, base.out_features, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        return out + (out.to(self.delta.dtype) @ self.delta).to(out.dtype)


def install(model: nn.Module, path: str) -> LinearPatch:
    """Put a LinearPatch in place of the projection at `path` (a dotted module path) of `model`."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    base = getattr(parent, attr)
    if not isinstance(base, nn.Linear):
        raise StreamlineError(f"{path}: a linear patch goes on a projection (nn.Linear), found {type(base).__name__}")
    patch = LinearPatch(base)
    setattr(parent, attr, patch)
    return patch


def fold(proj: nn.Linear, delta: torch.Tensor) -> None:
    """Fold I + D into a projection's output (W -> W + D^T W, b -> b + b D), in float64, in place: the same weights
    bit for bit when D is zero."""
    if not torch.isfinite(delta).all():
        raise StreamlineError("linear patch: the trained patch is not finite; lower lr or use dtype: float32")
    with torch.no_grad():
        d = delta.double().to(proj.weight.device)
        w = proj.weight.double()
        proj.weight.copy_((w + d.T @ w).to(proj.weight.dtype))
        if proj.bias is not None:
            b = proj.bias.double()
            proj.bias.copy_((b + b @ d).to(proj.bias.dtype))


def fold_patches(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold every "<projection>.delta" of `state` into that projection of `model`; the rest of `state`."""
    modules = dict(model.named_modules())
    rest = {}
    for name, value in state.items():
        path, _, last = name.rpartition(".")
        if last == PARAM and isinstance(modules.get(path), nn.Linear):
            fold(modules[path], value)
        else:
            rest[name] = value
    return rest
