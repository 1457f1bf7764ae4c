"""OPT decoders: model.model.decoder.layers, learned positions added before layer 0, no RoPE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Adapter

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel


class OPTAdapter(Adapter):
    model_types = ("opt",)

    def layers(self, model: PreTrainedModel) -> nn.ModuleList:
        return model.model.decoder.layers

    def set_layers(self, model: PreTrainedModel, layers: nn.ModuleList) -> None:
        model.model.decoder.layers = layers

    def layer_kwargs(self, config, hidden, attention_mask, layer_idx, rotary=None) -> dict:
        import torch
        from transformers.masking_utils import create_causal_mask
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        # OPTDecoder derives positions from the padding mask; mirror it exactly.
        pos = (torch.cumsum(attention_mask, dim=1) * attention_mask - 1).long()
        mask = create_causal_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None)
        return {"attention_mask": mask, "position_ids": pos}


ADAPTER = OPTAdapter()
