"""`network: linear`: a training-free linear map in place of n layers, folded into the weights (ReplaceMe).

For the block of layers i..i+n-1, let Y be the residual entering layer i-1's MLP and M that MLP's output
(so h_i = Y + M). A linear map T (H x H) is estimated so that

    Y + M T  ~  h_{i+n}         over the real tokens of the calibration blocks,

with R = h_{i+n} - Y, under one of ReplaceMe's two objectives (`linear.objective`):

    lstsq     T = argmin ||M T - R||^2 (+ ridge ||T||^2), exact, from the normal equations;
    balanced  the same least squares with the outlier tokens (|r_t| > 10x the median of their sample: the
              attention sink, whose ~100x larger states are >99% of ||R||^2 at an early block) and the
              others weighted to `outlier_share` and 1 - outlier_share of ||R||^2 each. Plain least squares
              spends nearly the whole fit on the sink; leaving the sink out of the fit (or weighting every
              token by 1/|r_t|^2) breaks it, and every later token attends to it. Exact, one pass. Measured on
              SmolLM2 (n = 8): KL to the original 0.652 against 1.605 at the default block, 1.38 against
              3.30 at layers 4..11, the same at 19..26, which has no outlier (README, "Which recipe?");
    cosine    T = argmin mean_t (1 - cos(m_t T, r_t)) over the tokens t, as ReplaceMe's code defines it (its
            default, non-"accurate" mode: the cosine of M T against h_{i+n} - Y). Each token weighs the same
            whatever its norm, so the attention sink's ~100x larger states no longer dominate the fit. Found by
            Adam (ReplaceMe's optimiser, lr and 1024-token batches) started from the lstsq map, not from the
            identity as ReplaceMe does: ReplaceMe takes ~80k steps on 8M tokens, a calibration set of 16k
            tokens gives 16 steps an epoch, too few to leave the identity; the lstsq map is already a fit.

T is then folded into layer i-1's MLP output projection (W -> T^T W, b -> b T) and layers i..i+n-1 are removed:
the result is a plain model of the base family with L-n layers and no extra parameter (Shopkhoev et al. 2025,
arXiv 2505.02819).

- The block is the best window of n layers by the removal scores (as `none`), among windows that start at
  layer 1 or later: a block at layer 0 has no MLP before it to fold into.
- Y, M and h_{i+n} are extracted to a Zarr store (one chunk per state and sample, checksummed, resumable),
  then the normal equations are accumulated sample by sample in float64: memory is O(H^2) whatever the
  number of tokens. A killed estimate restarts cleanly: nothing is written before the model, atomically.
- The system is solved by Cholesky; a singular one stops with one line naming the layer and suggesting
  `linear.ridge`; so does an estimate that is not finite.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import progress
from .artifacts import BlockScores, EstimateLog, read_scores
from .errors import StreamlineError
from .manifests import read_store_manifest
from .model_info import ModelInfo
from .ownership import require_owned
from .store import HiddenStore, open_store

log = logging.getLogger(__name__)

OBJECTIVES = ("lstsq", "balanced", "cosine")
OUTLIER_RATIO = 10.0  # |r_t| above this x its sample's median: an outlier token (the rule of train.mse_loss: robust)
BATCH_TOKENS = 1024  # tokens per Adam step of the cosine estimate (ReplaceMe's batch)


def linear_block(removal_scores: BlockScores) -> list[int]:
    """The best window of n layers that starts at layer 1 or later (layer 0 has no MLP before it)."""
    if removal_scores.span != removal_scores.n:
        raise StreamlineError(
            f"network: 'linear' needs the removal scores (windows of n = {removal_scores.n} "
            f"layers), got scores over {removal_scores.span}"
        )
    windows = [w for w in removal_scores.scores if w.start >= 1]
    if not windows:
        raise StreamlineError(f"layer_intervals: {removal_scores.n} leaves no window after layer 0 for 'linear'")
    sign = 1 if removal_scores.higher_is_more_redundant else -1
    best = max(windows, key=lambda w: sign * w.score)
    return list(range(best.start, best.end + 1))


def store_states(block: list[int]) -> list[int | str]:
    """What the estimate reads, in store order: Y and M of layer i-1, and h_{i+n}."""
    i = block[0]
    return [f"y{i - 1}", f"m{i - 1}", block[-1] + 1]


def where(block: list[int]) -> str:
    """The map, named by its layer, for the one-line errors."""
    return f"the map on layer {block[0] - 1}'s MLP output (replacing layers {block[0]}..{block[-1]})"


def _states(store: HiddenStore, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, R = h_{i+n} - Y) over the real tokens of sample n, in float64."""
    valid = store.read_mask(n)
    y, m, target = (store.read(k, n)[valid].double() for k in range(3))
    return m, target - y


