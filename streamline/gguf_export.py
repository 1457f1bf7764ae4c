"""Export a Llama-family HF model dir (what streamline writes) to a GGUF file for llama.cpp.

Most pruned models streamline writes are ordinary `LlamaForCausalLM` dirs with fewer layers, written as
llama.cpp's own "llama" architecture: metadata from config.json, the tokenizer (gguf_vocab.py), and the weights
renamed to llama.cpp's tensor names. A `swiglu` variant holds one layer without attention, x + SwiGLU(RMSNorm(x));
llama.cpp's "deci" architecture (Nemotron-NAS) runs exactly that: a layer whose head count is 0 is the residual
plus its FFN, and head counts and FFN widths are per-layer arrays. Details that decide whether the result
computes what the HF model computes:

- llama.cpp applies rotary embeddings to interleaved pairs (x0, x1), (x2, x3), ... while HF Llama
  rotates the two halves of each head (x_i, x_{i+d/2}); the q and k projections are therefore
  permuted row-wise per head (`permute_rotary`), as llama.cpp's own converter does.
- A model with tied embeddings (SmolLM2) has no lm_head tensor; llama.cpp then reuses token_embd
  as the output matrix when `output.weight` is absent, so nothing is written for it.
- `ffn` (Linear-ReLU-Linear, no gate) has no exact form: deci's FFN is always SiLU-gated. It is refused, never
  approximated.

Tensors are streamed one at a time (header and tensor table first, then each tensor's data), and each is
converted a block of rows at a time, so memory stays at one tensor as stored plus its encoding whatever the
model size (never a float32 copy of a 128k-row embedding), and the file is written under a temp name and
renamed: a killed export never leaves a `model.gguf` that looks complete.
"""

from __future__ import annotations

