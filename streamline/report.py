"""Report stage: one table over the baseline and every pruned variant, plus plots.

Reads the artifacts the other stages wrote, by the workflow's path contract under `results/`:

    {model}/baseline/eval.json                    the original model (params, layers, accuracy, perplexity)
    {model}/n{n}/scores.json                      block scores (removal_scores.json for plain removal)
    {model}/n{n}/{variant}/eval.json              each variant: 'none' or '{net}-{loss}'
    {model}/n{n}/{variant}/stability.json         baseline vs variant
    {model}/n{n}/{net}-{loss}/train_log.json      training curves (trained variants only)

and writes summary.json (every number, unrounded), summary.md and summary.html (the table, rounded)
and three plots: block scores vs block start, training loss curves, per-task accuracy.
Accuracy is each task's headline metric (plain `acc`, see evaluate.py); stability is the
softmax(sigma)-weighted agreement of correctness (stability.py), averaged over tasks.
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path
from typing import Any

from .errors import StreamlineError
from .io import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)

PLOTS = {
    "block_scores": "block_scores.png",
    "training_loss": "training_loss.png",
    "task_accuracy": "task_accuracy.png",
}

TASK_NAMES = {"arc_challenge": "ARC-c", "arc_easy": "ARC-e", "boolq": "BoolQ", "hellaswag": "HellaSwag",
              "openbookqa": "OBQA", "rte": "RTE", "winogrande": "WinoG"}


def _load(path: Path, what: str) -> dict:
    if not path.is_file():
        raise StreamlineError(f"{path}: {what} not found (run the workflow stage that writes it)")
    return read_json(path)


def _headline(eval_json: dict) -> dict[str, float | None]:
    return {t: r.get("headline", r.get("acc")) for t, r in eval_json["results"].items()}


def _ppl(eval_json: dict) -> float | None:
    p = eval_json.get("perplexity")
    return p.get("value") if isinstance(p, dict) else p


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def collect(results: Path, models: list[str], ns: list[int], variants: list[str]) -> dict[str, Any]:
    """Every row of the table, plus what the plots need, from the artifacts on disk."""
    results = Path(results)
    rows: list[dict[str, Any]] = []
    scores: dict[str, dict[int, dict]] = {}
    removal_scores: dict[str, dict[int, dict]] = {}
    train_logs: list[dict[str, Any]] = []
    tasks: list[str] = []
    for m in models:
        base = _load(results / m / "baseline" / "eval.json", "baseline evaluation")
        tasks += [t for t in base["tasks"] if t not in tasks]
        base_params = base.get("params")
        acc = _headline(base)
        rows.append({
            "model": m, "n": None, "variant": "baseline", "label": f"{m} (baseline)",
            "tasks": acc, "average": _mean([acc.get(t) for t in base["tasks"]]),
            "layers": base.get("num_hidden_layers"), "params": base_params,
            "params_removed_pct": 0.0, "compression_ratio": 1.0,
            "stability": None, "stability_tasks": {}, "perplexity": _ppl(base),
            "limit": base.get("limit"),
        })
        scores[m], removal_scores[m] = {}, {}
        for n in ns:
            ndir = results / m / f"n{n}"
            if any(v != "none" for v in variants):
                scores[m][n] = _load(ndir / "scores.json", "block scores")
            if "none" in variants and (ndir / "removal_scores.json").is_file():
                removal_scores[m][n] = read_json(ndir / "removal_scores.json")
            for v in variants:
                vdir = ndir / v
                ev = _load(vdir / "eval.json", f"evaluation of {m} n={n} {v}")
                st = _load(vdir / "stability.json", f"stability of {m} n={n} {v}")
                info = ev.get("streamline") or {}
                params = ev.get("params") or info.get("params")
                src_params = base_params or info.get("source_params")
                acc = _headline(ev)
                if set(ev["tasks"]) != set(base["tasks"]) or ev.get("limit") != base.get("limit"):
                    log.warning("%s n=%d %s: evaluated on %s (limit %s), baseline on %s (limit %s)", m, n, v,
                                ev["tasks"], ev.get("limit"), base["tasks"], base.get("limit"))
                row = {
                    "model": m, "n": n, "variant": v, "label": f"{m} n={n} {v}",
                    "net": info.get("net", "none" if v == "none" else v.split("-")[0]),
                    "loss": info.get("loss") or (None if v == "none" else v.split("-", 1)[-1]),
                    "block": info.get("block"),
                    "tasks": acc, "average": _mean([acc.get(t) for t in ev["tasks"]]),
                    "layers": ev.get("num_hidden_layers") or info.get("num_hidden_layers"),
                    "params": params,
                    "params_removed_pct": (100.0 * (1 - params / src_params)) if params and src_params else None,
                    "compression_ratio": (src_params / params) if params and src_params else None,
                    "stability": st.get("average"),
                    "stability_tasks": {t: r["stability"] for t, r in st.get("tasks", {}).items()},
                    "stability_legacy": st.get("legacy", False),
                    "perplexity": _ppl(ev),
                    "limit": ev.get("limit"),
                }
                if v != "none" and (vdir / "train_log.json").is_file():
                    tl = read_json(vdir / "train_log.json")
                    row["train"] = {k: tl.get(k) for k in ("initial_val_loss", "best_val_loss", "best_step", "kept",
                                                           "total_steps", "seconds")}
                    train_logs.append({"label": row["label"], "steps": tl.get("steps", []), "val": tl.get("val", []),
                                       "loss": tl.get("loss", row["loss"])})
                rows.append(row)
    return {"tasks": tasks, "rows": rows, "scores": scores, "removal_scores": removal_scores,
            "train_logs": train_logs}


# ---------------------------------------------------------------- formatting

def fmt_params(p: int | None) -> str:
    if p is None:
        return "–"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if p >= scale:
            return f"{p / scale:.{2 if p < 10 * scale else 1}f}{suffix}"
    return str(int(p))


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the main table: one row per model, one column per task."""
    tasks = summary["tasks"]
    header = ["model", "n", "variant"] + [TASK_NAMES.get(t, t) for t in tasks] + [
        "Avg", "layers", "params", "removed %", "ratio", "stability", "ppl"]
    cells = []
    for r in summary["rows"]:
        cells.append([
            r["model"], "–" if r["n"] is None else str(r["n"]), r["variant"],
            *[_pct(r["tasks"].get(t)) for t in tasks],
            _pct(r["average"]),
            "–" if r["layers"] is None else str(r["layers"]),
            fmt_params(r["params"]),
            "–" if r["params_removed_pct"] is None else f"{r['params_removed_pct']:.1f}",
            "–" if r["compression_ratio"] is None else f"{r['compression_ratio']:.2f}x",
            _pct(r["stability"]),
            "–" if r["perplexity"] is None else f"{r['perplexity']:.2f}",
        ])
    return header, cells