@dataclass
class Sums:
    """The normal equations' sums over a set of tokens: M^T M, M^T R, ||R||^2 and the count, in float64."""

    mtm: torch.Tensor
    mtr: torch.Tensor
    rr: float = 0.0
    tokens: int = 0

    def add(self, m: torch.Tensor, r: torch.Tensor) -> None:
        self.mtm += m.T @ m
        self.mtr += m.T @ r
        self.rr += float((r * r).sum())
        self.tokens += m.shape[0]

    def __add__(self, other: Sums) -> Sums:
        return Sums(self.mtm + other.mtm, self.mtr + other.mtr, self.rr + other.rr, self.tokens + other.tokens)


def normal_equations(store: HiddenStore) -> tuple[Sums, Sums]:
    """The sums over the real tokens of every sample, one sample at a time: (outlier tokens, the others)."""
    store.require_complete()
    h = store.hidden.shape[-1]
    outliers, others = (
        Sums(torch.zeros(h, h, dtype=torch.float64), torch.zeros(h, h, dtype=torch.float64)) for _ in "ab"
    )
    for n in progress.bar(range(store.num_samples), desc="linear: normal equations", unit="sample"):
        m, r = _states(store, n)
        norms = r.norm(dim=-1)
        out = norms > OUTLIER_RATIO * norms.median()
        outliers.add(m[out], r[out])
        others.add(m[~out], r[~out])
    return outliers, others


