"""The report's words and tables: summary.md and summary.html from the rows report.py collected. Nothing
here computes a number; it rounds and words what the rows hold (which differences are within noise, the
warnings, which speed figures are noise)."""

from __future__ import annotations

import html
import math

from . import stats
from .artifacts import Row, VariantRow
from .eval_tasks import TASK_LABELS
from .plots import Collected, fmt_params
from .rounds import spans

# ---------------------------------------------------------------- words


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _ci_pts(ci: list[float] | None) -> str:
    return "–" if ci is None else f"[{_pts(ci[0])}, {_pts(ci[1])}]"


def noise_words(row: VariantRow, tasks: list[str]) -> str:
    """One sentence per signal: which differences to the original are within noise."""
    beyond = [t for t in tasks if stats.excludes_zero(row.delta_ci95.get(t))]
    n_q = sorted(set(row.questions.values()))
    per = f"{n_q[0]} questions per task" if len(n_q) == 1 else "the questions evaluated"
    if beyond:
        acc = (
            "beyond noise (the 95% interval excludes 0): "
            + ", ".join(f"{TASK_LABELS.get(t, t)} {_pts(row.delta[t])} {_ci_pts(row.delta_ci95[t])}" for t in beyond)
            + (
                f"; the other {len(tasks) - len(beyond)} tasks are within noise"
                if len(tasks) - len(beyond) > 1
                else "; the other task is within noise"
                if len(tasks) > len(beyond)
                else ""
            )
        )
    else:
        acc = f"no task's accuracy difference is distinguishable from noise at {per} (every 95% interval contains 0)"
    avg_ci = row.delta_ci95["average"]
    avg = f"the average changes by {_pts(row.delta_average)} points {_ci_pts(avg_ci)}, " + (
        "beyond noise" if stats.excludes_zero(avg_ci) else "within noise"
    )
    words = [f"**{row.label}**: {acc}; {avg}"]
    ratio = row.perplexity_ratio_ci95
    if row.perplexity_ratio is not None and ratio:
        words.append(
            f"held-out perplexity is {row.perplexity_ratio:.2f}x [{ratio[0]:.2f}, {ratio[1]:.2f}] the original's, "
            + ("beyond noise" if not ratio[0] <= 1 <= ratio[1] else "within noise")
        )
    kl = row.kl_to_original_ci95
    if row.kl_to_original is not None and kl:
        words.append(f"KL to the original {row.kl_to_original:.3f} [{kl[0]:.3f}, {kl[1]:.3f}] nats/token")
    return "; ".join(words) + "."


# ---------------------------------------------------------------- tables


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _ci(ci: list[float] | None) -> str:
    return "" if ci is None else f" [{_pct(ci[0])}, {_pct(ci[1])}]"


