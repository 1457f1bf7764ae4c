"""pruned.py on its own: a model dir with a custom network saves and loads without remote code, loads with it
too (the exported modeling_streamline.py), and refuses to load silently as its base family."""

import pytest
import torch
from tiny import write_scores
from transformers import AutoModelForCausalLM

from streamline.pruned import count_params, load_pruned
from streamline.replace import replace

IDS = torch.tensor([[1, 5, 9, 12, 7, 3]])


@pytest.fixture(scope="module")
def swiglu_dir(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("pruned")
    replace(tiny_llama_dir, write_scores(root / "s.json", n=2, span=3, best=1), root / "swiglu", net="swiglu")
    return root / "swiglu"


def test_a_custom_network_loads_the_same_with_and_without_remote_code(swiglu_dir):
    ours = load_pruned(swiglu_dir)
    theirs = AutoModelForCausalLM.from_pretrained(swiglu_dir, trust_remote_code=True)
    assert type(ours.model.layers[1]).__name__ == type(theirs.model.layers[1]).__name__ == "ResidualSwiGLU"
    with torch.no_grad():
        assert torch.equal(ours(IDS).logits, theirs(IDS).logits)
    assert ours.config.num_hidden_layers == 4


def test_without_remote_code_transformers_refuses_rather_than_builds_the_base_family(swiglu_dir):
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(swiglu_dir, trust_remote_code=False)


def test_tied_weights_count_once():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=50,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    assert count_params(model) == sum(p.numel() for p in model.parameters())  # parameters() already dedupes
    assert count_params(model) < sum(p.numel() for p in model.state_dict().values())