def _stability_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    tasks = summary["tasks"]
    header = ["model", "n", "variant"] + [TASK_NAMES.get(t, t) for t in tasks] + ["Avg"]
    cells = [[r["model"], str(r["n"]), r["variant"], *[_pct(r["stability_tasks"].get(t)) for t in tasks],
              _pct(r["stability"])] for r in summary["rows"] if r["n"] is not None]
    return header, cells


def _markdown_table(header: list[str], cells: list[list[str]]) -> str:
    align = ["---" if i < 3 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _html_table(header: list[str], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


NOTES = ("Accuracy: lm-eval `acc` (%) per task, zero-shot{limit}. Avg: mean over the tasks. "
         "removed %: parameters removed relative to the original model; ratio: original / pruned parameters. "
         "Stability (%): softmax(σ)-weighted agreement of the pruned and original model's correctness, "
         "averaged over tasks. ppl: token perplexity on the held-out validation blocks.")


def _notes(summary: dict[str, Any]) -> str:
    limits = {r.get("limit") for r in summary["rows"]}
    limit = next(iter(limits)) if len(limits) == 1 else None
    return NOTES.format(limit="" if limit is None else f", first {limit} questions per task" if isinstance(limit, int)
                        else f", {limit:g} of each task")


def markdown(summary: dict[str, Any]) -> str:
    parts = ["# streamline summary", "", _markdown_table(*table(summary)), "", _notes(summary), ""]
    st = _stability_table(summary)
    if st[1]:
        parts += ["## Stability per task (%)", "", _markdown_table(*st), ""]
    trained = [r for r in summary["rows"] if r.get("train")]
    if trained:
        parts += ["## Training", "", _markdown_table(
            ["model", "n", "variant", "initial val loss", "best val loss", "best step", "steps", "kept"],
            [[r["model"], str(r["n"]), r["variant"], f"{r['train']['initial_val_loss']:.4g}",
              f"{r['train']['best_val_loss']:.4g}", str(r["train"].get("best_step")),
              str(r["train"].get("total_steps")), str(r["train"].get("kept"))] for r in trained]), ""]
    return "\n".join(parts)


def html_page(summary: dict[str, Any]) -> str:
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin:1em 0}"
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "th:nth-child(-n+3),td:nth-child(-n+3){text-align:left}th{background:#eee}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>streamline summary</title>"
             f"<style>{style}</style></head><body>", "<h2>streamline summary</h2>", _html_table(*table(summary)),
             f"<p>{html.escape(_notes(summary))}</p>"]
    st = _stability_table(summary)
    if st[1]:
        parts += ["<h3>Stability per task (%)</h3>", _html_table(*st)]
    return "\n".join(parts + ["</body></html>"]) + "\n"


