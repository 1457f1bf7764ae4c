"""The report's plots (block scores, training curves, per-task accuracy, the Pareto plot), drawn without a
display and written atomically."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .artifacts import BlockScores, Row, TrainStep
from .atomic import atomic_path
from .eval_tasks import TASK_LABELS
from .layout import last_loss

TRAIN_LABELS = {"mse": r"MSE to $h_{b+n+k}$", "llm": "next-token loss", "kd": "KL to the original"}
VAL_LABELS = {"ce": "next-token loss (held out)", "kl": "KL to the original (held out)", "mse": "MSE (held out)"}


@dataclass(frozen=True)
class Curve:
    """A trained row's training curve."""

    label: str
    steps: list[TrainStep]
    val: list[dict]
    loss: str | None  # the loss trained on (mse, llm, kd, mse+kd)
    select: str = "loss"  # the validation metric that picks the kept state (ce: held-out next-token loss)


@dataclass(frozen=True)
class Collected:
    """What the report's tables and plots are drawn from."""

    tasks: list[str]
    rows: list[Row]
    scores: list[BlockScores]
    curves: list[Curve]


def fmt_params(p: int | None) -> str:
    if p is None:
        return "–"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if p >= scale:
            return f"{p / scale:.{2 if p < 10 * scale else 1}f}{suffix}"
    return str(int(p))


