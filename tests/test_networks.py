"""networks.py on its own: each custom network, its identity start, its spec, and the model class that holds it."""

import pytest
import torch
from transformers import LlamaForCausalLM

from streamline.networks import NETWORKS, build_network, with_network

SPECS = {
    "ffn": {"net": "ffn", "hidden": 32, "inner": 64, "act": "relu", "norm": "rms", "eps": 1e-6, "bias": True},
    "swiglu": {"net": "swiglu", "hidden": 32, "inner": 64, "norm": "rms", "eps": 1e-6, "bias": False},
}


@pytest.mark.parametrize("net", sorted(NETWORKS))
def test_a_zero_output_projection_makes_the_network_the_identity(net):
    torch.manual_seed(0)
    network = build_network(SPECS[net])
    torch.nn.init.zeros_(network.out_proj.weight)
    if network.out_proj.bias is not None:
        torch.nn.init.zeros_(network.out_proj.bias)
    x = torch.randn(2, 5, 32)
    assert torch.equal(network(x, attention_mask=None, position_ids=None), x)  # a decoder layer's call, kwargs ignored


@pytest.mark.parametrize("net", sorted(NETWORKS))
def test_a_network_is_a_residual_block_that_changes_its_input(net):
    torch.manual_seed(0)
    network = build_network(SPECS[net])
    x = torch.randn(2, 5, 32)
    y = network(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    assert sum(p.numel() for p in network.parameters()) == sum(
        p.numel() for p in build_network(SPECS[net]).parameters()
    )


def test_an_unknown_network_is_refused():
    with pytest.raises(ValueError, match="no custom network 'mlp'"):
        build_network({"net": "mlp"})


def test_the_model_class_holds_the_network_in_its_slot(tiny_llama_dir):
    config = LlamaForCausalLM.from_pretrained(tiny_llama_dir).config
    config.streamline = {"replacement": {**SPECS["swiglu"], "index": 2}}
    model = with_network(LlamaForCausalLM, "model.layers")(config)
    assert type(model.model.layers[2]).__name__ == "ResidualSwiGLU"
    assert type(model.model.layers[1]).__name__ == "LlamaDecoderLayer"
    assert model(torch.tensor([[1, 2, 3, 4]])).logits.shape == (1, 4, config.vocab_size)