# ---------------------------------------------------------------- plots

def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)


def plot_block_scores(summary: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    metric = None
    for m, by_n in summary["scores"].items():
        for n, s in sorted(by_n.items()):
            metric = s.get("metric", metric)
            xs = [b["start"] for b in s["scores"]]
            line, = ax.plot(xs, [b["score"] for b in s["scores"]], marker=".", label=f"{m} n={n} (span {s['span']})")
            best = s["best_start"]
            ax.plot([best], [s["scores"][xs.index(best)]["score"]], "*", ms=12, color=line.get_color())
        for n, s in sorted(summary["removal_scores"].get(m, {}).items()):
            xs = [b["start"] for b in s["scores"]]
            line, = ax.plot(xs, [b["score"] for b in s["scores"]], ls="--", alpha=0.7,
                            label=f"{m} n={n} removal (span {s['span']})")
            best = s["best_start"]
            ax.plot([best], [s["scores"][xs.index(best)]["score"]], "*", ms=10, color=line.get_color(), alpha=0.7)
    if not ax.lines:
        ax.text(0.5, 0.5, "no block scores", ha="center", va="center", transform=ax.transAxes)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("block start layer")
    ax.set_ylabel(f"block score ({metric or 'cosine'})")
    ax.set_title("Block redundancy (★ = block replaced)")
    if ax.lines:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def plot_training(summary: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    logs = summary["train_logs"]
    k = max(1, len(logs))
    cols = min(k, 3)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(logs):]:
        ax.axis("off")
    if not logs:
        axes[0, 0].text(0.5, 0.5, "no trained variants", ha="center", va="center", transform=axes[0, 0].transAxes)
    for ax, tl in zip(axes.flat, logs):
        if tl["steps"]:
            ax.plot([s["step"] for s in tl["steps"]], [s["loss"] for s in tl["steps"]], label="train", alpha=0.8)
        if tl["val"]:
            ax.plot([v["step"] for v in tl["val"]], [v["loss"] for v in tl["val"]], "o--", label="val")
        ax.set_title(tl["label"], fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{tl.get('loss') or ''} loss".strip())
        losses = [s["loss"] for s in tl["steps"] + tl["val"] if s["loss"] is not None]
        if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Training loss of the replacement network")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_accuracy(summary: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    tasks = summary["tasks"]
    groups = [TASK_NAMES.get(t, t) for t in tasks] + ["Avg"]
    rows = summary["rows"]
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(groups) + 0.25 * len(rows) * len(groups)), 4))
    for i, r in enumerate(rows):
        vals = [r["tasks"].get(t) for t in tasks] + [r["average"]]
        vals = [np.nan if v is None else 100 * v for v in vals]
        ax.bar(x - 0.4 + width * (i + 0.5), vals, width, label=r["label"],
               color="black" if r["variant"] == "baseline" else None, alpha=0.85)
    ax.set_xticks(x, groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Zero-shot accuracy: baseline vs pruned variants")
    ax.legend(fontsize=8, ncol=min(4, len(rows)), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------- entry point

def report(results: Path, *, models: list[str], ns: list[int], variants: list[str], out_json: Path, out_md: Path,
           plots_dir: Path, out_html: Path | None = None) -> dict[str, Any]:
    summary = collect(Path(results), models, ns, variants)
    plots_dir = Path(plots_dir)
    plot_block_scores(summary, plots_dir / PLOTS["block_scores"])
    plot_training(summary, plots_dir / PLOTS["training_loss"])
    plot_accuracy(summary, plots_dir / PLOTS["task_accuracy"])
    out = {"tasks": summary["tasks"], "rows": summary["rows"],
           "plots": {k: str(plots_dir / v) for k, v in PLOTS.items()}}
    atomic_write_text(out_md, markdown(summary))
    if out_html is not None:
        atomic_write_text(out_html, html_page(summary))
    atomic_write_json(out_json, out)  # last: the table is complete once summary.json exists
    log.info("report: %d rows over %d tasks -> %s", len(summary["rows"]), len(summary["tasks"]), out_md)
    return out
