"""Adapters: standalone layer calls, raw-output capture and layer removal match the model itself."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from streamline.adapters import get_adapter, run_with_capture
from streamline.errors import StreamlineError


def load(path, attn):
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn).eval()


def batch(pad: bool):
    torch.manual_seed(1)
    ids = torch.randint(4, 200, (2, 12))
    mask = torch.ones_like(ids)
    if pad:
        mask[1, 8:] = 0  # right padding on the second sample
        ids[1, 8:] = 3
    return ids, mask


def captured(model, ids, mask, last=None):
    adapter = get_adapter(model.config.model_type)
    hs = {}
    run_with_capture(adapter, model, ids, mask, lambda k, h: hs.__setitem__(k, h.clone()), last=last)
    return hs


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("family", ["llama", "opt"])
def test_standalone_layer_equals_model_forward(family, pad, attn, tiny_llama_dir, tiny_opt_dir):
    model = load(tiny_llama_dir if family == "llama" else tiny_opt_dir, attn)
    adapter = get_adapter(model.config.model_type)
    ids, mask = batch(pad)
    hs = captured(model, ids, mask)
    n = len(adapter.layers(model))
    assert sorted(hs) == list(range(n + 1))
    with torch.no_grad():
        for k in range(n):
            out = adapter.run_layer(model, k, hs[k], mask)
            valid = mask.bool()
            # Exact equality on real tokens; padded positions are never scored.
            assert torch.equal(out[valid], hs[k + 1][valid]), f"layer {k} differs"


def test_capture_is_raw_not_final_normed(tiny_llama_dir):
    model = load(tiny_llama_dir, "sdpa")
    ids, mask = batch(False)
    hs = captured(model, ids, mask)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    last = len(hs) - 1
    assert torch.allclose(model.model.norm(hs[last]), out.hidden_states[-1], atol=1e-6)
    assert not torch.allclose(hs[last], out.hidden_states[-1], atol=1e-3)
    assert torch.equal(hs[0], out.hidden_states[0])


def test_capture_stops_early(tiny_llama_dir):
    model = load(tiny_llama_dir, "sdpa")
    ran = []
    adapter = get_adapter("llama")
    handles = [
        layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(adapter.layers(model))
    ]
    ids, mask = batch(False)
    hs = captured(model, ids, mask, last=3)
    for h in handles:
        h.remove()
    assert sorted(hs) == [0, 1, 2, 3]
    assert ran == [0, 1, 2]


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_remove_layers_matches_skipping(family, tiny_llama_dir, tiny_opt_dir, tmp_path):
    path = tiny_llama_dir if family == "llama" else tiny_opt_dir
    model = load(path, "eager")
    adapter = get_adapter(model.config.model_type)
    ids, mask = batch(False)
    with torch.no_grad():
        h = captured(model, ids, mask)[0]
        for k in [0, 1, 4, 5]:  # skip layers 2 and 3 by hand
            h = adapter.run_layer(model, k, h, mask)
    adapter.remove_layers(model, [2, 3])
    assert model.config.num_hidden_layers == 4
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    hs = captured(reloaded, ids, mask)
    assert torch.allclose(hs[4], h, atol=1e-5)
    assert reloaded.generate(ids[:1, :4], max_new_tokens=3, do_sample=False).shape[1] == 7


def test_qwen2_uses_llama_adapter():
    model = AutoModelForCausalLM.from_config(
        Qwen2Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    adapter = get_adapter("qwen2")
    ids = torch.randint(0, 64, (1, 9))
    hs = captured(model, ids, None)
    with torch.no_grad():
        assert torch.equal(adapter.run_layer(model, 1, hs[1], None), hs[2])
    adapter.remove_layers(model, [1])
    assert len(model.config.layer_types) == 2


def test_unknown_architecture_is_one_line():
    with pytest.raises(StreamlineError, match=r"architecture 'gpt2' has no adapter \(supported: .*llama.*opt"):
        get_adapter("gpt2")
