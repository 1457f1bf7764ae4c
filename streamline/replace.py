"""Replace the most redundant block by a lightweight network (or just drop it), untrained.

For a block of layers b..b+n+k-1 (from the scores of spans n+k), the network takes slots b..b+k-1
and the other n layers are deleted, so the model keeps L-n layers:
- transformer (k layers, default 1): layers b..b+k-1 themselves, i.e. decoder layers of the model's
  own type initialised from the first k layers of the block (also for OPT, whose weights the
  reference code never copied); the released Llama-3.1-5.4B keeps k = 2;
- ffn / swiglu: a residual MLP, initialised from layer b's own MLP when the family's MLP has
  that shape (Llama: swiglu, OPT: ffn), otherwise with a zero output projection (identity);
- none: plain removal of the n layers b..b+n-1 whose input and output are most alike
  (scores over windows of n, as ShortGPT and Gromov et al. do).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch import nn

from . import layout
from .artifacts import BlockScores, read_scores
from .errors import StreamlineError
from .loading import load_model
from .model_info import ModelInfo
from .networks import build_network
from .ownership import require_owned
from .pruned import count_params, save_pruned

log = logging.getLogger(__name__)

NETS = tuple(n for n, net in layout.NETWORKS.items() if net.built_by == "replace")  # linear: by linear.py


def removed_block(scores: BlockScores, net: str, layers: int = 1) -> list[int]:
    """The layers that disappear or are replaced, checked against the kind of scores given."""
    expected_span = scores.n if net == "none" else scores.n + layers
    if scores.span != expected_span:
        raise StreamlineError(
            f"network: '{net}' with {layers} replacement layer(s) needs block scores over "
            f"{expected_span} layers, got scores over {scores.span}"
        )
    return scores.block


def make_network(adapter, model, net: str, index: int, seed: int) -> nn.Module:
    layer = adapter.layers(model)[index]
    spec = adapter.network_spec(model.config, net)
    torch.manual_seed(seed)
    network = build_network(spec).to(dtype=next(layer.parameters()).dtype)
    if adapter.mlp_net == net:
        adapter.copy_mlp(layer, network)
    else:  # start as the identity: the pruned model begins as plain removal and training improves on it
        last = network.out_proj
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)
    model.config.streamline = {
        "replacement": {**spec, "index": index},
        "base_architecture": type(model).__name__,
        "base_model_type": model.config.model_type,
    }
    return network


def replace(
    model_dir: str | Path,
    scores_json: str | Path,
    out_dir: str | Path,
    *,
    net: str,
    layers: int = 1,
    dtype: str = "float32",
    seed: int = 42,
) -> ModelInfo:
    """`layers` (k) transformer layers kept; ffn, swiglu and none take k = 1 (one network, or nothing)."""
    if net not in NETS:
        raise StreamlineError(f"network: unknown network '{net}' (allowed: {', '.join(NETS)})")
    if layers < 1 or (layers > 1 and layout.NETWORKS[net].kept != "layers"):  # the others: one network, or none
        raise StreamlineError(
            f"replacement_layers: {layers} is not allowed with network '{net}' "
            f"(transformer: k >= 1; ffn, swiglu, none: 1)"
        )
    require_owned(out_dir, "model directory")  # before any work: a user's directory is never replaced
    scores = read_scores(scores_json)
    block = removed_block(scores, net, layers)
    model, adapter = load_model(model_dir, dtype=dtype, device="cpu")
    source_params, source_layers = count_params(model), model.config.num_hidden_layers
    row = layout.NETWORKS[net]
    kept = 0 if row.free else layers
    if row.custom:  # a network of streamline's own in the block's first slot; else the block's own layers
        adapter.layers(model)[block[0]] = make_network(adapter, model, net, block[0], seed)
    adapter.remove_layers(model, block[kept:])
    label = net if layers == 1 else f"{net} x{layers}"
    info = ModelInfo(
        name=f"{Path(model_dir).name} minus {scores.n} layers ({label})",
        source_model=str(model_dir),
        source_layers=source_layers,
        source_params=source_params,
        n=scores.n,
        block=block,
        net=net,
        replacement_layers=kept,
        metric=scores.metric,
        dtype=dtype,
        seed=seed,
    )
    info = save_pruned(model, adapter, out_dir, model_dir, info)
    params = count_params(model)
    log.info(
        "%s: layers %d..%d -> %s; %d -> %d layers, %.1fM -> %.1fM params; saved to %s",
        net,
        block[0],
        block[-1],
        "removed"
        if not kept
        else f"one {net}"
        if row.custom
        else f"layers {block[0]}..{block[0] + kept - 1} kept as the {label} network",
        source_layers,
        model.config.num_hidden_layers,
        source_params / 1e6,
        params / 1e6,
        out_dir,
    )
    return info


# --- the command: streamline replace ------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .arguments import DTYPES
    from .layout import NETWORKS

    p.add_argument("--model", required=True, help="the original HF model dir")
    p.add_argument("--scores", required=True, help="scores.json naming the best block")
    p.add_argument(
        "--net",
        required=True,
        choices=[n for n, net in NETWORKS.items() if net.built_by == "replace"],
        help="the network in the block's place",
    )
    p.add_argument("--layers", type=int, default=1, help="k: transformer layers kept (the scores must span n+k)")
    p.add_argument("--out", required=True, help="the replaced (untrained) model dir to write")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the written model")
    p.add_argument("--seed", type=int, default=42, help="initialisation of a new network (ffn, swiglu)")


def run(a: argparse.Namespace) -> None:
    replace(a.model, a.scores, a.out, net=a.net, layers=a.layers, dtype=a.dtype, seed=a.seed)
