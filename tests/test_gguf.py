"""GGUF export for llama.cpp: the file holds the HF weights (q/k in llama.cpp's rotary layout) and the right
hyper-parameters, configs it cannot serve are refused in one line, and (slow, with the [gguf] extra) llama.cpp
computes the logits and perplexity the HF model does."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from tiny import build_tiny_model, build_tokenizer, make_data_dir, tiny_model_config
from streamline.gguf_export import export_gguf, permute_rotary, unpermute_rotary
from workflow_utils import planned_outputs, snakemake, tiny_config, write_config

CLI = [sys.executable, "-m", "streamline.cli"]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def read_gguf(path):
    """{name: float32 array in HF (rows, cols) order}, {key: value} of a GGUF file."""
    import gguf
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
               for t in reader.tensors}
    fields = {k: f.contents() for k, f in reader.fields.items()}
    return tensors, fields, {t.name: t.tensor_type.name for t in reader.tensors}


def tied_llama(path):
    tok = build_tokenizer()
    config = tiny_model_config("llama", len(tok), layers=3)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_the_export_holds_the_hf_weights_and_hyperparameters(tmp_path, tiny_llama_dir, outtype):
    out = tmp_path / "model.gguf"
    export_gguf(tiny_llama_dir, out, outtype)
    hf = load_file(tiny_llama_dir / "model.safetensors")
    tensors, fields, types = read_gguf(out)
    cfg = json.loads((tiny_llama_dir / "config.json").read_text())
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == cfg["num_hidden_layers"] == 6
    assert fields["llama.attention.head_count"] == 4 and fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.embedding_length"] == 32 and fields["llama.feed_forward_length"] == 64
    assert fields["llama.rope.dimension_count"] == 8
    assert fields["llama.rope.freq_base"] == pytest.approx(cfg["rope_parameters"]["rope_theta"])
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"])
    assert fields["llama.vocab_size"] == cfg["vocab_size"] == len(fields["tokenizer.ggml.tokens"])
    assert fields["tokenizer.ggml.bos_token_id"] == 1 and fields["tokenizer.ggml.eos_token_id"] == 2
    assert len(tensors) == 2 + 1 + 9 * 6  # embeddings, head, final norm, 9 per layer
    tolerance = {"f32": 0.0, "f16": 1e-3, "q8_0": 1.0 / 127}[outtype]
    for i in range(6):
        for hf_name, name, heads in [("self_attn.q_proj", "attn_q", 4), ("self_attn.k_proj", "attn_k", 2),
                                     ("self_attn.v_proj", "attn_v", None), ("mlp.down_proj", "ffn_down", None),
                                     ("input_layernorm", "attn_norm", None)]:
            want = hf[f"model.layers.{i}.{hf_name}.weight"]
            got = tensors[f"blk.{i}.{name}.weight"]
            if heads:  # stored in llama.cpp's interleaved rotary layout, so not equal as stored
                assert not np.allclose(got, want, atol=0.05)
                got = unpermute_rotary(got, heads)
            scale = np.abs(want).max() if want.ndim == 2 else 1.0
            np.testing.assert_allclose(got, want, atol=tolerance * scale + 1e-7, rtol=0)
            assert types[f"blk.{i}.{name}.weight"] == ("F32" if want.ndim == 1 else outtype.upper())
    np.testing.assert_allclose(tensors["output.weight"], hf["lm_head.weight"], atol=tolerance * 0.8 + 1e-7, rtol=0)


def test_tied_embeddings_write_no_output_matrix(tmp_path):
    model = tied_llama(tmp_path / "tied")
    export_gguf(model, tmp_path / "m.gguf", "f16")
    tensors, fields, _ = read_gguf(tmp_path / "m.gguf")
    assert "output.weight" not in tensors  # llama.cpp then uses token_embd as the head
    hf = load_file(model / "model.safetensors")
    np.testing.assert_allclose(tensors["token_embd.weight"], hf["model.embed_tokens.weight"], atol=1e-3)


def test_the_permutation_keeps_attention_scores_under_each_rotary_convention():
    """HF rotates the two halves of a head; llama.cpp's llama rotates adjacent pairs. q.k after rotation must
    agree when llama.cpp gets permuted weights (and not without the permutation)."""
    rng = np.random.default_rng(0)
    heads, d, hidden, base = 2, 8, 16, 10000.0
    wq, wk, x, y = rng.normal(size=(heads * d, hidden)), rng.normal(size=(heads * d, hidden)), \
        rng.normal(size=hidden), rng.normal(size=hidden)
    theta = base ** (-np.arange(0, d, 2) / d)

    def hf_rope(v, pos):  # rotate_half: pairs (i, i + d/2)
        v = v.reshape(heads, d)
        a, b = v[:, :d // 2], v[:, d // 2:]
        c, s = np.cos(pos * theta), np.sin(pos * theta)
        return np.concatenate([a * c - b * s, b * c + a * s], -1)

    def interleaved_rope(v, pos):  # llama.cpp NORM mode: pairs (2i, 2i + 1)
        v = v.reshape(heads, d // 2, 2)
        a, b = v[..., 0], v[..., 1]
        c, s = np.cos(pos * theta), np.sin(pos * theta)
        return np.stack([a * c - b * s, b * c + a * s], -1).reshape(heads, d)

    scores_hf = (hf_rope(wq @ x, 5) * hf_rope(wk @ y, 2)).sum(-1)
    scores_cpp = (interleaved_rope(permute_rotary(wq, heads) @ x, 5) *
                  interleaved_rope(permute_rotary(wk, heads) @ y, 2)).sum(-1)
    np.testing.assert_allclose(scores_cpp, scores_hf, rtol=1e-10)
    unpermuted = (interleaved_rope(wq @ x, 5) * interleaved_rope(wk @ y, 2)).sum(-1)
    assert not np.allclose(unpermuted, scores_hf, rtol=1e-3)
    np.testing.assert_array_equal(unpermute_rotary(permute_rotary(wq, heads), heads), wq)


def test_the_export_is_atomic_and_refuses_what_llamacpp_cannot_run(tmp_path, tiny_opt_dir, tiny_llama_dir):
    line = one_error_line(subprocess.run([*CLI, "export-gguf", "--model", str(tiny_opt_dir), "--out",
                                          str(tmp_path / "m.gguf")], capture_output=True, text=True))
    assert "export.gguf:" in line and "'opt'" in line and "supported: llama" in line
    assert not list(tmp_path.iterdir())  # nothing written, not even a partial file
    custom = tmp_path / "ffn"
    custom.mkdir()
    cfg = json.loads((tiny_llama_dir / "config.json").read_text())
    (custom / "config.json").write_text(json.dumps({**cfg, "model_type": "streamline_llama"}))
    line = one_error_line(subprocess.run([*CLI, "export-gguf", "--model", str(custom), "--out",
                                          str(tmp_path / "m.gguf")], capture_output=True, text=True))
    assert "remote code" in line and not (tmp_path / "m.gguf").exists()


def test_the_schema_offers_exactly_the_outtypes_the_export_writes():
    from streamline.gguf_export import OUTTYPES
    from streamline.schema import load_schema
    assert load_schema()["properties"]["export"]["properties"]["gguf"]["enum"] == ["none", *OUTTYPES]


def test_gguf_check_without_the_extra_says_how_to_get_it(tmp_path):
    code = ("import sys; sys.modules['llama_cpp'] = None; from streamline.cli import main; "
            f"sys.exit(main(['gguf-check', '--gguf', 'x.gguf', '--data', '{tmp_path}']))")
    line = one_error_line(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True))
    assert "install the [gguf] extra" in line


@pytest.mark.parametrize("override, message", [
    (["export={gguf: q4}"], "export.gguf: 'q4' is not one of"),
    (["network=ffn", "export={gguf: f16}"], "export.gguf: f16 cannot export network ffn"),
    (["network=[transformer,swiglu]", "export={gguf: q8_0}"], "export.gguf: q8_0 cannot export network swiglu"),
])
def test_configs_without_a_llamacpp_model_stop_in_one_line(tmp_path, text_corpus, tiny_llama_dir, override, message):
    write_config(tmp_path, tiny_config(tiny_llama_dir, text_corpus))
    line = one_error_line(snakemake(tmp_path, "-n", "--config", *override, check=False))
    assert message in line


def test_an_opt_model_with_export_stops_in_one_line(tmp_path, text_corpus, tiny_opt_dir):
    write_config(tmp_path, tiny_config(tiny_opt_dir, text_corpus))
    snakemake(tmp_path, "-n")  # without export.gguf an OPT model is fine
    line = one_error_line(snakemake(tmp_path, "-n", "--config", "export={gguf: f16}", check=False))
    assert "export.gguf:" in line and "'opt'" in line


def test_the_workflow_exports_the_original_and_every_variant(tmp_path, text_corpus, tiny_llama_dir):
    write_config(tmp_path, tiny_config(tiny_llama_dir, text_corpus, network=["transformer", "none"]))
    assert not any("gguf" in p for p in planned_outputs(tmp_path))  # export.gguf: none adds nothing
    outputs = planned_outputs(tmp_path, "--config", "export={gguf: f16}")
    for d in ("results/tiny/baseline", "results/tiny/n2/transformer-mse", "results/tiny/n2/none"):
        assert f"{d}/model.gguf" in outputs and f"{d}/gguf.json" in outputs, sorted(outputs)


# --- in llama.cpp itself (the [gguf] extra) --------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("outtype, tolerance", [("f32", 0.02), ("f16", 0.05), ("q8_0", 0.2)])
def test_llamacpp_computes_the_hf_logits(tmp_path, tiny_llama_dir, outtype, tolerance):
    pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM
    from streamline.gguf_check import block_logits, load_gguf
    export_gguf(tiny_llama_dir, tmp_path / "m.gguf", outtype)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    llm = load_gguf(tmp_path / "m.gguf", n_ctx=64, logits_all=True, threads=2)
    rng = np.random.default_rng(0)
    for length in (7, 33, 64):
        ids = rng.integers(4, 300, length)
        with torch.no_grad():
            want = model(torch.from_numpy(ids)[None]).logits[0].numpy()
        got = block_logits(llm, ids)
        assert np.abs(got - want).max() < tolerance * np.abs(want).max(), (outtype, length)
        if outtype != "q8_0":  # a random model's top logits are close: 8-bit weights may swap them
            assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9


@pytest.mark.slow
def test_llamacpp_tokenises_text_as_hf_does(tmp_path, tiny_llama_dir):
    pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer
    from streamline.gguf_check import load_gguf
    export_gguf(tiny_llama_dir, tmp_path / "m.gguf", "f16")
    llm = load_gguf(tmp_path / "m.gguf", n_ctx=64, logits_all=False, threads=1)
    for text in ("the quick brown fox jumps over the lazy dog .", "to be or not 123 , that is   the question"):
        want = AutoTokenizer.from_pretrained(tiny_llama_dir)(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == want
    llm.close()


@pytest.mark.slow
def test_llama3_rope_scaling_reaches_llamacpp(tmp_path):
    """Llama-3.1's scaled rotary frequencies travel as rope_freqs.weight; with a short original context the
    scaling changes the logits far more than the tolerance, so a file without it fails here."""
    pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM
    from streamline.gguf_check import block_logits, load_gguf
    tok = build_tokenizer()
    models = {}
    for kind in ("llama3", "default"):
        cfg = tiny_model_config("llama", len(tok), layers=3)
        if kind == "llama3":
            cfg.rope_parameters = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
        torch.manual_seed(0)
        models[kind] = AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():
            for p in models[kind].parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.2)
    models["llama3"].save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    export_gguf(tmp_path / "m", tmp_path / "m.gguf", "f32")
    ids = np.random.default_rng(0).integers(4, 300, 200)
    with torch.no_grad():
        want = models["llama3"](torch.from_numpy(ids)[None]).logits[0].numpy()
        unscaled = models["default"](torch.from_numpy(ids)[None]).logits[0].numpy()
    llm = load_gguf(tmp_path / "m.gguf", n_ctx=256, logits_all=True, threads=2)
    got = block_logits(llm, ids)
    llm.close()
    scale = np.abs(want).max()
    assert np.abs(got - want).max() < 0.02 * scale < np.abs(unscaled - want).max()


@pytest.mark.slow
def test_llamacpp_perplexity_agrees_with_streamlines(tmp_path, tiny_llama_dir):
    pytest.importorskip("llama_cpp")
    from streamline.artifacts import LlamaCppCheck
    from streamline.gguf_check import gguf_check
    data = make_data_dir(tmp_path / "data", num=6, seq_len=48)  # some blocks right-padded
    export_gguf(tiny_llama_dir, tmp_path / "m.gguf", "f16")
    pruned = build_tiny_model("llama", tmp_path / "pruned", layers=3)
    export_gguf(pruned, tmp_path / "p.gguf", "f16")
    result = gguf_check(tmp_path / "p.gguf", data, tmp_path / "gguf.json", original_gguf=tmp_path / "m.gguf",
                        hf_model=pruned, threads=2, decode_steps=8, prompt_tokens=8, repeats=1)
    assert abs(result.gguf_ppl / result.hf_ppl - 1) < 0.01
    assert LlamaCppCheck.load(tmp_path / "gguf.json", "llama.cpp check") == result  # what the report reads
    assert result.speedup_llamacpp_ideal["decode"] > 1.5  # 3 of 6 layers (the head and embeddings stay)
    assert result.speedup_llamacpp["prefill"] > 0 and result.speedup_llamacpp["decode"] > 0
    assert result.speed_llamacpp.threads == 2 and result.speed_llamacpp.speedup == result.speedup_llamacpp


@pytest.mark.slow
def test_a_truncated_gguf_is_one_line_and_set_aside_for_its_export_to_rerun(tmp_path, tiny_llama_dir):
    pytest.importorskip("llama_cpp")
    data = make_data_dir(tmp_path / "data", num=2, seq_len=16)
    export_gguf(tiny_llama_dir, tmp_path / "m.gguf", "f16")
    raw = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "m.gguf").write_bytes(raw[:len(raw) // 2])
    line = one_error_line(subprocess.run([sys.executable, "-m", "streamline.cli", "gguf-check", "--gguf",
                                          str(tmp_path / "m.gguf"), "--data", str(data), "--out",
                                          str(tmp_path / "g.json")], capture_output=True, text=True, timeout=300))
    assert "m.gguf: llama.cpp cannot load it" in line and "moved it to m.gguf.corrupt-" in line
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "g.json").exists()
