"""Loading models and picking devices, the same way in every stage."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedModel

from .adapters import Adapter, get_adapter
from .errors import StreamlineError
from .pruned import TORCH_DTYPES, count_params, load_pruned, read_config

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    """auto: the GPU if there is one, else the CPU; a device asked for must exist here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise StreamlineError(f"device: unknown device {device!r} (allowed: auto, cpu, cuda, cuda:N, mps)") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }.get(dev.type, False)
    if not available:
        raise StreamlineError(f"device: {device} is not available on this machine (use auto or cpu)")
    return dev


def load_config(model_dir: str | Path) -> PretrainedConfig:
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise StreamlineError(f"model dir: {model_dir} has no config.json (not a Hugging Face model directory)")
    return read_config(model_dir)


def load_model(
    model_dir: str | Path, dtype: str = "float32", device: str = "auto", attn: str = "sdpa"
) -> tuple[PreTrainedModel, Adapter]:
    config = load_config(model_dir)
    adapter = get_adapter(config.model_type)
    dev = resolve_device(device)
    model = load_pruned(model_dir, dtype=TORCH_DTYPES[dtype], attn_implementation=attn)
    model.eval().to(dev)
    n_params = count_params(model)
    where = f"{dev} ({torch.get_num_threads()} threads)" if dev.type == "cpu" else str(dev)
    log.info(
        "loaded %s (%s, %d layers, %.1fM params, %s) on %s",
        Path(model_dir).name,
        config.model_type,
        config.num_hidden_layers,
        n_params / 1e6,
        dtype,
        where,
    )
    return model, adapter


def _weights_with_prefix(model_dir: Path, prefixes: list[str]) -> dict[str, torch.Tensor]:
    """Tensors whose names start with one of `prefixes`, read from the safetensors files alone."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    state = {}
    for name in files:
        with safe_open(model_dir / name, framework="pt") as f:
            state.update({key: f.get_tensor(key) for key in f.keys() if key.startswith(tuple(prefixes))})
    return state


def load_layers(model_dir: str | Path, indices: list[int], dtype: str = "float32") -> torch.nn.ModuleList:
    """Decoder layers `indices` of a model dir, without loading (or allocating) the rest of the model."""
    from transformers import AutoModelForCausalLM

    from .weights import verify

    model_dir = Path(model_dir)
    config = load_config(model_dir)
    verify(model_dir)
    adapter = get_adapter(config.model_type)
    with torch.device("meta"):  # a skeleton costs no memory; only the layers asked for are materialised
        skeleton = AutoModelForCausalLM.from_config(config, dtype=TORCH_DTYPES[dtype])
    layers = torch.nn.ModuleList([adapter.layers(skeleton)[i] for i in indices]).to_empty(device="cpu")
    prefixes = [f"{adapter.layers_path}.{i}." for i in indices]
    state = _weights_with_prefix(model_dir, prefixes)
    for j, (i, prefix) in enumerate(zip(indices, prefixes)):
        layers[j].load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    return layers.to(TORCH_DTYPES[dtype])


def model_fingerprint(model_dir: str | Path) -> str:
    """Identity of a model dir by its content (config and weights); see weights.py."""
    from .weights import fingerprint

    return fingerprint(model_dir)