def system(outliers: Sums, others: Sums, objective: str, outlier_share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of the system A T = B: the plain sums, or (balanced) each group's sums scaled so that it holds its
    share of ||R||^2 (total kept, so that linear.ridge means the same under both)."""
    if objective != "balanced" or outliers.rr == 0 or others.rr == 0:  # a group without tokens has rr 0
        total = outliers + others
        return total.mtm, total.mtr
    total = outliers.rr + others.rr
    a, b = outlier_share * total / outliers.rr, (1 - outlier_share) * total / others.rr
    return a * outliers.mtm + b * others.mtm, a * outliers.mtr + b * others.mtr


def solve(mtm: torch.Tensor, mtr: torch.Tensor, ridge: float = 0.0, block: list[int] | None = None) -> torch.Tensor:
    """T = (M^T M + ridge I)^-1 M^T R by Cholesky; one line (naming the layer, given the block) if the system is
    singular."""
    at = f"{where(block)}: " if block else ""
    if not (torch.isfinite(mtm).all() and torch.isfinite(mtr).all()):  # a NaN/inf state poisons every sum
        raise StreamlineError(
            f"linear: {at}the stored hidden states are not finite (an overflow in this dtype); "
            f"extract with dtype: float32"
        )
    a = mtm + ridge * torch.eye(mtm.shape[0], dtype=mtm.dtype)
    chol, info = torch.linalg.cholesky_ex(a)
    if info.item() != 0 or not torch.isfinite(chol).all():
        rank = int(torch.linalg.matrix_rank(mtm))
        hint = float(mtm.diagonal().mean()) * 1e-4
        raise StreamlineError(
            f"linear: {at}the least-squares system is singular (M^T M has rank {rank} of "
            f"{mtm.shape[0]}, ridge {ridge:g}); set linear.ridge > 0, e.g. {hint:.3g}"
        )
    return torch.cholesky_solve(mtr, chol)


def cosine_distance(store: HiddenStore, t: torch.Tensor) -> float:
    """ReplaceMe's cosine objective of a map: the mean over the real tokens of 1 - cos(m_t T, r_t)."""
    total, tokens = 0.0, 0
    for n in range(store.num_samples):
        m, r = _states(store, n)
        total += float((1 - F.cosine_similarity(m @ t.double(), r, dim=-1)).sum())
        tokens += m.shape[0]
    return total / max(tokens, 1)


def cosine_estimate(
    store: HiddenStore, start: torch.Tensor, *, epochs: int, lr: float, block: list[int], seed: int = 0
) -> tuple[torch.Tensor, int]:
    """(T minimising the cosine objective, Adam steps taken), by Adam from `start`, on batches of whole samples
    of about BATCH_TOKENS tokens, read from the store batch by batch (memory: one batch and T), in an order
    drawn from `seed` and the epoch."""
    t = start.float().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([t], lr=lr)
    per_batch = max(1, BATCH_TOKENS // store.hidden.shape[2])  # samples of seq_len tokens
    steps = 0
    for epoch in progress.bar(range(epochs), desc="linear: cosine estimate", unit="epoch"):
        order = torch.randperm(store.num_samples, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for i in range(0, len(order), per_batch):
            m, r = (torch.cat(x).float() for x in zip(*(_states(store, n) for n in order[i : i + per_batch])))
            if not len(m):
                continue
            loss = (1 - F.cosine_similarity(m @ t, r, dim=-1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if not torch.isfinite(t).all():
                raise StreamlineError(
                    f"linear: {where(block)}: the cosine estimate is not finite after {steps} "
                    f"steps (lr {lr:g}); lower linear.lr, or use linear.objective: lstsq"
                )
    return t.detach().double(), steps


def relative_residual(mtm: torch.Tensor, mtr: torch.Tensor, rr: float, t: torch.Tensor) -> float:
    """||R - M T||^2 / ||R||^2 from the accumulated terms (no second pass over the data)."""
    err = rr - 2 * float((t * mtr).sum()) + float((t * (mtm @ t)).sum())
    return max(err, 0.0) / max(rr, 1e-300)


def fold(model, adapter, block: list[int], t: torch.Tensor) -> None:
    """Fold T into layer i-1's MLP output projection (W -> T^T W, b -> b T) and drop the block's layers."""
    proj = adapter.mlp_out_proj(adapter.layers(model)[block[0] - 1])
    with torch.no_grad():
        w = proj.weight.double()  # [H, I]: M = x W^T + b
        proj.weight.copy_((t.T @ w).to(proj.weight.dtype))
        if proj.bias is not None:
            proj.bias.copy_((proj.bias.double() @ t).to(proj.bias.dtype))
    adapter.remove_layers(model, block)


def extract_linear_states(
    model_dir: str | Path, data_dir: str | Path, scores_json: str | Path, store_path: str | Path, **kwargs
) -> dict:
    """The store the estimate reads: Y, M of layer i-1 and h_{i+n}, for the calibration blocks."""
    from .extract import extract_hidden_states

    block = linear_block(read_scores(scores_json))
    return extract_hidden_states(model_dir, data_dir, store_path, split="calib", keep=store_states(block), **kwargs)


def estimate_linear(
    model_dir: str | Path,
    states: str | Path,
    scores_json: str | Path,
    out_dir: str | Path,
    *,
    log_json: str | Path,
    ridge: float = 0.0,
    dtype: str = "float32",
    objective: str = "lstsq",
    epochs: int = 10,
    lr: float = 1e-4,
    seed: int = 0,
    outlier_share: float = 0.5,
) -> EstimateLog:
    """Estimate T from the states store under `objective`, fold it, save the pruned model to out_dir and the
    estimate's log. `epochs`, `lr`, `seed`: the cosine objective's Adam; `outlier_share`: the balanced one's.

    `states`: the store extract-linear wrote, or its manifest. Given the manifest, the log's `seconds` is
    the whole training-free recipe: the store's extraction plus the estimate and the fold.
    """
    from .loading import load_model
    from .pruned import count_params, save_pruned

    if objective not in OBJECTIVES:
        raise StreamlineError(f"linear.objective: unknown objective {objective!r} (allowed: {', '.join(OBJECTIVES)})")
    if not 0 < outlier_share < 1:
        raise StreamlineError(f"linear.outlier_share: {outlier_share!r} is not strictly between 0 and 1")
    require_owned(out_dir, "model directory")
    start = time.time()
    scores = read_scores(scores_json)
    block = linear_block(scores)
    store = open_store(states)
    store_path = store.path
    if store.attrs.get("layers") != store_states(block):
        raise StreamlineError(
            f"{store_path}: holds {store.attrs.get('layers')}, the estimate for block "
            f"{block[0]}..{block[-1]} needs {store_states(block)}; run its extraction again"
        )
    outliers, others = normal_equations(store)
    total = outliers + others
    mtm, mtr, rr, tokens = total.mtm, total.mtr, total.rr, total.tokens
    t = solve(*system(outliers, others, objective, outlier_share), ridge, block)
    steps = 0
    if objective == "cosine":
        t, steps = cosine_estimate(store, t, epochs=epochs, lr=lr, block=block, seed=seed)
    residual = relative_residual(mtm, mtr, rr, t)
    if not math.isfinite(residual) or not torch.isfinite(t).all():
        raise StreamlineError(
            f"linear: {where(block)}: the estimate is not finite; extract in dtype: float32 or set linear.ridge"
        )
    eye = torch.eye(t.shape[0], dtype=t.dtype)
    identity = relative_residual(mtm, mtr, rr, eye)
    cosine, cosine_identity = cosine_distance(store, t), cosine_distance(store, eye)
    model, adapter = load_model(model_dir, dtype=dtype, device="cpu")
    source_params, source_layers = count_params(model), model.config.num_hidden_layers
    fold(model, adapter, block, t)
    extract_seconds = read_store_manifest(states).seconds if Path(states).suffix == ".json" else 0.0
    estimate_seconds = round(time.time() - start, 2)
    seconds = round(estimate_seconds + extract_seconds, 2)
    stats = EstimateLog(
        block=block,
        ridge=ridge,
        tokens=tokens,
        objective=objective,
        outlier_tokens=outliers.tokens,
        outlier_share=outlier_share if objective == "balanced" else None,
        steps=steps,
        relative_residual=residual,
        relative_residual_of_identity=identity,
        cosine_distance=cosine,
        cosine_distance_of_identity=cosine_identity,
        extract_seconds=extract_seconds,
        estimate_seconds=estimate_seconds,
        seconds=seconds,
    )
    fit = {
        "lstsq": f"least squares over {tokens:,} tokens, ridge {ridge:g}",
        "balanced": f"least squares over {tokens:,} tokens, "
        + (
            f"its {outliers.tokens:,} outlier tokens weighted to {outlier_share:g} of the fit"
            if outliers.rr and others.rr
            else "no outlier token (so plain least squares)"
        )
        + f", ridge {ridge:g}",
    }.get(objective) or (
        f"cosine (ReplaceMe) over {tokens:,} tokens, {steps} Adam steps (lr {lr:g}) from the least-squares map "
        f"(ridge {ridge:g})"
    )
    info = ModelInfo(
        name=f"{Path(model_dir).name} minus {scores.n} layers (linear)",
        source_model=str(model_dir),
        source_layers=source_layers,
        source_params=source_params,
        n=scores.n,
        block=block,
        net="linear",
        replacement_layers=0,
        metric=scores.metric,
        dtype=dtype,
        training={
            "linear map": f"{fit}, relative residual {residual:.4g} (1.0 = no better than zero; "
            f"identity T: {identity:.4g}), cosine distance {cosine:.4g} (identity "
            f"T: {cosine_identity:.4g}), folded into layer {block[0] - 1}'s MLP "
            f"output projection"
        },
    )
    save_pruned(model, adapter, out_dir, model_dir, info)
    stats.write(log_json)
    log.info(
        "linear (%s): layers %d..%d replaced by T folded into layer %d (%d tokens, ridge %g): relative residual "
        "%.4g (identity %.4g), cosine distance %.4g (identity %.4g); %d -> %d layers, %.1fM params; %.1f s",
        objective,
        block[0],
        block[-1],
        block[0] - 1,
        tokens,
        ridge,
        residual,
        identity,
        cosine,
        cosine_identity,
        source_layers,
        model.config.num_hidden_layers,
        count_params(model) / 1e6,
        seconds,
    )
    return stats


# --- the commands: streamline extract-linear, streamline linear ---------------------------------------------


def add_extract_arguments(p: argparse.ArgumentParser) -> None:
    from .arguments import add_extraction_arguments

    add_extraction_arguments(p)
    p.add_argument("--scores", required=True, help="removal_scores.json (windows of n layers)")


def run_extract(a: argparse.Namespace) -> None:
    from .arguments import extraction_options

    extract_linear_states(
        a.model,
        a.data,
        a.scores,
        a.out,
        num_samples=a.num_samples,
        **extraction_options(a),
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .arguments import DTYPES, positive_int

    p.add_argument("--model", required=True, help="the original HF model dir")
    p.add_argument(
        "--store",
        required=True,
        help="the store extract-linear wrote, or its manifest (whose "
        "extraction seconds then count in the recipe's time)",
    )
    p.add_argument("--scores", required=True, help="removal_scores.json (windows of n layers)")
    p.add_argument("--out", required=True, help="the pruned model dir to write")
    p.add_argument("--log-json", required=True, help="the estimate's log (estimate_log.json)")
    p.add_argument("--ridge", type=float, default=0.0, help="added to the diagonal of M^T M")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the written model")
    p.add_argument(
        "--objective",
        default="balanced",
        help="lstsq: least squares (exact); balanced: least squares with the outlier tokens (the attention "
        "sink) held to --outlier-share of the fit; cosine: ReplaceMe's mean cosine distance, by Adam from the "
        "least-squares map",
    )
    p.add_argument("--outlier-share", type=float, default=0.5, help="balanced: the outlier tokens' share of the fit")
    p.add_argument("--epochs", type=positive_int, default=10, help="cosine: passes over the calibration blocks")
    p.add_argument("--lr", type=float, default=1e-4, help="cosine: Adam's learning rate")
    p.add_argument("--seed", type=int, default=0, help="cosine: the order of the batches")


def run(a: argparse.Namespace) -> None:
    estimate_linear(
        a.model,
        a.store,
        a.scores,
        a.out,
        log_json=a.log_json,
        ridge=a.ridge,
        dtype=a.dtype,
        objective=a.objective,
        epochs=a.epochs,
        lr=a.lr,
        seed=a.seed,
        outlier_share=a.outlier_share,
    )
