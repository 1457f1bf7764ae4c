"""Export a plain Hugging Face Llama-family model dir (what streamline writes) to a GGUF file for llama.cpp.

The pruned models streamline writes are ordinary `LlamaForCausalLM` dirs with fewer layers, so the
conversion is llama.cpp's own "llama" architecture: metadata from config.json, the tokenizer from
tokenizer.json, and the weights renamed to llama.cpp's tensor names. Two details decide whether the
result computes what the HF model computes:

- llama.cpp applies rotary embeddings to interleaved pairs (x0, x1), (x2, x3), ... while HF Llama
  rotates the two halves of each head (x_i, x_{i+d/2}); the q and k projections are therefore
  permuted row-wise per head (`permute_rotary`), as llama.cpp's own converter does.
- A model with tied embeddings (SmolLM2) has no lm_head tensor; llama.cpp then reuses token_embd
  as the output matrix when `output.weight` is absent, so nothing is written for it.

Tensors are streamed one at a time (header and tensor table first, then each tensor's data), and each is
converted a block of rows at a time, so memory stays at one tensor as stored plus its encoding whatever the
model size (never a float32 copy of a 128k-row embedding), and the file is written under a temp name and
renamed: a killed export never leaves a `model.gguf` that looks complete.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .atomic import atomic_path
from .errors import StreamlineError

log = logging.getLogger(__name__)

# The outtypes we can produce with the gguf package alone and have checked in llama.cpp.
OUTTYPES = ("f32", "f16", "q8_0")
# HF model types whose weights llama.cpp's "llama" architecture runs unchanged (tested: llama only).
GGUF_MODEL_TYPES = ("llama",)

HF_TO_GGUF_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
HF_TO_GGUF_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")


def check_exportable(model_config: dict, where: str = "model_name") -> None:
    """One line when llama.cpp cannot run this model through our export (an OPT, a custom replacement)."""
    model_type = model_config.get("model_type", "unknown")
    if model_type.startswith("streamline_"):
        raise StreamlineError(f"export.gguf: {where} holds a custom replacement network ({model_type}, remote code); "
                              f"llama.cpp cannot run it (allowed with export.gguf: network transformer, none, linear)")
    if model_type not in GGUF_MODEL_TYPES:
        raise StreamlineError(f"export.gguf: {where} is a '{model_type}' model, which the GGUF export does not "
                              f"support (supported: {', '.join(GGUF_MODEL_TYPES)}; set export.gguf: none)")
    rope = rope_settings(model_config)
    if rope["type"] not in ("default", "linear", "llama3"):
        raise StreamlineError(f"export.gguf: {where} uses rope scaling '{rope['type']}', which the GGUF export does "
                              f"not write (supported: default, linear, llama3)")


def rope_settings(model_config: dict) -> dict[str, Any]:
    """rope theta, type and factor from transformers 5 (`rope_parameters`) or 4.x (`rope_theta`, `rope_scaling`)."""
    params = dict(model_config.get("rope_parameters") or model_config.get("rope_scaling") or {})
    theta = params.get("rope_theta", model_config.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    return {**params, "theta": float(theta), "type": kind, "factor": float(params.get("factor", 1.0))}


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Llama-3.1's rope scaling as llama.cpp takes it: one divisor per rotary frequency (rope_freqs.weight).

    transformers scales each inverse frequency: long wavelengths by 1/factor, short ones not at all, and
    blends in between; llama.cpp divides the frequency by rope_freqs[i], so the divisor is old / new.
    """
    inv_freq = rope["theta"] ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_context = rope["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = np.clip((old_context / wavelen - low) / (high - low), 0.0, 1.0)  # 0: long waves, 1: short
    return (1.0 / ((1 - smooth) / factor + smooth)).astype(np.float32)


def permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder the output rows of a q or k projection from HF's half-split rotary layout to llama.cpp's
    interleaved one: within each head, rows [0..d/2) and [d/2..d) become the even and odd rows."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of `permute_rotary` (for reading an export back)."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_name(hf_name: str) -> str | None:
    """llama.cpp's tensor name for an HF Llama weight; None for buffers llama.cpp recomputes."""
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    match = LAYER_NAME.match(hf_name)
    if match and match.group(2) in HF_TO_GGUF_LAYER:
        return f"blk.{match.group(1)}.{HF_TO_GGUF_LAYER[match.group(2)]}.weight"
    stem = hf_name.removesuffix(".weight")
    if hf_name.endswith(".weight") and stem in HF_TO_GGUF_GLOBAL:
        return f"{HF_TO_GGUF_GLOBAL[stem]}.weight"
    raise StreamlineError(f"{hf_name}: a tensor llama.cpp's llama architecture has no slot for "
                          f"(biases or custom layers are not exportable to GGUF)")


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return [model_dir / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise StreamlineError(f"{model_dir}: no safetensors weights to export")
    return files


def _tensors(model_dir: Path) -> Iterator[tuple[str, Any]]:
    """(HF name, lazy safetensors slice) for every stored tensor, file by file."""
    from safetensors import safe_open
    for path in _weight_files(model_dir):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_slice(name)


def _load(model_dir: Path, hf_name: str):
    """One tensor as stored (a torch tensor: numpy has no bfloat16)."""
    from safetensors import safe_open
    for path in _weight_files(model_dir):
        with safe_open(path, framework="pt") as f:
            if hf_name in f.keys():
                return f.get_tensor(hf_name)
    raise KeyError(hf_name)


ENCODE_VALUES = 2 ** 24  # values converted to float32 at once: a 128k-row embedding is never held whole in fp32


def _encode_rows(weight, qtype) -> np.ndarray:
    """A stored tensor in its GGML type, converted and encoded a block of rows at a time (every type we write
    encodes rows independently), so memory holds the source and the result, never a float32 copy of it."""
    if isinstance(weight, np.ndarray):
        return _encode(weight, qtype)
    rows = weight.shape[0]
    step = max(1, ENCODE_VALUES // max(1, weight[0].numel()))
    out = None
    for start in range(0, rows, step):
        part = _encode(weight[start:start + step].float().numpy(), qtype)
        if out is None:
            out = np.empty((rows, *part.shape[1:]), dtype=part.dtype)
        out[start:start + step] = part
    return out


def _storage_type(gguf_tensor: str, shape: tuple[int, ...], outtype: str):
    """GGML type of one tensor: norms (1-D) stay f32, as llama.cpp's converter keeps them; q8_0 needs rows
    that are a whole number of its 32-value blocks (otherwise f16)."""
    import gguf
    T = gguf.GGMLQuantizationType
    if len(shape) == 1 or outtype == "f32":
        return T.F32
    if outtype == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[T.Q8_0][0] == 0:
        return T.Q8_0
    return T.F16


def _encode(array: np.ndarray, qtype) -> np.ndarray:
    import gguf
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def _pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the pre-tokenizer's split rules, for the shapes we recognise; 'default' else
    (text tokenised inside llama.cpp may then differ; token ids fed directly, as gguf-check does, are exact)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex")) for s in steps]
    if kinds == [("ByteLevel", None, True)]:
        return "gpt-2"  # llama.cpp's name for GPT-2's split rules
    if kinds == [("Digits", True, None), ("ByteLevel", None, True)]:
        return "smollm"  # SmolLM/SmolLM2: digits split one by one, then GPT-2's byte-level rules
    log.warning("pre-tokenizer %s not recognised; writing 'default' (feed token ids for exact results)", kinds)
    return "default"


def _add_tokenizer(writer, model_dir: Path, vocab_size: int) -> None:
    """Token list, types, merges and special ids. The list is padded to the model's vocab_size, as llama.cpp
    requires one entry per embedding row."""
    import gguf
    from gguf.vocab import BpeVocab, LlamaHfVocab, SpecialVocab
    try:
        vocab = BpeVocab(model_dir)  # byte-level BPE (GPT-2 style: SmolLM2, Llama-3)
        pre = _pre_tokenizer(json.loads((model_dir / "tokenizer.json").read_text()))
    except FileNotFoundError:
        try:
            vocab = LlamaHfVocab(model_dir)  # sentencepiece-style BPE with byte fallback (Llama-2)
            pre = "default"
            # Checked on a synthetic tokenizer only: logits from token ids match, but llama.cpp's SPM merges by
            # score, and text it tokenises itself split differently there.
            log.warning("%s: sentencepiece-style tokenizer; text tokenised inside llama.cpp may differ from HF's "
                        "(token ids are exact)", model_dir)
        except FileNotFoundError:
            raise StreamlineError(f"{model_dir}: no tokenizer.json the GGUF export can read") from None
    tokens, types = [], []
    for text, _score, kind in vocab.all_tokens():
        tokens.append(text if isinstance(text, bytes) else text.encode())
        types.append(kind)
    if len(tokens) > vocab_size:
        raise StreamlineError(f"{model_dir}: the tokenizer has {len(tokens)} tokens, more than the model's "
                              f"vocab_size {vocab_size}")
    for i in range(len(tokens), vocab_size):  # embedding rows no token uses
        tokens.append(f"[PAD{i}]".encode())
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if vocab.tokenizer_model == "llama":
        writer.add_token_scores([score for _text, score, _kind in vocab.all_tokens()] +
                                [-1000.0] * (vocab_size - vocab.vocab_size))
    SpecialVocab(model_dir, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=vocab_size).add_to_gguf(
        writer, quiet=True)


def _add_hparams(writer, cfg: dict, name: str, outtype: str) -> None:
    import gguf
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    rope = rope_settings(cfg)
    writer.add_name(name)
    writer.add_context_length(int(cfg["max_position_embeddings"]))
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_block_count(int(cfg["num_hidden_layers"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(cfg.get("num_key_value_heads") or heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope["theta"])
    if rope["type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    writer.add_vocab_size(int(cfg["vocab_size"]))
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    writer.add_file_type(ftype)
    if outtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def export_gguf(model_dir: str | Path, out_file: str | Path, outtype: str = "f16") -> dict[str, Any]:
    """Write `out_file` (GGUF, llama architecture) from the HF model dir; return a summary of what was written."""
    import gguf

    model_dir, out_file = Path(model_dir), Path(out_file)
    if outtype not in OUTTYPES:
        raise StreamlineError(f"outtype: {outtype!r} is not one the GGUF export produces (allowed: {', '.join(OUTTYPES)})")
    if not (model_dir / "config.json").is_file():
        raise StreamlineError(f"{model_dir}: not a model dir (no config.json)")
    cfg = json.loads((model_dir / "config.json").read_text())
    check_exportable(cfg, where=str(model_dir))
    t0 = time.perf_counter()
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)

    # Plan every tensor first (name, shape, type, bytes): GGUF's tensor table precedes the data.
    # Each entry: (HF name, or an array computed here; GGUF name; shape in HF order; ggml type).
    plan: list[tuple[str | np.ndarray, str, tuple[int, ...], Any]] = []
    for hf_name, lazy in _tensors(model_dir):
        name = gguf_name(hf_name)
        if name is None:
            continue
        shape = tuple(lazy.get_shape())
        plan.append((hf_name, name, shape, _storage_type(name, shape, outtype)))
    rope = rope_settings(cfg)
    if rope["type"] == "llama3":  # Llama-3.1: the scaled frequencies travel as a tensor, not as metadata
        head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
        factors = llama3_rope_factors(rope, head_dim)
        plan.append((factors, "rope_freqs.weight", factors.shape, gguf.GGMLQuantizationType.F32))
    names = {p[1] for p in plan}
    if "output.weight" not in names and not cfg.get("tie_word_embeddings", False):
        raise StreamlineError(f"{model_dir}: no lm_head weight and tie_word_embeddings is false")
    expected = {f"blk.{i}.{t}.weight" for i in range(int(cfg["num_hidden_layers"])) for t in HF_TO_GGUF_LAYER.values()}
    if missing := sorted(expected - names):
        raise StreamlineError(f"{model_dir}: {len(missing)} layer weights missing for "
                              f"{cfg['num_hidden_layers']} layers (first: {missing[0]})")

    with atomic_path(out_file) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        _add_hparams(writer, cfg, name=model_dir.name if model_dir.name not in ("model", "init") else
                     model_dir.parent.name, outtype=outtype)
        _add_tokenizer(writer, model_dir, int(cfg["vocab_size"]))
        for _hf, name, shape, qtype in plan:
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            nbytes = math.prod(shape) // block * type_size
            # numpy shapes are (rows, cols) = the reverse of ggml's ne; the writer reverses them itself
            writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for source, name, shape, qtype in plan:
            weight = source if isinstance(source, np.ndarray) else _load(model_dir, source)
            if name.endswith(("attn_q.weight", "attn_k.weight")):  # a head's rows move: permuted whole (small)
                weight = permute_rotary(weight.float().numpy(), heads if name.endswith("attn_q.weight") else kv_heads)
            writer.write_tensor_data(_encode_rows(weight, qtype))
            del weight
        writer.close()
    summary = {"model_dir": str(model_dir), "gguf": str(out_file), "outtype": outtype, "tensors": len(plan),
               "bytes": out_file.stat().st_size, "layers": int(cfg["num_hidden_layers"]),
               "tied_embeddings": "output.weight" not in names, "seconds": round(time.perf_counter() - t0, 2)}
    log.info("wrote %s (%s, %d tensors, %.1f MB) in %.1f s", out_file, outtype, len(plan), summary["bytes"] / 1e6,
             summary["seconds"])
    return summary