def _num(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.0f} s" if s < 60 else f"{int(s // 60)} min {s % 60:02.0f} s"


def _speed(row: Row, kind: str) -> str:
    s, ideal = row.speedup or {}, row.speedup_ideal or {}
    if s.get(kind) is None:
        return "–"
    shown = f"{s[kind]:.2f}x ({ideal[kind]:.2f}x)" if ideal.get(kind) is not None else f"{s[kind]:.2f}x"
    return shown + (" noise" if row.speed_noise else "")


def _noise_note(rows: list[Row], attribute: str) -> str:
    """What the rows whose speed figures are noise say about it, and how to measure properly."""
    noisy = [f"{r.label}: {getattr(r, attribute)}" for r in rows if getattr(r, attribute)]
    if not noisy:
        return ""
    return (
        (
            " noise: timed on a busy or unsteady machine, so the figure says little about the model ("
            + "; ".join(noisy)
            + "); measure on an idle machine (python benchmarks/speedup.py), or on the GPU "
            "the model will serve on."
        )
        .replace("{", "{{")
        .replace("}", "}}")
    )


def _head(r: Row) -> list[str]:
    return [r.model, "–" if r.n is None else str(r.n), r.variant]


def _delta_cell(r: Row, key: str) -> str:
    if r.delta_ci95 is None:
        return "–"
    d = r.delta_average if key == "average" else r.delta[key]
    ci = r.delta_ci95[key]
    return f"{_pts(d)}{'*' if stats.excludes_zero(ci) else ''} {_ci_pts(ci)}"


def sections(summary: Collected) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, header, cells, note) of every table, for markdown and html alike."""
    tasks, rows = summary.tasks, summary.rows
    names = [TASK_LABELS.get(t, t) for t in tasks]
    key = ["model", "n", "variant"]
    main = (
        "Summary",
        key
        + [
            "layers",
            "params",
            "ratio",
            "Avg acc [95% CI]",
            "Δ Avg, points [95% CI]",
            "retention",
            "flips",
            "stability",
            "val ppl",
            "KL",
            "prefill (ideal)",
            "decode (ideal)",
        ],
        [
            _head(r)
            + [
                "–" if r.layers is None else str(r.layers),
                fmt_params(r.params),
                _num(r.compression_ratio, ".2f") + ("x" if r.compression_ratio else ""),
                _pct(r.average) + _ci(r.average_ci95),
                _delta_cell(r, "average"),
                _pct(r.retention) + _ci(r.retention_ci95),
                _pct(r.flips),
                _pct(r.stability),
                _num(r.perplexity, ".2f"),
                _num(r.kl_to_original, ".3f"),
                _speed(r, "prefill"),
                _speed(r, "decode"),
            ]
            for r in rows
        ],
        "Accuracy: lm-eval `acc` (%), zero-shot{limit}; Avg: mean over the tasks. Δ: pruned − original, "
        "paired bootstrap over questions; * = the 95% interval excludes 0. retention: pruned Avg / original Avg (%). "
        "flips: questions whose correctness changed (%). stability: softmax(σ)-weighted agreement of correctness with "
        "the original (%), σ from per-token option NLLs. val ppl: perplexity on the held-out validation blocks; "
        "KL: mean per-token KL(original ‖ pruned) on the same blocks, nats. prefill/decode: measured speedup over the "
        "original (same batch and device, one run), the ideal (FLOPs ratio, weight-bytes ratio) in brackets."
        + _noise_note(rows, "speed_noise"),
    )
    acc = (
        "Accuracy per task (%), 95% interval",
        key + names + ["Avg"],
        [
            _head(r)
            + [_pct(r.tasks.get(t)) + _ci(r.accuracy_ci95.get(t)) for t in tasks]
            + [_pct(r.average) + _ci(r.average_ci95)]
            for r in rows
        ],
        "Wilson interval per task; bootstrap over questions for the average.",
    )
    pruned = [r for r in rows if r.pruned]
    delta = (
        "Difference to the original (points), 95% paired-bootstrap interval",
        key + names + ["Avg"],
        [_head(r) + [_delta_cell(r, t) for t in tasks] + [_delta_cell(r, "average")] for r in pruned],
        "* = the interval excludes 0: a difference beyond noise.",
    )
    cost = (
        "Variants",
        key + ["net", "loss", "k", "block", "layers", "params", "removed %", "train tokens", "train time"],
        [
            _head(r)
            + [
                r.net or "–",
                r.loss or "–",
                _num(r.replacement_layers, "d"),
                f"{len(r.rounds)} rounds" if r.rounds else "–" if not r.block else f"{r.block[0]}..{r.block[-1]}",
                "–" if r.layers is None else str(r.layers),
                fmt_params(r.params),
                _num(r.params_removed_pct, ".1f"),
                fmt_params(r.train.tokens if r.train else None),
                _seconds(r.train.seconds if r.train else None),
            ]
            for r in pruned
        ],
        "k: replacement layers kept in the block's place (0: plain removal). block: the original layers the "
        "replacement spans. train time: wall time of training (or of the estimate, for training-free variants).",
    )
    stab = (
        "Stability per task (%), and the effective number of questions its weights count (1/Σw²)",
        key + names + ["Avg"],
        [_head(r) + [_pct(r.stability_tasks.get(t)) + _eff(r, t) for t in tasks] + [_pct(r.stability)] for r in pruned],
        "",
    )
    out = [main, acc, delta, cost, stab]
    rounds = [(r, x) for r in pruned for x in r.rounds or []]
    if rounds:
        out.append(
            (
                "Rounds (prune.rounds)",
                key + ["round", "removed", "block", "removed layers", "score", "layers after", "train tokens"],
                [
                    _head(r)
                    + [
                        str(x.round),
                        str(x.n),
                        spans(x.block),
                        spans(x.removed),
                        f"{x.score:.4f} {x.metric}",
                        str(x.layers),
                        fmt_params(x.train_tokens),
                    ]
                    for r, x in rounds
                ],
                "Each round scored the model the round before it made (round 1: the original) and replaced its best "
                "block; block and removed layers are in the ORIGINAL model's numbering (a block spans layers that "
                "earlier rounds left, so it need not be consecutive there), the score in the model the round pruned.",
            )
        )
    engine = [r for r in rows if r.gguf_ppl is not None]
    if engine:

        def llamacpp(r: Row, kind: str) -> str:
            s, ideal = r.speedup_llamacpp or {}, r.speedup_llamacpp_ideal or {}
            return (
                "–"
                if s.get(kind) is None
                else (
                    f"{s[kind]:.2f}x ({ideal.get(kind, float('nan')):.2f}x)"
                    + (" noise" if r.speed_llamacpp_noise else "")
                )
            )

        out.append(
            (
                "Inside llama.cpp (export.gguf)",
                key + ["val ppl (streamline)", "val ppl (llama.cpp)", "prefill (ideal)", "decode (ideal)"],
                [
                    _head(r)
                    + [
                        _num(r.perplexity, ".2f"),
                        _num(r.gguf_ppl, ".2f"),
                        llamacpp(r, "prefill"),
                        llamacpp(r, "decode"),
                    ]
                    for r in engine
                ],
                "The exported GGUF run by llama.cpp on the same held-out blocks (token ids fed directly), and its "
                "measured speedup over the original's GGUF in llama.cpp, the ideal in brackets."
                + _noise_note(engine, "speed_llamacpp_noise"),
            )
        )
    trained = [r for r in pruned if r.train and r.train.kind == "trained"]
    if trained:
        out.append(
            (
                "Training",
                key + ["initial val loss", "best val loss", "best step", "steps", "kept"],
                [
                    _head(r)
                    + [
                        _num(r.train.initial_val_loss, ".4g"),
                        _num(r.train.best_val_loss, ".4g"),
                        str(r.train.best_step),
                        str(r.train.total_steps),
                        str(r.train.kept),
                    ]
                    for r in trained
                ],
                "",
            )
        )
    return [s for s in out if s[2]]


def _eff(r: Row, task: str) -> str:
    e = r.stability_effective_questions.get(task)
    return "" if e is None else f" ({e:.1f} of {r.questions[task]})"


def _limit_words(summary: Collected) -> str:
    limits = {r.limit for r in summary.rows}
    limit = next(iter(limits)) if len(limits) == 1 else None
    if limit is None:
        return ""
    return f", first {limit} questions per task" if isinstance(limit, int) else f", {limit:g} of each task"


def warning_lines(summary: Collected) -> list[str]:
    return [f"{r.label}: {w}" for r in summary.rows for w in r.warnings]


def noise_lines(summary: Collected) -> list[str]:
    return [noise_words(r, summary.tasks) for r in summary.rows if r.pruned]


def _markdown_table(header: list[str], cells: list[list[str]]) -> str:
    align = ["---" if i < 3 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def markdown(summary: Collected) -> str:
    parts = ["# streamline summary", ""]
    for w in warning_lines(summary):
        parts += [f"> **⚠ WARNING** {w}", ">"]
    if parts[-1] == ">":
        parts[-1] = ""
    for title, header, cells, note in sections(summary):
        parts += [f"## {title}", "", _markdown_table(header, cells), ""]
        if note:
            parts += [note.format(limit=_limit_words(summary)), ""]
    noise = noise_lines(summary)
    if noise:
        parts += ["## What is within noise", ""] + [f"- {line}" for line in noise] + [""]
    return "\n".join(parts)


def _html_table(header: list[str], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(summary: Collected) -> str:
    style = (
        "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th:nth-child(-n+3),td:nth-child(-n+3){text-align:left}th{background:#eee}"
        ".warn{background:#fdd;border:2px solid #c00;padding:.5em;font-weight:bold}"
    )
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>streamline summary</title>"
        f"<style>{style}</style></head><body>",
        "<h2>streamline summary</h2>",
    ]
    parts += [f"<p class='warn'>⚠ WARNING {html.escape(w)}</p>" for w in warning_lines(summary)]
    for title, header, cells, note in sections(summary):
        parts += [f"<h3>{html.escape(title)}</h3>", _html_table(header, cells)]
        if note:
            parts.append(f"<p>{html.escape(note.format(limit=_limit_words(summary)))}</p>")
    noise = noise_lines(summary)
    if noise:
        parts += (
            ["<h3>What is within noise</h3><ul>"]
            + [f"<li>{html.escape(line.replace('**', ''))}</li>" for line in noise]
            + ["</ul>"]
        )
    return "\n".join(parts + ["</body></html>"]) + "\n"
