"""How sure the numbers are: accuracy intervals, paired differences to the original, flips.

All intervals are 95%.
- Accuracy of one task: the Wilson score interval of k correct out of n (never outside [0, 1], and
  not empty at 0 or n correct, where a bootstrap collapses to a point).
- Average over tasks, paired differences, retention: a bootstrap over questions, within each task
  (tasks keep their sizes), `RESAMPLES` replicates from a fixed seed, percentile interval. Paired:
  both models are scored on the same resampled questions, so what they share cancels. A question's
  pair of outcomes (original right?, pruned right?) is one of four kinds, so resampling n questions
  is drawing the four counts from a multinomial with the observed proportions: exactly the
  question-index bootstrap, at a cost independent of n.
- Perplexity and KL: scipy's percentile bootstrap over the held-out blocks of their ratio estimates (sum
  over the resampled blocks of NLL or KL, over the sum of their tokens).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import StreamlineError

RESAMPLES = 10_000
SEED = 0


def wilson(k: int, n: int) -> list[float]:
    """The 95% Wilson score interval of k successes in n (scipy's)."""
    if n == 0:
        return [math.nan, math.nan]
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [max(0.0, float(ci.low)), min(1.0, float(ci.high))]


def _percentile(x: np.ndarray) -> list[float]:
    lo, hi = np.percentile(x, [2.5, 97.5])
    return [float(lo), float(hi)]


def pair_counts(original: dict[str, bool], pruned: dict[str, bool]) -> np.ndarray:
    """Counts of (original, pruned) correctness: [wrong-wrong, wrong-right, right-wrong, right-right]."""
    if set(original) != set(pruned):
        raise StreamlineError(
            f"samples: the two models answered different questions ({len(original)} vs "
            f"{len(pruned)}); evaluate both with the same tasks and limit"
        )
    counts = np.zeros(4, dtype=np.int64)
    for q, o in original.items():
        counts[2 * int(bool(o)) + int(bool(pruned[q]))] += 1
    return counts


def accuracy_intervals(correct: dict[str, dict[str, bool]], *, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """{"accuracy_ci95": {task: [lo, hi]}, "average_ci95": [lo, hi]} for one model's per-question correctness."""
    rng = np.random.default_rng(seed)
    per_task, draws = {}, []
    for task, flags in correct.items():
        n, k = len(flags), int(sum(bool(f) for f in flags.values()))
        per_task[task] = wilson(k, n)
        draws.append(rng.binomial(n, k / n, size=resamples) / n if n else np.full(resamples, np.nan))
    return {"accuracy_ci95": per_task, "average_ci95": _percentile(np.mean(draws, axis=0)) if draws else None}


def paired_comparison(
    original: dict[str, dict[str, bool]],
    pruned: dict[str, dict[str, bool]],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict:
    """Pruned minus original, per task and on the average over tasks, with paired-bootstrap intervals;
    flips (the fraction of questions whose correctness changed) and retention (average ratio)."""
    missing = set(original) ^ set(pruned)
    if missing:
        raise StreamlineError(f"samples: tasks {sorted(missing)} were evaluated for one model only")
    rng = np.random.default_rng(seed)
    delta, ci, flips, base_draws, pruned_draws = {}, {}, {}, [], []
    for task in original:
        counts = pair_counts(original[task], pruned[task])
        n = int(counts.sum())
        delta[task] = float(counts[1] - counts[2]) / n
        flips[task] = float(counts[1] + counts[2]) / n
        c = rng.multinomial(n, counts / n, size=resamples)
        base_draws.append((c[:, 2] + c[:, 3]) / n)
        pruned_draws.append((c[:, 1] + c[:, 3]) / n)
        ci[task] = _percentile(pruned_draws[-1] - base_draws[-1])
    base_avg, pruned_avg = np.mean(base_draws, axis=0), np.mean(pruned_draws, axis=0)
    ci["average"] = _percentile(pruned_avg - base_avg)
    base_mean = float(np.mean([np.mean(list(v.values())) for v in original.values()]))
    pruned_mean = float(np.mean([np.mean(list(v.values())) for v in pruned.values()]))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = pruned_avg / base_avg
    return {
        "delta": delta,
        "delta_average": pruned_mean - base_mean,
        "delta_ci95": ci,
        "flips_tasks": flips,
        "flips": float(np.mean(list(flips.values()))),
        "retention": pruned_mean / base_mean if base_mean > 0 else None,
        "retention_ci95": _percentile(ratio[np.isfinite(ratio)]) if base_mean > 0 else None,
    }


def excludes_zero(interval: list[float] | None) -> bool:
    return interval is not None and (interval[0] > 0 or interval[1] < 0)


def block_ratio_interval(
    numerator: list[float], tokens: list[int], *, transform=None, resamples: int = 2000, seed: int = SEED
) -> list[float] | None:
    """Percentile bootstrap over blocks (scipy's, blocks resampled with their token counts) of
    sum(numerator) / sum(tokens), optionally transformed (exp for perplexity; monotone, so it maps the ends)."""
    from scipy.stats import bootstrap

    num, den = np.asarray(numerator, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    if num.size == 0 or num.shape != den.shape:
        return None
    if num.size == 1 or np.ptp(num / np.maximum(den, 1)) == 0:  # nothing varies: scipy would return NaN
        lo = hi = float(num.sum() / max(den.sum(), 1))
    else:
        res = bootstrap(
            (num, den),
            lambda a, b, axis=-1: a.sum(axis) / np.maximum(b.sum(axis), 1),
            paired=True,
            vectorized=True,
            n_resamples=resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return [float(transform(lo)), float(transform(hi))] if transform else [lo, hi]
