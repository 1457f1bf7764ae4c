"""speed.py on its own: the ideal speedups come from counted FLOPs and weight bytes, and a measurement of both
models fills the record consistently (no timed assert: the figures themselves depend on the machine)."""

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from streamline.speed import decode_weight_bytes, flops_per_token, measure_speedup


def _models(tiny_llama_dir):
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    pruned = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    del pruned.model.layers[2:4]
    pruned.config.num_hidden_layers = 4
    for i, layer in enumerate(pruned.model.layers):
        layer.self_attn.layer_idx = i
    return pruned, original


def test_ideal_speedups_count_what_pruning_removed(tiny_llama_dir):
    pruned, original = _models(tiny_llama_dir)
    per_layer = sum(p.numel() for p in original.model.layers[0].parameters()) * 4  # fp32 bytes
    assert decode_weight_bytes(original) - decode_weight_bytes(pruned) == 2 * per_layer
    ratio = flops_per_token(original, 16) / flops_per_token(pruned, 16)
    assert 1.0 < ratio < 6 / 4  # two of six layers gone; the head and embeddings stay


def test_a_measurement_is_consistent_with_its_own_figures(tiny_llama_dir):
    pruned, original = _models(tiny_llama_dir)
    ids = np.random.default_rng(0).integers(0, 300, size=(2, 16))
    with torch.no_grad():
        speed = measure_speedup(pruned, original, ids, batch_size=2, decode_steps=4, prompt_tokens=8, repeats=1)
    assert speed.batch == 2 and speed.prefill_tokens == 16 and speed.decode_prompt_tokens == 8
    for phase, rates in (("prefill", speed.prefill_tokens_per_s), ("decode", speed.decode_tokens_per_s)):
        assert np.isclose(speed.speedup[phase], rates["pruned"] / rates["original"])
    assert np.isclose(
        speed.ideal["decode"], speed.decode_weight_bytes["original"] / speed.decode_weight_bytes["pruned"]
    )