@contextmanager
def figure(path: str | Path, nrows: int = 1, ncols: int = 1, dpi: int = 110, **subplots: Any) -> Iterator[tuple]:
    """`with figure(path, figsize=...) as (fig, ax):` draw; the file appears only if drawing finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(nrows, ncols, **subplots)
    try:
        yield fig, axes
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)


def plot_block_scores(summary: Collected, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    with figure(path, figsize=(7, 4)) as (fig, ax):
        metric = None
        for s in sorted(summary.scores, key=lambda s: (s.n, s.span)):
            metric = s.metric
            xs = [w.start for w in s.scores]
            removal = s.span == s.n  # plain removal scores windows of n; replacements span n + k
            (line,) = ax.plot(
                xs,
                [w.score for w in s.scores],
                marker="." if not removal else None,
                ls="--" if removal else "-",
                alpha=0.7 if removal else 1.0,
                label=f"n={s.n} {'removal ' if removal else ''}(span {s.span})",
            )
            ax.plot([s.best_start], [s.best_score], "*", ms=12, color=line.get_color())
        if not ax.lines:
            ax.text(0.5, 0.5, "no block scores", ha="center", va="center", transform=ax.transAxes)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("block start layer")
        ax.set_ylabel(f"block score ({metric or 'cosine'})")
        ax.set_title("Block redundancy (★ = block replaced)")
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)


def plot_training(summary: Collected, path: Path) -> None:
    logs = summary.curves
    k = max(1, len(logs))
    cols = min(k, 3)
    rows = math.ceil(k / cols)
    with figure(path, rows, cols, figsize=(4.5 * cols, 3.3 * rows), squeeze=False) as (fig, axes):
        for ax in axes.flat[len(logs) :]:
            ax.axis("off")
        if not logs:
            axes[0, 0].text(0.5, 0.5, "no trained variants", ha="center", va="center", transform=axes[0, 0].transAxes)
        for ax, tl in zip(axes.flat, logs):
            # the training loss and the validation metric that picks the kept state are different quantities
            # (an MSE run is judged by the held-out next-token loss): one axis each
            val_ax = ax.twinx()
            if tl.steps:
                ax.plot([s.step for s in tl.steps], [s.loss for s in tl.steps], alpha=0.8, color="C0")
            if tl.val:
                val_ax.plot([v["step"] for v in tl.val], [v["loss"] for v in tl.val], "o--", color="C1")
            ax.set_title(tl.label, fontsize=9)
            ax.set_xlabel("optimizer step")
            stage = last_loss(tl.loss or "loss")
            ax.set_ylabel(f"train {TRAIN_LABELS.get(stage, stage)}", color="C0")
            val_ax.set_ylabel(f"validation {VAL_LABELS.get(tl.select, tl.select)}", color="C1")
            for axis, values in ((ax, [s.loss for s in tl.steps]), (val_ax, [v["loss"] for v in tl.val])):
                if values and min(values) > 0 and max(values) / min(values) > 20:
                    axis.set_yscale("log")
            ax.grid(alpha=0.3)
        fig.suptitle(
            "Training of the replacement network: its loss (left) and the validation that picks the kept state (right)",
            fontsize=10,
        )
        fig.tight_layout()


def _errorbar(ax, x: float, y: float, ci: list[float] | None, scale: float = 1.0, **kw) -> None:
    yerr = None if ci is None else [[max(0.0, y - ci[0] * scale)], [max(0.0, ci[1] * scale - y)]]
    ax.errorbar([x], [y], yerr=yerr, fmt="o", capsize=3, **kw)


def plot_accuracy(summary: Collected, path: Path) -> None:
    import numpy as np

    tasks = summary.tasks
    groups = [TASK_LABELS.get(t, t) for t in tasks] + ["Avg"]
    rows = summary.rows
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(groups))
    size = (max(6, 1.1 * len(groups) + 0.25 * len(rows) * len(groups)), 4)
    with figure(path, figsize=size) as (fig, ax):
        for i, r in enumerate(rows):
            vals = [r.tasks.get(t) for t in tasks] + [r.average]
            cis = [r.accuracy_ci95.get(t) for t in tasks] + [r.average_ci95]
            vals = np.array([np.nan if v is None else 100 * v for v in vals])
            err = np.array([[v - 100 * c[0], 100 * c[1] - v] if c else [0, 0] for v, c in zip(vals, cis)]).T
            ax.bar(
                x - 0.4 + width * (i + 0.5),
                vals,
                width,
                yerr=np.clip(err, 0, None),
                capsize=2,
                label=r.label,
                color="black" if not r.pruned else None,
                alpha=0.85,
                error_kw={"elinewidth": 0.8, "alpha": 0.6},
            )
        ax.set_xticks(x, groups)
        ax.set_ylabel("accuracy (%), 95% interval")
        ax.set_title("Zero-shot accuracy: baseline vs pruned variants")
        ax.legend(fontsize=8, ncol=min(4, len(rows)), loc="upper center", bbox_to_anchor=(0.5, -0.1))
        ax.grid(axis="y", alpha=0.3)


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats: at most as many parameters and a better y."""
    front = []
    for i, (x, y) in enumerate(points):
        better = (lambda a, b: a >= b) if higher_is_better else (lambda a, b: a <= b)
        if not any(j != i and xo <= x and better(yo, y) and (xo, yo) != (x, y) for j, (xo, yo) in enumerate(points)):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(summary: Collected, path: Path) -> None:
    """Retention and perplexity against parameters, every row with its 95% interval; Pareto front joined."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

    rows = [r for r in summary.rows if r.params]
    panels = (
        ("retention", "retention_ci95", "accuracy retention (%)", 100.0, True),
        ("perplexity", "perplexity_ci95", "held-out perplexity", 1.0, False),
    )
    with figure(path, 1, 2, figsize=(11, 4.2)) as (fig, axes):
        for ax, (key, ci_key, ylabel, scale, higher) in zip(axes, panels):
            shown = [r for r in rows if getattr(r, key) is not None]
            pts = [(r.params, getattr(r, key) * scale) for r in shown]
            for (x, y), r in zip(pts, shown):
                _errorbar(ax, x, y, getattr(r, ci_key), scale, color="black" if not r.pruned else None)
                s = (r.speedup or {}).get("prefill")
                noise = " (noise)" if r.pruned and r.speed_noise else ""
                ax.annotate(
                    r.variant + (f"\n{s:.2f}x prefill{noise}" if s and r.pruned else ""),
                    (x, y),
                    textcoords="offset points",
                    xytext=(6, 4),
                    fontsize=7,
                )
            front = pareto_front(pts, higher)
            if len(front) > 1:
                ax.step(
                    [pts[i][0] for i in front],
                    [pts[i][1] for i in front],
                    where="post",
                    color="grey",
                    ls=":",
                    lw=1,
                    label="Pareto front",
                )
                ax.legend(fontsize=8)
            ys = [y for _, y in pts]
            if key == "perplexity" and ys and min(ys) > 0 and max(ys) / min(ys) > 20:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_params(int(v)) if v > 0 else "0"))
            ax.set_xlabel("parameters")
            ax.set_ylabel(ylabel + ", 95% interval")
            ax.grid(alpha=0.3)
        fig.suptitle("Size against quality: every variant (intervals: paired bootstrap over questions or blocks)")
        fig.tight_layout()
