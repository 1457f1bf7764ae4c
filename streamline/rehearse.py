"""Rehearsal models: a preset's exact shapes with random weights, and no download.

    model_name: random://llama-3.1-8b?layers=6        # a shipped preset (streamline/shapes/), 6 of its layers
    model_name: random://path/to/config.json          # any config.json (all its layers)

The download stage writes it as a plain HF dir, so every later stage runs unchanged: the same widths, heads,
kv heads, vocabulary and rope scaling as the real model, with the depth the user picks (`layers`) and a
seeded init (`seed`, default 0). Weights are drawn in the preset's storage dtype (bf16 for Llama-3.1) one
tensor at a time and written shard by shard, so the writer never holds more than one shard, and never an
fp32 copy. The tokenizer is byte-level (256 byte tokens, 26 merges, 3 specials): any text tokenises, and its ids
fit any vocabulary (ids < 285); random weights do not care what the text says.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from .errors import StreamlineError
from .shapes import preset_config, presets

log = logging.getLogger(__name__)

SCHEME = "random://"
SHARD_BYTES = 2 * 2**30  # weights per safetensors shard: the writer's peak memory
SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|pad|>")  # ids 282, 283, 284


def is_random_spec(value: str) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


@dataclass(frozen=True)
class RandomSpec:
    source: str  # a preset name or a config.json path
    layers: int | None  # None: the config's own depth
    seed: int

    @property
    def name(self) -> str:
        """Directory name under resources/models/: llama-3.1-8b-random-L6."""
        stem = Path(self.source).parent.name if self.source.endswith(".json") else self.source
        return f"{stem}-random" + (f"-L{self.layers}" if self.layers else "") + (f"-s{self.seed}" if self.seed else "")

    def config(self) -> dict:
        """The config.json fields of the model to write (the source's, with the depth asked for)."""
        if self.source.endswith(".json"):
            path = Path(self.source).expanduser()
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise StreamlineError(
                    f"model_name: {SCHEME}{self.source}: cannot read a config.json there ({type(e).__name__})"
                ) from None
            config = {k: v for k, v in config.items() if not k.startswith("_")}
        else:
            config = preset_config(self.source)
        if self.layers:
            if self.layers > config["num_hidden_layers"]:
                raise StreamlineError(
                    f"model_name: layers={self.layers} is deeper than {self.source}'s "
                    f"{config['num_hidden_layers']} (allowed: 1..{config['num_hidden_layers']})"
                )
            config["num_hidden_layers"] = self.layers
        return config


def parse_random_spec(value: str) -> RandomSpec:
    """random://PRESET_OR_CONFIG_JSON[?layers=N&seed=S]; one line naming model_name if it is not one."""
    body, _, query = value[len(SCHEME) :].partition("?")
    if not body or (not body.endswith(".json") and body not in presets()):
        raise StreamlineError(
            f"model_name: {value}: expected random://PRESET[?layers=N] with a preset of "
            f"{', '.join(presets())}, or random://path/to/config.json"
        )
    args = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(args) - {"layers", "seed"})
    if unknown:
        raise StreamlineError(f"model_name: {value}: unknown option {unknown[0]!r} (allowed: layers, seed)")
    try:
        layers = int(args["layers"][-1]) if "layers" in args else None
        seed = int(args["seed"][-1]) if "seed" in args else 0
    except ValueError:
        raise StreamlineError(f"model_name: {value}: layers and seed must be integers") from None
    if (layers is not None and layers < 2) or seed < 0:
        raise StreamlineError(f"model_name: {value}: layers must be >= 2 and seed >= 0")
    return RandomSpec(body, layers, seed)


def byte_tokenizer():
    """A byte-level BPE: token id = byte value, 26 merges (a space and a lowercase letter: llama.cpp wants a BPE
    to have merges), then the specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # GPT-2's printable stand-in for each byte, as the ByteLevel pre-tokenizer emits it
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    symbol = {b: chr(b if b in printable else next(extra)) for b in range(256)}
    vocab = {symbol[b]: b for b in range(256)}
    merges = [(symbol[ord(" ")], letter) for letter in "abcdefghijklmnopqrstuvwxyz"]
    vocab.update({a + b: 256 + i for i, (a, b) in enumerate(merges)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[1], pad_token=SPECIALS[2]
    )


def write_random_model(spec: RandomSpec, out: Path) -> dict:
    """Write config.json, sharded safetensors (seeded random weights) and the byte tokenizer to `out`."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    t0 = time.perf_counter()
    fields = spec.config()
    tokenizer = byte_tokenizer()
    if fields["vocab_size"] < len(tokenizer):
        raise StreamlineError(
            f"model_name: a vocabulary of {fields['vocab_size']} is smaller than the rehearsal "
            f"tokenizer's {len(tokenizer)} tokens"
        )
    config = CONFIG_MAPPING[fields["model_type"]].from_dict(fields)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        tokenizer.convert_tokens_to_ids(t) for t in SPECIALS
    )
    dtype = getattr(torch, str(fields.get("torch_dtype") or fields.get("dtype") or "float32").removeprefix("torch."))
    with torch.device("meta"):  # names and shapes only: nothing is allocated
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype)
    std = getattr(config, "initializer_range", None) or getattr(config, "init_std", 0.02)
    count, shard, shard_bytes, weight_map, total = 0, {}, 0, {}, 0

    def flush() -> None:
        nonlocal count, shard, shard_bytes
        if shard:
            count += 1
            save_file(shard, out / f"shard-{count:05d}.safetensors", metadata={"format": "pt"})
            shard, shard_bytes = {}, 0  # the shard's tensors are freed here

    for name, p in skeleton.named_parameters():  # tied weights appear once
        generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + zlib.crc32(name.encode()))
        if p.dim() == 1:  # norms' gains start at 1, biases at 0
            value = torch.ones(p.shape, dtype=dtype) if name.endswith("weight") else torch.zeros(p.shape, dtype=dtype)
        else:  # uniform with the config's init std: as cheap as a fill, drawn in the storage dtype
            bound = std * 3**0.5
            value = torch.empty(p.shape, dtype=dtype).uniform_(-bound, bound, generator=generator)
        nbytes = value.numel() * value.element_size()
        if shard and shard_bytes + nbytes > SHARD_BYTES:
            flush()
        shard[name], shard_bytes, total = value, shard_bytes + nbytes, total + nbytes
        weight_map[name] = count + 1
    flush()
    names = {i: f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)}
    for i, final in names.items():
        (out / f"shard-{i:05d}.safetensors").rename(out / final)
    index = {"metadata": {"total_size": total}, "weight_map": {k: names[v] for k, v in sorted(weight_map.items())}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.dtype = dtype
    config.save_pretrained(out)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary = {
        "source": spec.source,
        "layers": config.num_hidden_layers,
        "params": sum(p.numel() for p in skeleton.parameters()),
        "bytes": total,
        "shards": count,
        "dtype": str(dtype),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log.info(
        "random %s: %d layers, %.2fB params (%s), %.2f GB in %d shards, %.1f s",
        spec.source,
        summary["layers"],
        summary["params"] / 1e9,
        summary["dtype"],
        total / 1e9,
        count,
        summary["seconds"],
    )
    return summary
