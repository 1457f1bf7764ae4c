"""OPT decoders: model.model.decoder.layers, learned positions added before layer 0, no RoPE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Adapter, Sizes

if TYPE_CHECKING:
    pass


class OPTAdapter(Adapter):
    model_types = ("opt",)
    layers_path = "model.decoder.layers"
    mlp_net = "ffn"  # OPT's MLP is fc1 -> ReLU -> fc2 after final_layer_norm

    def sizes(self, config: dict) -> Sizes:
        h, inner, heads = config["hidden_size"], config["ffn_dim"], config["num_attention_heads"]
        bias = bool(config.get("enable_bias", True))
        layer = 4 * h * h + 2 * h * inner + (4 * h + inner + h) * bias + 4 * h  # attention, fc1/fc2, two layer norms
        vocab, proj = config["vocab_size"], config.get("word_embed_proj_dim") or h
        positions = (config["max_position_embeddings"] + 2) * h  # OPT's learned positions are offset by 2
        final_norm = 2 * h if config.get("do_layer_norm_before", True) else 0
        other = positions + final_norm + (2 * proj * h if proj != h else 0)
        return Sizes(
            layers=config["num_hidden_layers"],
            hidden=h,
            inner=inner,
            heads=heads,
            kv_heads=heads,
            head_dim=h // heads,
            vocab=vocab,
            layer_params=layer,
            embed_params=vocab * proj,
            head_params=0 if config.get("tie_word_embeddings", True) else vocab * proj,
            other_params=other,
        )

    def network_spec(self, config, net: str) -> dict:
        return {
            "net": net,
            "hidden": config.hidden_size,
            "inner": config.ffn_dim,
            "act": config.activation_function,
            "norm": "layer",
            "eps": 1e-5,
            "bias": bool(getattr(config, "enable_bias", True)),
        }

    def copy_mlp(self, layer, network) -> None:
        network.norm.load_state_dict(layer.final_layer_norm.state_dict())
        network.up.load_state_dict(layer.fc1.state_dict())
        network.down.load_state_dict(layer.fc2.state_dict())

    def mlp_sublayer(self, layer):
        from ..errors import StreamlineError

        if not layer.do_layer_norm_before:  # OPT-350m: the norm comes after the residual sum
            raise StreamlineError("network: 'linear' needs a pre-norm layer; this OPT model normalises after the MLP")
        return layer.final_layer_norm, layer.fc2

    def mlp_out_proj(self, layer):
        return layer.fc2

    def head(self, model, hidden):
        decoder = model.model.decoder
        if decoder.final_layer_norm is not None:  # None for post-norm OPT-350m
            hidden = decoder.final_layer_norm(hidden)
        if decoder.project_out is not None:
            hidden = decoder.project_out(hidden)
        return model.lm_head(hidden)

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