import argparse
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
from .gguf_vocab import add_tokenizer
from .layout import NETS

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
# The replacement network's weights in its layer slot (networks.ResidualSwiGLU), as a deci attention-free layer.
SWIGLU_TO_GGUF = {"norm": "ffn_norm", "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
# Replacement networks llama.cpp cannot run exactly, and why (the others export: transformer, none, linear as
# plain llama, swiglu as deci).
NOT_EXPORTABLE = {
    "ffn": "its Linear-ReLU-Linear has no gate, and llama.cpp's attention-free (deci) layer runs only a SiLU-gated FFN"
}
EXPORTABLE = ", ".join(net for net in NETS if net not in NOT_EXPORTABLE)
HF_TO_GGUF_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")


def replacement(model_config: dict) -> dict | None:
    """The spec of the custom network a streamline dir holds in one layer slot (networks.py), or None."""
    return (model_config.get("streamline") or {}).get("replacement")


def check_exportable(model_config: dict, where: str = "model_name") -> None:
    """One line when llama.cpp cannot run this model exactly through our export (an OPT, an `ffn` network)."""
    spec = replacement(model_config)
    model_type = model_config["streamline"]["base_model_type"] if spec else model_config.get("model_type", "unknown")
    if model_type not in GGUF_MODEL_TYPES:
        raise StreamlineError(
            f"export.gguf: {where} is a '{model_type}' model, which the GGUF export does not "
            f"support (supported: {', '.join(GGUF_MODEL_TYPES)}; set export.gguf: none)"
        )
    if spec:
        _check_network(spec, model_config, where)
    rope = rope_settings(model_config)
    if rope["type"] not in ("default", "linear", "llama3"):
        raise StreamlineError(
            f"export.gguf: {where} uses rope scaling '{rope['type']}', which the GGUF export does "
            f"not write (supported: default, linear, llama3)"
        )


def _check_network(spec: dict, model_config: dict, where: str) -> None:
    net = spec["net"]
    if net in NOT_EXPORTABLE:
        raise StreamlineError(
            f"export.gguf: {where} holds an `{net}` network, which llama.cpp cannot run exactly: "
            f"{NOT_EXPORTABLE[net]} (exportable: {EXPORTABLE})"
        )
    if spec["norm"] != "rms" or float(spec["eps"]) != float(model_config["rms_norm_eps"]):
        raise StreamlineError(
            f"export.gguf: {where}'s {net} network normalises with {spec['norm']} eps {spec['eps']}; "
            f"llama.cpp's deci layer applies the model's RMSNorm, eps {model_config['rms_norm_eps']}"
        )
    if spec["index"] == 0:
        raise StreamlineError(
            f"export.gguf: {where}'s {net} network is layer 0; llama.cpp's deci architecture takes "
            f"the attention head size from layer 0, so it cannot be attention-free"
        )


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


def gguf_name(hf_name: str, replaced: int | None = None) -> str | None:
    """llama.cpp's tensor name for an HF Llama weight (layer `replaced` holding a swiglu network); None for
    buffers llama.cpp recomputes."""
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    match = LAYER_NAME.match(hf_name)
    names = SWIGLU_TO_GGUF if match and int(match.group(1)) == replaced else HF_TO_GGUF_LAYER
    if match and match.group(2) in names:
        return f"blk.{match.group(1)}.{names[match.group(2)]}.weight"
    stem = hf_name.removesuffix(".weight")
    if hf_name.endswith(".weight") and stem in HF_TO_GGUF_GLOBAL:
        return f"{HF_TO_GGUF_GLOBAL[stem]}.weight"
    raise StreamlineError(
        f"{hf_name}: a tensor llama.cpp's llama architecture has no slot for "
        f"(biases or custom layers are not exportable to GGUF)"
    )


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


ENCODE_VALUES = 2**24  # values converted to float32 at once: a 128k-row embedding is never held whole in fp32


def _encode_rows(weight, qtype) -> np.ndarray:
    """A stored tensor in its GGML type, converted and encoded a block of rows at a time (every type we write
    encodes rows independently), so memory holds the source and the result, never a float32 copy of it."""
    if isinstance(weight, np.ndarray):
        return _encode(weight, qtype)
    rows = weight.shape[0]
    step = max(1, ENCODE_VALUES // max(1, weight[0].numel()))
    out = None
    for start in range(0, rows, step):
        part = _encode(weight[start : start + step].float().numpy(), qtype)
        if out is None:
            out = np.empty((rows, *part.shape[1:]), dtype=part.dtype)
        out[start : start + step] = part
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


def layer_shapes(cfg: dict) -> list[tuple[int, int, int]]:
    """(attention heads, kv heads, FFN width) of every layer; a swiglu network's slot has no attention."""
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    spec = replacement(cfg)
    attention = (heads, kv_heads, int(cfg["intermediate_size"]))
    return [
        (0, 0, int(spec["inner"])) if spec and i == spec["index"] else attention
        for i in range(int(cfg["num_hidden_layers"]))
    ]


def _add_hparams(writer, cfg: dict, shapes: list[tuple[int, int, int]], name: str, outtype: str) -> None:
    import gguf

    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    rope = rope_settings(cfg)
    writer.add_name(name)
    writer.add_context_length(int(cfg["max_position_embeddings"]))
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_block_count(len(shapes))
    if writer.arch == "deci":  # per-layer arrays, one entry per block (llama.cpp refuses other lengths)
        per_layer = [list(column) for column in zip(*shapes)]
        writer.add_head_count(per_layer[0])
        writer.add_head_count_kv(per_layer[1])
        writer.add_feed_forward_length(per_layer[2])
    else:
        writer.add_head_count(shapes[0][0])
        writer.add_head_count_kv(shapes[0][1])
        writer.add_feed_forward_length(shapes[0][2])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope["theta"])
    if rope["type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    writer.add_vocab_size(int(cfg["vocab_size"]))
    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]
    writer.add_file_type(ftype)
    if outtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def export_gguf(model_dir: str | Path, out_file: str | Path, outtype: str = "f16") -> dict[str, Any]:
    """Write `out_file` (GGUF: llama architecture, or deci for a swiglu network) from the HF model dir; return a
    summary of what was written."""
    import gguf

    model_dir, out_file = Path(model_dir), Path(out_file)
    if outtype not in OUTTYPES:
        raise StreamlineError(
            f"outtype: {outtype!r} is not one the GGUF export produces (allowed: {', '.join(OUTTYPES)})"
        )
    if not (model_dir / "config.json").is_file():
        raise StreamlineError(f"{model_dir}: not a model dir (no config.json)")
    cfg = json.loads((model_dir / "config.json").read_text())
    check_exportable(cfg, where=str(model_dir))
    t0 = time.perf_counter()
    spec = replacement(cfg)
    shapes = layer_shapes(cfg)
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)

    # Plan every tensor first (name, shape, type, bytes): GGUF's tensor table precedes the data.
    # Each entry: (HF name, or an array computed here; GGUF name; shape in HF order; ggml type).
    plan: list[tuple[str | np.ndarray, str, tuple[int, ...], Any]] = []
    for hf_name, lazy in _tensors(model_dir):
        name = gguf_name(hf_name, replaced=spec["index"] if spec else None)
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
    expected = {
        f"blk.{i}.{t}.weight"
        for i, (h, _kv, _ff) in enumerate(shapes)
        for t in (HF_TO_GGUF_LAYER if h else SWIGLU_TO_GGUF).values()
    }
    if missing := sorted(expected - names):
        raise StreamlineError(
            f"{model_dir}: {len(missing)} layer weights missing for "
            f"{cfg['num_hidden_layers']} layers (first: {missing[0]})"
        )
    if extra := sorted(n for n in names - expected if n.startswith("blk.")):
        raise StreamlineError(
            f"{model_dir}: {extra[0]} has no slot in the config's {cfg['num_hidden_layers']} "
            f"layers (num_hidden_layers and the weights disagree)"
        )

    with atomic_path(out_file) as tmp:
        writer = gguf.GGUFWriter(tmp, "deci" if spec else "llama")
        _add_hparams(
            writer,
            cfg,
            shapes,
            name=model_dir.name if model_dir.name not in ("model", "init") else model_dir.parent.name,
            outtype=outtype,
        )
        add_tokenizer(writer, model_dir, int(cfg["vocab_size"]))
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
    summary = {
        "model_dir": str(model_dir),
        "gguf": str(out_file),
        "architecture": "deci" if spec else "llama",
        "outtype": outtype,
        "tensors": len(plan),
        "bytes": out_file.stat().st_size,
        "layers": int(cfg["num_hidden_layers"]),
        "tied_embeddings": "output.weight" not in names,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info(
        "wrote %s (%s, %d tensors, %.1f MB) in %.1f s",
        out_file,
        outtype,
        len(plan),
        summary["bytes"] / 1e6,
        summary["seconds"],
    )
    return summary


# --- the command: streamline export-gguf --------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=f"HF model dir (the original, or a variant of {EXPORTABLE})")
    p.add_argument("--out", required=True, help="model.gguf")
    p.add_argument("--outtype", default="f16", choices=OUTTYPES, help="the GGUF's weight type")


def run(a: argparse.Namespace) -> None:
    export_gguf(a.model, a.out, a.outtype)
