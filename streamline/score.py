"""Score every contiguous block of layers by how alike its input and output hidden states are.

A block that starts at layer i and spans `span` layers maps h_i to h_{i+span}. LLM-Streamline
replaces span = n+1 layers by one network (n removed net); plain removal drops span = n layers.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import torch

from . import progress
from .artifacts import BlockScores, WindowScore
from .errors import StreamlineError
from .store import HiddenStore, open_store

log = logging.getLogger(__name__)

METRICS = {
    # name: (token-wise value from cosine, higher_is_more_redundant)
    "cosine": (lambda cos: cos, True),  # the paper's score (reference code rescales to 0.5+0.5cos: same argmax)
    "angular": (lambda cos: torch.arccos(cos.clamp(-1, 1)) / math.pi, False),  # Gromov et al.
}


def block_scores(store: HiddenStore, span: int, metric: str = "cosine") -> tuple[np.ndarray, int]:
    """Mean over all real (unpadded) tokens of the metric between h_i and h_{i+span}, for every i."""
    if metric not in METRICS:
        raise StreamlineError(f"metric: unknown metric '{metric}' (allowed: {', '.join(METRICS)})")
    num_states = store.hidden.shape[0]
    if not 1 <= span < num_states:
        raise StreamlineError(
            f"layer_intervals: a block of {span} layers does not fit a model with {num_states - 1} layers"
        )
    fn = METRICS[metric][0]
    total = torch.zeros(num_states - span, dtype=torch.float64)
    tokens = 0
    for n in progress.bar(range(store.num_samples), desc="score", unit="sample"):
        hs = store.read_sample(n).float()  # [K, T, H]
        valid = store.read_mask(n)  # [T]
        hs = hs[:, valid]
        cos = torch.nn.functional.cosine_similarity(hs[:-span], hs[span:], dim=-1)  # [K-span, T']
        total += fn(cos).double().sum(dim=1)
        tokens += int(valid.sum())
    return (total / max(tokens, 1)).numpy(), tokens


def score(
    store_path: str | Path,
    n: int,
    out_json: str | Path,
    out_png: str | Path | None = None,
    *,
    metric: str = "cosine",
    span: int | None = None,
) -> BlockScores:
    """Write the scores of every block of `span` (default n+1) layers and pick the most redundant one.

    `store_path`: the calibration store, or its manifest."""
    store = open_store(store_path)
    store_path = store.path
    num_layers = store.attrs.get("num_layers")
    if not isinstance(num_layers, int) or store.attrs.get("layers") != list(range(num_layers + 1)):
        raise StreamlineError(f"{store_path}: scoring needs every layer's hidden state (a calibration store)")
    span = n + 1 if span is None else span
    if not 1 <= n < num_layers:
        raise StreamlineError(
            f"layer_intervals: {n} is out of range for a {num_layers}-layer model (allowed: 1..{num_layers - 1})"
        )
    if not n <= span <= num_layers:
        raise StreamlineError(
            f"span: {span} layers cannot hold a block of n = {n} in a {num_layers}-layer model "
            f"(allowed: {n}..{num_layers})"
        )
    values, tokens = block_scores(store, span, metric)
    if not np.isfinite(values).all():  # np.argmax would pick the first NaN
        i = int(np.flatnonzero(~np.isfinite(values))[0])
        raise StreamlineError(
            f"score: the {metric} of block {i}..{i + span - 1} is {values[i]} (the hidden states "
            f"overflow in {store.dtype}); extract in dtype: float32 or bfloat16"
        )
    higher_better = METRICS[metric][1]
    best = int(np.argmax(values) if higher_better else np.argmin(values))
    block = list(range(best, best + span))
    result = BlockScores(
        metric=metric,
        higher_is_more_redundant=higher_better,
        n=n,
        span=span,
        num_layers=num_layers,
        samples=store.num_samples,
        tokens=tokens,
        scores=[WindowScore(start=i, end=i + span - 1, score=float(v)) for i, v in enumerate(values)],
        best_start=best,
        best_score=float(values[best]),
        block=block,  # layers best..best+span-1, replaced by one network (or dropped when span == n)
        removed_layers=block[1:] if span == n + 1 else block,  # what disappears if layer `best` is kept
        layers_after=num_layers - n,
    )
    result.write(out_json)
    log.info(
        "n=%d: best block starts at layer %d (layers %d..%d, %s %.4f); %d -> %d layers",
        n,
        best,
        block[0],
        block[-1],
        metric,
        values[best],
        num_layers,
        num_layers - n,
    )
    if out_png:
        plot_scores(result, out_png)
    return result


def plot_scores(result: BlockScores, out_png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts = [w.start for w in result.scores]
    values = [w.score for w in result.scores]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(starts, values, marker="o", ms=3)
    ax.axvline(result.best_start, color="tab:red", ls="--", lw=1)
    ax.scatter(
        [result.best_start],
        [result.best_score],
        color="tab:red",
        zorder=3,
        label=f"best: layers {result.block[0]}..{result.block[-1]}",
    )
    ax.set_xlabel("block start layer i")
    label = r"mean cosine($h_i$, $h_{i+%d}$)" if result.metric == "cosine" else r"angular distance($h_i$, $h_{i+%d}$)"
    ax.set_ylabel(label % result.span)
    ax.set_title(f"Block scores, n={result.n} ({result.num_layers} layers)")
    ax.legend(loc="best")
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out_png).with_name(Path(out_png).name + ".partial.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out_png)


# --- the command: streamline score --------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="the calibration store, or its manifest")
    p.add_argument("--n", type=int, required=True, help="layers removed (layer_intervals)")
    p.add_argument("--metric", default="cosine", choices=["cosine", "angular"], help="how alike two states are")
    p.add_argument("--span", type=int, help="layers per block (default n+1; n for plain removal)")
    p.add_argument("--out", required=True, help="scores.json")
    p.add_argument("--plot", help="also draw the scores (a .png)")


def run(a: argparse.Namespace) -> None:
    score(a.store, a.n, a.out, a.plot, metric=a.metric, span=a.span)
