"""Llama-family decoders: Llama-2, Llama-3, Mistral, Qwen2 (same layout: model.model.layers + RoPE)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Adapter, Sizes

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

    def sizes(self, config: dict) -> Sizes:
        h, inner, heads = config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]
        kv = config.get("num_key_value_heads") or heads
        d = config.get("head_dim") or h // heads
        attn = h * heads * d * 2 + h * kv * d * 2 + (heads * d + 2 * kv * d + h) * bool(config.get("attention_bias"))
        mlp = 3 * h * inner + (2 * inner + h) * bool(config.get("mlp_bias"))
        vocab = config["vocab_size"]
        return Sizes(
            layers=config["num_hidden_layers"],
            hidden=h,
            inner=inner,
            heads=heads,
            kv_heads=kv,
            head_dim=d,
            vocab=vocab,
            layer_params=attn + mlp + 2 * h,
            embed_params=vocab * h,
            head_params=0 if config.get("tie_word_embeddings") else vocab * h,
            other_params=h,
        )

    def network_spec(self, config, net: str) -> dict:
        return {
            "net": net,
            "hidden": config.hidden_size,
            "inner": config.intermediate_size,
            "act": "relu",
            "norm": "rms",
            "eps": config.rms_norm_eps,
            "bias": bool(getattr(config, "mlp_bias", False)) if net == "swiglu" else True,
        }

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
        mask = make_mask(
            config=config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None, position_ids=pos
        )
        return {"attention_mask": mask, "position_embeddings": rotary(hidden, position_ids=pos), "position_ids": pos}


ADAPTER = LlamaAdapter()
