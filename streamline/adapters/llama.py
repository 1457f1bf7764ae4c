"""Llama-family decoders: Llama-2, Llama-3, Mistral, Qwen2 (same layout: model.model.layers + RoPE)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Adapter

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel


def _is_sliding(config: PretrainedConfig, layer_idx: int) -> bool:
    layer_types = getattr(config, "layer_types", None)
    if layer_types:  # Qwen2-style: per-layer attention types
        return layer_types[layer_idx] == "sliding_attention"
    return getattr(config, "sliding_window", None) is not None and config.model_type == "mistral"


class LlamaAdapter(Adapter):
    model_types = ("llama", "mistral", "qwen2")
    layers_path = "model.layers"
    mlp_net = "swiglu"

    def network_spec(self, config, net: str) -> dict:
        return {"net": net, "hidden": config.hidden_size, "inner": config.intermediate_size, "act": "relu",
                "norm": "rms", "eps": config.rms_norm_eps,
                "bias": bool(getattr(config, "mlp_bias", False)) if net == "swiglu" else True}

    def copy_mlp(self, layer, network) -> None:
        network.norm.weight.data.copy_(layer.post_attention_layernorm.weight)
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(network, name).load_state_dict(getattr(layer.mlp, name).state_dict())

    def rotary(self, model: PreTrainedModel) -> nn.Module:
        return model.model.rotary_emb

    def mlp_sublayer(self, layer):
        return layer.post_attention_layernorm, layer.mlp

    def mlp_out_proj(self, layer):
        return layer.mlp.down_proj

    def head(self, model, hidden):
        return model.lm_head(model.model.norm(hidden))

    def layer_kind(self, config, layer_idx: int) -> str:
        return "sliding" if _is_sliding(config, layer_idx) else "full"

    def layer_kwargs(self, config, hidden, attention_mask, layer_idx, rotary=None) -> dict:
        import torch
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
        # Positions are 0..T-1 whatever the padding: that is what LlamaModel.forward uses.
        pos = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        make_mask = create_sliding_window_causal_mask if _is_sliding(config, layer_idx) else create_causal_mask
        # With eager attention a None mask is NOT causal, so always build the mask explicitly.
        mask = make_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None,
                         position_ids=pos)
        return {"attention_mask": mask, "position_embeddings": rotary(hidden, position_ids=pos), "position_ids": pos}


ADAPTER = LlamaAdapter()
