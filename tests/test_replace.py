"""Replacement: equivalence with skipping layers, custom nets, export that reloads and generates."""

import json

import pytest
import torch
from tiny import write_scores
from transformers import AutoConfig, AutoModelForCausalLM

from streamline.adapters import get_adapter, run_with_capture
from streamline.errors import StreamlineError
from streamline.pruned import load_pruned
from streamline.records import digest
from streamline.replace import replace


def logits_skipping(model_dir, skip, ids):
    """The original model run with the layers in `skip` left out, by hand, layer by layer."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    adapter = get_adapter(model.config.model_type)
    hs = {}
    run_with_capture(adapter, model, ids, None, lambda k, h: hs.__setitem__(k, h), last=0)
    h = hs[0]
    with torch.no_grad():
        for k in range(model.config.num_hidden_layers):
            if k not in skip:
                h = adapter.run_layer(model, k, h)
        final = model.model.norm(h) if model.config.model_type != "opt" else model.model.decoder.final_layer_norm(h)
        return model.lm_head(final)


@pytest.fixture(params=["llama", "opt"])
def model_dir(request, tiny_llama_dir, tiny_opt_dir):
    return tiny_llama_dir if request.param == "llama" else tiny_opt_dir


IDS = torch.randint(4, 250, (2, 10), generator=torch.Generator().manual_seed(0))


def test_none_equals_original_with_layers_skipped(model_dir, tmp_path):
    scores = write_scores(tmp_path / "s.json", n=2, span=2, best=2)
    replace(model_dir, scores, tmp_path / "out", net="none")
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert pruned.config.num_hidden_layers == 4
    with torch.no_grad():
        got = pruned(input_ids=IDS).logits
    assert torch.allclose(got, logits_skipping(model_dir, {2, 3}, IDS), atol=1e-5)


def test_untrained_transformer_equals_original_with_rest_of_block_skipped(model_dir, tmp_path):
    scores = write_scores(tmp_path / "s.json", n=2, span=3, best=1)
    info = replace(model_dir, scores, tmp_path / "out", net="transformer")
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert pruned.config.num_hidden_layers == 4
    with torch.no_grad():
        got = pruned(input_ids=IDS).logits
    assert torch.allclose(got, logits_skipping(model_dir, {2, 3}, IDS), atol=1e-5)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "layers 1..3 (n = 2)" in card and "6 → 4" in card
    meta = json.loads((tmp_path / "out" / "streamline.json").read_text())
    assert (
        meta["params"] < meta["source_params"]
        and info.block == [1, 2, 3]
        and meta == {**info.to_json(), "digest": digest(info.to_json())}
    )


def test_k_kept_layers_equal_the_original_with_the_rest_of_the_block_skipped(model_dir, tmp_path):
    """k = 2: block 1..4 (n = 2): layers 1 and 2 stay, 3 and 4 go; every other tensor is the original's."""
    from safetensors.torch import load_file

    scores = write_scores(tmp_path / "s.json", n=2, span=4, best=1)
    info = replace(model_dir, scores, tmp_path / "out", net="transformer", layers=2)
    assert info.replacement_layers == 2 and info.block == [1, 2, 3, 4]
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert pruned.config.num_hidden_layers == 4
    with torch.no_grad():
        got = pruned(input_ids=IDS).logits
    assert torch.allclose(got, logits_skipping(model_dir, {3, 4}, IDS), atol=1e-5)
    original, after = load_file(model_dir / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    prefix = "model.decoder.layers." if any(k.startswith("model.decoder.") for k in after) else "model.layers."
    renumber = {0: 0, 1: 1, 2: 2, 3: 5}  # pruned layer -> original layer
    for key, value in after.items():
        source = key
        if key.startswith(prefix):
            i, rest = key[len(prefix) :].split(".", 1)
            source = f"{prefix}{renumber[int(i)]}.{rest}"
        assert torch.equal(value, original[source]), key
    assert "layers 1..2 kept" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize(
    "net, layers, message",
    [
        ("ffn", 2, "replacement_layers: 2 is not allowed with network 'ffn'"),
        ("transformer", 0, "replacement_layers: 0 is not allowed"),
        ("transformer", 1, "needs block scores over 3 layers, got scores over 4"),
    ],
)
def test_bad_replacement_layers(tiny_llama_dir, tmp_path, net, layers, message):
    scores = write_scores(tmp_path / "s.json", n=2, span=4, best=1)
    with pytest.raises(StreamlineError, match=message):
        replace(tiny_llama_dir, scores, tmp_path / "out", net=net, layers=layers)


@pytest.mark.parametrize("net", ["ffn", "swiglu"])
def test_custom_nets_load_both_ways_and_generate(model_dir, net, tmp_path):
    scores = write_scores(tmp_path / "s.json", n=2, span=3, best=1)
    replace(model_dir, scores, tmp_path / "out", net=net)
    ours = load_pruned(tmp_path / "out").eval()
    remote = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    assert ours.config.num_hidden_layers == 4
    family = AutoConfig.from_pretrained(model_dir).model_type
    assert remote.config.model_type == f"streamline_{family}" and ours.config.model_type == family
    # Without remote code, transformers must refuse, not build the base family with that layer slot random.
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(ours(input_ids=IDS).logits, remote(input_ids=IDS).logits)
    out = ours.generate(IDS[:1, :4], max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 9)


def test_net_initialised_from_own_mlp_or_identity(tiny_llama_dir, tiny_opt_dir, tmp_path):
    scores = write_scores(tmp_path / "s.json", n=2, span=3, best=1)
    # Llama's MLP is a SwiGLU: swiglu starts as layer 1's MLP; ffn starts as the identity.
    replace(tiny_llama_dir, scores, tmp_path / "sw", net="swiglu")
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    sw = load_pruned(tmp_path / "sw")
    assert torch.equal(sw.model.layers[1].gate_proj.weight, original.model.layers[1].mlp.gate_proj.weight)
    replace(tiny_llama_dir, scores, tmp_path / "ffn", net="ffn")
    ffn = load_pruned(tmp_path / "ffn")
    assert torch.count_nonzero(ffn.model.layers[1].down.weight) == 0
    # OPT's MLP is fc1-ReLU-fc2: ffn starts as layer 1's MLP.
    replace(tiny_opt_dir, scores, tmp_path / "opt", net="ffn")
    opt = load_pruned(tmp_path / "opt")
    orig_opt = AutoModelForCausalLM.from_pretrained(tiny_opt_dir)
    assert torch.equal(opt.model.decoder.layers[1].up.weight, orig_opt.model.decoder.layers[1].fc1.weight)


def test_wrong_scores_for_net(tiny_llama_dir, tmp_path):
    scores = write_scores(tmp_path / "s.json", n=2, span=3, best=1)
    with pytest.raises(StreamlineError, match="network: 'none' with 1 replacement layer.s. needs block scores over 2"):
        replace(tiny_llama_dir, scores, tmp_path / "out", net="none")
    with pytest.raises(StreamlineError, match="network: unknown network 'mlp'"):
        replace(tiny_llama_dir, scores, tmp_path / "out", net="mlp")


def test_model_card_names_the_hub_base_model(tiny_llama_dir, tmp_path):
    """The card's metadata (huggingface_hub.ModelCardData) carries base_model lineage for a hub source."""
    import shutil

    from huggingface_hub import ModelCard

    from streamline.weights import record

    shutil.copytree(tiny_llama_dir, tmp_path / "model")
    record(
        tmp_path / "model", origin="meta-llama/Llama-3.1-8B", base_model="meta-llama/Llama-3.1-8B"
    )  # as download does
    replace(
        tmp_path / "model", write_scores(tmp_path / "s.json", n=2, span=3, best=1), tmp_path / "out", net="transformer"
    )
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model == "meta-llama/Llama-3.1-8B" and "pruned" in card.data.tags
    assert "Layer-pruned from `meta-llama/Llama-3.1-8B`" in card.text
