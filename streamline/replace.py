"""Replace the most redundant block by one lightweight network (or just drop it), untrained.

For a block of layers b..b+n (from scores.json), slot b receives the network and layers
b+1..b+n are deleted, so the model keeps L-n layers:
- transformer: layer b itself, i.e. a decoder layer of the model's own type initialised from
  the first layer of the block (also for OPT, whose weights the reference code never copied);
- ffn / swiglu: a residual MLP, initialised from layer b's own MLP when the family's MLP has
  that shape (Llama: swiglu, OPT: ffn), otherwise with a zero output projection (identity);
- none: plain removal of the n layers b..b+n-1 whose input and output are most alike
  (scores over windows of n, as ShortGPT and Gromov et al. do).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .errors import StreamlineError
from .io import read_json
from .models import load_model
from .networks import build_network
from .pruned import count_params, save_pruned

log = logging.getLogger(__name__)

NETS = ("transformer", "ffn", "swiglu", "none")


def removed_block(scores: dict, net: str) -> list[int]:
    """The layers that disappear or are replaced, checked against the kind of scores given."""
    expected_span = scores["n"] if net == "none" else scores["n"] + 1
    if scores["span"] != expected_span:
        raise StreamlineError(f"network: '{net}' needs block scores over {expected_span} layers, "
                              f"got scores over {scores['span']}")
    return scores["block"]


def make_network(adapter, model, net: str, index: int, seed: int) -> nn.Module:
    layer = adapter.layers(model)[index]
    spec = adapter.network_spec(model.config, net)
    torch.manual_seed(seed)
    network = build_network(spec).to(dtype=next(layer.parameters()).dtype)
    if adapter.mlp_net == net:
        adapter.copy_mlp(layer, network)
    else:  # start as the identity: the pruned model begins as plain removal and training improves on it
        last = network.down if net == "ffn" else network.down_proj
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)
    model.config.streamline = {"replacement": {**spec, "index": index}, "base_architecture": type(model).__name__,
                               "base_model_type": model.config.model_type}
    return network


def replace(model_dir: str | Path, scores_json: str | Path, out_dir: str | Path, *, net: str,
            dtype: str = "float32", seed: int = 42) -> dict:
    if net not in NETS:
        raise StreamlineError(f"network: unknown network '{net}' (allowed: {', '.join(NETS)})")
    scores = read_json(scores_json)
    block = removed_block(scores, net)
    model, adapter = load_model(model_dir, dtype=dtype, device="cpu")
    source_params, source_layers = count_params(model), model.config.num_hidden_layers
    if net == "none":
        adapter.remove_layers(model, block)
    else:
        if net != "transformer":
            adapter.layers(model)[block[0]] = make_network(adapter, model, net, block[0], seed)
        adapter.remove_layers(model, block[1:])
    info = {"name": f"{Path(model_dir).name} minus {scores['n']} layers ({net})", "source_model": str(model_dir),
            "source_layers": source_layers, "source_params": source_params, "n": scores["n"], "block": block,
            "net": net, "metric": scores["metric"], "loss": None, "seed": seed, "dtype": dtype}
    save_pruned(model, adapter, out_dir, model_dir, info)
    params = count_params(model)
    log.info("%s: layers %d..%d -> %s; %d -> %d layers, %.1fM -> %.1fM params; saved to %s", net, block[0],
             block[-1], "removed" if net == "none" else f"one {net}", source_layers,
             model.config.num_hidden_layers, source_params / 1e6, params / 1e6, out_dir)
    return info
