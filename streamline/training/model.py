"""The replaced model as training sees it: a frozen prefix, the network, a frozen suffix, and a teacher.

    input -> prefix (layers 0..b-1) -> h_b -> network (slots b..b+k-1) -> suffix (the rest, head) -> logits
                                         \\-> teacher (the original block, layers b..b+n+k-1) -> h_{b+n+k}

The prefix and the suffix are the pruned model's own frozen layers, so the teacher path (the ORIGINAL
model, for distillation or online MSE targets) shares them: the extra memory is the original block's
layers only, never a second model. Every loss is a function of this module and a batch, run by its
forward, so DDP and DeepSpeed see one module whose forward does the whole computation.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..adapters import Adapter, get_adapter, run_with_capture
from ..errors import StreamlineError
from .replacement import Replacement


class Stack:
    """Decoder layers called one after another on hidden states, exactly as their model calls them.

    Not a Module: it only refers to layers owned elsewhere, so no parameter is registered twice
    (a state dict would otherwise hold the frozen suffix again under a second name).
    """

    def __init__(self, layers: list[nn.Module], indices: list[int], config, adapter: Adapter, rotary: nn.Module | None):
        self.layers = list(layers)
        self.indices = indices  # the layers' positions in `config`'s numbering (for per-layer attention kinds)
        self.config, self.adapter, self.rotary = config, adapter, rotary

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.layers:
            return hidden
        hidden = hidden.to(next(self.layers[0].parameters()).dtype)
        kwargs: dict[str, dict] = {}  # mask and rotary embeddings, computed once per kind of layer
        for layer, idx in zip(self.layers, self.indices):
            kind = self.adapter.layer_kind(self.config, idx)
            if kind not in kwargs:
                kwargs[kind] = self.adapter.layer_kwargs(self.config, hidden, attention_mask, idx, self.rotary)
            out = layer(hidden, **kwargs[kind])
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


def trainable_parameter_names(model: nn.Module, slots: list[int]) -> list[str]:
    """Names of exactly the parameters of layer slots `slots` (the network).

    Selected by the exact prefix f"{layers_path}.{slot}." and checked against the slot modules' own
    parameters by identity, so "model.layers.1." never matches model.layers.10..19 (the reference's
    substring test on "layers.1" unfroze those too).
    """
    adapter = get_adapter(model.config.model_type)
    layers = adapter.layers(model)
    if not slots or not all(0 <= s < len(layers) for s in slots):
        raise StreamlineError(f"layer slots {slots} are out of range: the model has {len(layers)} layers")
    prefixes = tuple(f"{adapter.layers_path}.{s}." for s in slots)
    params = dict(model.named_parameters())
    names = [n for n in params if n.startswith(prefixes)]
    if {id(params[n]) for n in names} != {id(p) for s in slots for p in layers[s].parameters()}:
        raise StreamlineError(
            f"parameters under {', '.join(prefixes)} are not those of slots {slots} (shared weights?)"
        )
    if not names:
        raise StreamlineError(f"layer slots {slots} have no parameters to train")
    return names


class ReplacedModel(nn.Module):
    """The pruned model (network trainable, all else frozen) plus, optionally, the original block as teacher."""

    def __init__(
        self,
        model,
        replacement: Replacement,
        objective: Callable,
        teacher_layers: nn.ModuleList | None = None,
        teacher_config=None,
    ):
        super().__init__()
        self.model, self.replacement, self.objective = model, replacement, objective
        self.adapter = adapter = get_adapter(model.config.model_type)
        layers, rotary = adapter.layers(model), adapter.rotary(model)
        r = replacement
        for s in r.slots:  # fp32 master weights for the network whatever the model dtype
            layers[s].float()
        if r.patch:  # linear-{loss}: only a patch on the slot's MLP output projection trains (patch.py)
            from ..patch import PARAM, install

            layer = layers[r.first]
            proj = next(
                f"{adapter.layers_path}.{r.first}.{name}"
                for name, module in layer.named_modules()
                if module is adapter.mlp_out_proj(layer)
            )
            install(model, proj)
            self.trainable = [f"{proj}.{PARAM}"]
        else:
            self.trainable = trainable_parameter_names(model, r.slots)
        for name, p in model.named_parameters():
            p.requires_grad_(name in self.trainable)
        self.network = Stack([layers[s] for s in r.slots], r.slots, model.config, adapter, rotary)
        after = list(range(r.first + r.kept, len(layers)))
        self.suffix = Stack([layers[i] for i in after], after, model.config, adapter, rotary)
        self.teacher, self.teacher_layers = None, teacher_layers  # the original block: owned, so registered here
        if teacher_layers is not None:
            teacher_layers.requires_grad_(False)
            self.teacher = Stack(list(teacher_layers), r.block, teacher_config, adapter, rotary)

    def forward(self, **batch) -> dict[str, torch.Tensor]:
        return self.objective(self, batch)

    # --- the paths -----------------------------------------------------------------------------------
    def prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """h_b, the input of the block, from the frozen layers 0..b-1 (no graph is kept)."""
        states = {}
        run_with_capture(
            self.adapter,
            self.model,
            input_ids,
            attention_mask,
            lambda k, h: states.__setitem__(k, h),
            last=self.replacement.first,
            inference=False,
        )
        return states[self.replacement.first]

    def logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits from the block's output: the frozen layers after the block, then the head."""
        return self.head(self.suffix(hidden, attention_mask))

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits from the last layer's raw output: the final norm (and projection), then the LM head."""
        return self.adapter.head(self.model, hidden.to(self.model.dtype)).float()

    def target(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """h_{b+n+k} of the ORIGINAL model: the teacher's block on h_b (no graph)."""
        if self.teacher is None:
            raise StreamlineError("this loss needs the original block: load the model with a teacher")
        with torch.no_grad():
            return self.teacher(hidden, attention_mask)

    @property
    def dtype(self) -> torch.dtype:
        """The model's own dtype: what the export writes the network's weights in."""
        from ..pruned import TORCH_DTYPES

        return TORCH_DTYPES[self.replacement.dtype]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Copies of the network's weights in the model's dtype, by their names in the pruned model: exact for the
        initial weights (read in that dtype), and the rounding the export would apply to the fp32 master weights,
        so a bf16 model's kept states take half the memory of fp32 copies."""
        params = dict(self.model.named_parameters())
        return {n: params[n].detach().to(dtype=self.dtype, device="cpu", copy=True) for n in self.trainable}
