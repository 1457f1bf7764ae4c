"""Report stage: one table over the baseline and every pruned variant, with intervals, plus plots.

Its inputs come from the rule (report.smk) in one manifest (artifacts.ReportManifest): {"baseline": {name,
eval, samples}, "rows": [{name, eval, samples, stability, train_log | estimate_log}, ...], "scores":
[block-score files]}, every file a declared input of the rule: a row's train_log.json (trained) or
estimate_log.json (linear) is named only where the variant has one. Every fact about a row (n, net, loss,
replacement layers k, block, layers, params, training tokens and time) is read from those artifacts
(eval.json carries the model dir's streamline.json); only the row's display name comes from the rule.
An eval.json is cross-checked against its samples (each task's accuracies), a stability.json against both
samples files (question counts, agreement): a mismatch is one line and moves the eval.json or
stability.json aside, so that its stage reruns.

Writes summary.json (every number, unrounded), summary.md and summary.html (the tables, rounded,
any training warnings, and which differences are within noise, in words), and four plots: block
scores, training curves, per-task accuracy, and the Pareto plot (retention and perplexity against
parameters). Accuracy is lm-eval `acc` (evaluate.py); the intervals are described in stats.py.
"""

from __future__ import annotations

import argparse
import html
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from . import stats
from .artifacts import (BaselineFiles, EstimateLog, Evaluation, LlamaCppCheck, ReportManifest, Row, Samples,
                        Stability, Summary, TrainFacts, TrainLog, VariantFiles, VariantRow, read_samples, read_scores)
from .atomic import atomic_write_text
from .errors import StreamlineError
from .eval_tasks import TASK_LABELS
from .layout import PLOTS
from .plots import Collected, Curve, fmt_params, plot_accuracy, plot_block_scores, plot_pareto, plot_training

log = logging.getLogger(__name__)


def _correct(samples: Samples, tasks: list[str], path: str) -> dict[str, dict[str, bool]]:
    """Per task, per question id: was the headline metric (acc) right?"""
    missing = [t for t in tasks if t not in samples.tasks]
    if missing:
        raise StreamlineError(f"{path}: holds no questions of {missing}; evaluate again")
    return {t: {q: r.acc for q, r in samples.tasks[t].items()} for t in tasks}


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _training(spec: VariantFiles) -> tuple[TrainFacts | None, TrainLog | None]:
    """(the row's training facts, its train log) from its train_log.json or estimate_log.json, if it has one."""
    if spec.train_log:
        tl = TrainLog.load(spec.train_log, "train log")
        return TrainFacts(kind="trained", tokens=tl.train_tokens, seconds=tl.seconds, total_steps=tl.total_steps,
                          initial_val_loss=tl.initial_val_loss, best_val_loss=tl.best_val_loss,
                          best_step=tl.best_step, kept=tl.kept, warnings=list(tl.warnings)), tl
    if spec.estimate_log:
        el = EstimateLog.load(spec.estimate_log, "estimate log")
        return TrainFacts(kind="estimated", tokens=None, seconds=el.seconds, total_steps=None, initial_val_loss=None,
                          best_val_loss=None, best_step=None, kept=None, warnings=[]), None
    return None, None


def _accuracy(ev: Evaluation, correct: dict) -> dict[str, Any]:
    acc = {t: r.headline if r.headline is not None else r.acc for t, r in ev.results.items()}
    return {"tasks": acc, "average": _mean([acc.get(t) for t in ev.tasks]),
            "questions": {t: len(c) for t, c in correct.items()}, **stats.accuracy_intervals(correct)}


def _ppl_interval(ev: Evaluation) -> list[float] | None:
    p = ev.perplexity
    return stats.block_ratio_interval(p.nll_per_block, p.tokens_per_block, transform=np.exp) if p else None


def _base_row(name: str, ev: Evaluation, correct: dict, gguf: str | None = None) -> Row:
    return Row(
        model=name, n=None, variant="baseline", label=f"{name} (baseline)",
        net=None, loss=None, replacement_layers=None, block=None,
        layers=ev.num_hidden_layers, params=ev.params, params_removed_pct=0.0, compression_ratio=1.0,
        **_accuracy(ev, correct),
        delta=None, delta_average=None, delta_ci95=None, retention=1.0, retention_ci95=None,
        flips=0.0, flips_tasks={}, stability=None, stability_tasks={}, stability_effective_questions={},
        perplexity=ev.perplexity.value if ev.perplexity else None, perplexity_ci95=_ppl_interval(ev),
        perplexity_ratio=1.0, perplexity_ratio_ci95=None, kl_to_original=0.0, kl_to_original_ci95=None,
        speedup={"prefill": 1.0, "decode": 1.0}, speedup_ideal={"prefill": 1.0, "decode": 1.0},
        train=None, warnings=[], limit=ev.limit, **_llamacpp(gguf))


def _llamacpp(path: str | None) -> dict[str, Any]:
    """The row's figures measured inside llama.cpp (gguf.json, with export.gguf): the GGUF's perplexity on the
    same held-out blocks, and its prefill/decode speedup over the original's GGUF next to the ideal."""
    if not path:
        return {"gguf_ppl": None, "speedup_llamacpp": None, "speedup_llamacpp_ideal": None}
    g = LlamaCppCheck.load(path, "llama.cpp check")
    return {"gguf_ppl": g.gguf_ppl, "speedup_llamacpp": g.speedup_llamacpp,
            "speedup_llamacpp_ideal": g.speedup_llamacpp_ideal,
            "speed_llamacpp_noise": g.speed_llamacpp.noise if g.speed_llamacpp else None}


def _variant_row(spec: VariantFiles, ev: Evaluation, st: Stability, correct: dict, base: Row, base_ev: Evaluation,
                 base_correct: dict, train: TrainFacts | None) -> VariantRow:
    info = ev.streamline
    if info is None:
        raise StreamlineError(f"{spec.eval}: evaluates a model dir without streamline.json, not a pruned variant")
    params = ev.params or info.params
    src_params = base.params or info.source_params
    ppl = ev.perplexity.value if ev.perplexity else None
    kl, speed = ev.kl_to_original, ev.speed
    tokens_per_block = ev.perplexity.tokens_per_block if ev.perplexity else []
    return VariantRow(
        model=base.model, n=info.n, variant=spec.name, label=f"n={info.n} {spec.name}",
        net=info.net, loss=info.loss,
        replacement_layers=info.replacement_layers,  # k kept in the block's place: 0 for none and linear
        block=info.block, layers=ev.num_hidden_layers or info.num_hidden_layers, params=params,
        params_removed_pct=(100.0 * (1 - params / src_params)) if params and src_params else None,
        compression_ratio=(src_params / params) if params and src_params else None,
        **_accuracy(ev, correct), **stats.paired_comparison(base_correct, correct),
        stability=st.average, stability_tasks={t: r.stability for t, r in st.tasks.items()},
        stability_effective_questions={t: r.effective_questions for t, r in st.tasks.items()},
        stability_legacy=st.legacy, stability_scale=st.scale,
        perplexity=ppl, perplexity_ci95=_ppl_interval(ev),
        perplexity_ratio=ppl / base.perplexity if ppl and base.perplexity else None,
        perplexity_ratio_ci95=_paired_ppl_ratio(ev, base_ev),
        kl_to_original=kl.value if kl else None,
        kl_to_original_ci95=stats.block_ratio_interval(kl.kl_per_block, tokens_per_block) if kl else None,
        speedup=speed.speedup if speed else None, speedup_ideal=speed.ideal if speed else None,
        speed={"device": speed.device, "threads": speed.threads, "batch": speed.batch,
               "prefill_tokens": speed.prefill_tokens, "decode_steps": speed.decode_steps,
               "prefill_tokens_per_s": speed.prefill_tokens_per_s,
               "decode_tokens_per_s": speed.decode_tokens_per_s, "spread": speed.spread, "load": speed.load,
               "cores": speed.cores} if speed else None,
        speed_noise=speed.noise if speed else None, train=train, warnings=train.warnings if train else [], limit=ev.limit, **_llamacpp(spec.gguf))


def _paired_ppl_ratio(ev: Evaluation, base_ev: Evaluation) -> list[float] | None:
    """Perplexity ratio pruned / original with a paired bootstrap over the same held-out blocks."""
    p, bp = ev.perplexity, base_ev.perplexity
    if not p or not bp or len(p.nll_per_block) != len(bp.nll_per_block) or p.tokens_per_block != bp.tokens_per_block:
        return None
    return stats.block_ratio_interval([x - y for x, y in zip(p.nll_per_block, bp.nll_per_block)],
                                      p.tokens_per_block, transform=np.exp)


def _evaluation(files: BaselineFiles | VariantFiles, what: str) -> tuple[Evaluation, Samples]:
    """eval.json and its samples file, each checked, and against each other (eval.json's accuracies are what
    its samples' flags give; a mismatch moves eval.json aside, so that evaluate rewrites both)."""
    samples = read_samples(files.samples)
    return Evaluation.load(files.eval, what, check=lambda ev: ev.disagreement(samples)), samples


def collect(manifest: ReportManifest) -> Collected:
    """Every row of the table, plus what the plots need, from the files the rule names."""
    baseline = manifest.baseline
    base_ev, base_samples = _evaluation(baseline, "baseline evaluation")
    tasks = list(base_ev.tasks)
    base_correct = _correct(base_samples, tasks, baseline.samples)
    name = baseline.name or Path(base_ev.model_dir).name
    base = _base_row(name, base_ev, base_correct, baseline.gguf)
    rows, curves = [base], []
    for spec in manifest.rows:
        what = f"variant {spec.name}"
        ev, samples = _evaluation(spec, f"evaluation of {what}")
        st = Stability.load(spec.stability, f"stability of {what}",
                            check=lambda st: st.disagreement(base_samples, samples))
        if set(ev.tasks) != set(tasks) or ev.limit != base_ev.limit:
            raise StreamlineError(f"{spec.eval}: evaluated on {ev.tasks} (limit {ev.limit}), the baseline "
                                  f"on {tasks} (limit {base_ev.limit}); evaluate both the same way")
        correct = _correct(samples, tasks, spec.samples)
        train, train_log = _training(spec)
        row = _variant_row(spec, ev, st, correct, base, base_ev, base_correct, train)
        rows.append(row)
        if train_log and (train_log.steps or train_log.val):
            curves.append(Curve(row.label, train_log.steps, train_log.val, train_log.loss, train_log.select))
    block_scores = [read_scores(s) for s in manifest.scores]
    return Collected(tasks, rows, block_scores, curves)


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
        acc = ("beyond noise (the 95% interval excludes 0): " + ", ".join(
            f"{TASK_LABELS.get(t, t)} {_pts(row.delta[t])} {_ci_pts(row.delta_ci95[t])}" for t in beyond)
            + (f"; the other {len(tasks) - len(beyond)} tasks are within noise" if len(tasks) - len(beyond) > 1 else
               "; the other task is within noise" if len(tasks) > len(beyond) else ""))
    else:
        acc = f"no task's accuracy difference is distinguishable from noise at {per} (every 95% interval contains 0)"
    avg_ci = row.delta_ci95["average"]
    avg = (f"the average changes by {_pts(row.delta_average)} points {_ci_pts(avg_ci)}, "
           + ("beyond noise" if stats.excludes_zero(avg_ci) else "within noise"))
    words = [f"**{row.label}**: {acc}; {avg}"]
    ratio = row.perplexity_ratio_ci95
    if row.perplexity_ratio is not None and ratio:
        words.append(f"held-out perplexity is {row.perplexity_ratio:.2f}x [{ratio[0]:.2f}, {ratio[1]:.2f}] the original's, "
                     + ("beyond noise" if not ratio[0] <= 1 <= ratio[1] else "within noise"))
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
    return (" noise: timed on a busy or unsteady machine, so the figure says little about the model ("
            + "; ".join(noisy) + "); measure on an idle machine (python benchmarks/speedup.py), or on the GPU "
            "the model will serve on.").replace("{", "{{").replace("}", "}}")


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
        key + ["layers", "params", "ratio", "Avg acc [95% CI]", "Δ Avg, points [95% CI]", "retention", "flips",
               "stability", "val ppl", "KL", "prefill (ideal)", "decode (ideal)"],
        [_head(r) + [
            "–" if r.layers is None else str(r.layers), fmt_params(r.params),
            _num(r.compression_ratio, ".2f") + ("x" if r.compression_ratio else ""),
            _pct(r.average) + _ci(r.average_ci95), _delta_cell(r, "average"),
            _pct(r.retention) + _ci(r.retention_ci95), _pct(r.flips), _pct(r.stability),
            _num(r.perplexity, ".2f"), _num(r.kl_to_original, ".3f"),
            _speed(r, "prefill"), _speed(r, "decode")] for r in rows],
        "Accuracy: lm-eval `acc` (%), zero-shot{limit}; Avg: mean over the tasks. Δ: pruned − original, "
        "paired bootstrap over questions; * = the 95% interval excludes 0. retention: pruned Avg / original Avg (%). "
        "flips: questions whose correctness changed (%). stability: softmax(σ)-weighted agreement of correctness with "
        "the original (%), σ from per-token option NLLs. val ppl: perplexity on the held-out validation blocks; "
        "KL: mean per-token KL(original ‖ pruned) on the same blocks, nats. prefill/decode: measured speedup over the "
        "original (same batch and device, one run), the ideal (FLOPs ratio, weight-bytes ratio) in brackets."
        + _noise_note(rows, "speed_noise"),
    )
    acc = ("Accuracy per task (%), 95% interval", key + names + ["Avg"],
           [_head(r) + [_pct(r.tasks.get(t)) + _ci(r.accuracy_ci95.get(t)) for t in tasks]
            + [_pct(r.average) + _ci(r.average_ci95)] for r in rows],
           "Wilson interval per task; bootstrap over questions for the average.")
    pruned = [r for r in rows if r.pruned]
    delta = ("Difference to the original (points), 95% paired-bootstrap interval", key + names + ["Avg"],
             [_head(r) + [_delta_cell(r, t) for t in tasks] + [_delta_cell(r, "average")] for r in pruned],
             "* = the interval excludes 0: a difference beyond noise.")
    cost = ("Variants", key + ["net", "loss", "k", "block", "layers", "params", "removed %", "train tokens",
                               "train time"],
            [_head(r) + [r.net or "–", r.loss or "–", _num(r.replacement_layers, "d"),
                         "–" if not r.block else f"{r.block[0]}..{r.block[-1]}",
                         "–" if r.layers is None else str(r.layers), fmt_params(r.params),
                         _num(r.params_removed_pct, ".1f"),
                         fmt_params(r.train.tokens if r.train else None), _seconds(r.train.seconds if r.train else None)]
             for r in pruned],
            "k: replacement layers kept in the block's place (0: plain removal). block: the original layers the "
            "replacement spans. train time: wall time of training (or of the estimate, for training-free variants).")
    stab = ("Stability per task (%), and the effective number of questions its weights count (1/Σw²)",
            key + names + ["Avg"],
            [_head(r) + [_pct(r.stability_tasks.get(t)) + _eff(r, t) for t in tasks] + [_pct(r.stability)]
             for r in pruned], "")
    out = [main, acc, delta, cost, stab]
    engine = [r for r in rows if r.gguf_ppl is not None]
    if engine:
        def llamacpp(r: Row, kind: str) -> str:
            s, ideal = r.speedup_llamacpp or {}, r.speedup_llamacpp_ideal or {}
            return "–" if s.get(kind) is None else (f"{s[kind]:.2f}x ({ideal.get(kind, float('nan')):.2f}x)"
                                                     + (" noise" if r.speed_llamacpp_noise else ""))
        out.append(("Inside llama.cpp (export.gguf)", key + ["val ppl (streamline)", "val ppl (llama.cpp)",
                                                           "prefill (ideal)", "decode (ideal)"],
                    [_head(r) + [_num(r.perplexity, ".2f"), _num(r.gguf_ppl, ".2f"), llamacpp(r, "prefill"),
                                 llamacpp(r, "decode")] for r in engine],
                    "The exported GGUF run by llama.cpp on the same held-out blocks (token ids fed directly), and its "
                    "measured speedup over the original's GGUF in llama.cpp, the ideal in brackets."
                    + _noise_note(engine, "speed_llamacpp_noise")))
    trained = [r for r in pruned if r.train and r.train.kind == "trained"]
    if trained:
        out.append(("Training", key + ["initial val loss", "best val loss", "best step", "steps", "kept"],
                    [_head(r) + [_num(r.train.initial_val_loss, ".4g"), _num(r.train.best_val_loss, ".4g"),
                                 str(r.train.best_step), str(r.train.total_steps), str(r.train.kept)]
                     for r in trained], ""))
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


def _warnings(summary: Collected) -> list[str]:
    return [f"{r.label}: {w}" for r in summary.rows for w in r.warnings]


def _noise(summary: Collected) -> list[str]:
    return [noise_words(r, summary.tasks) for r in summary.rows if r.pruned]


def _markdown_table(header: list[str], cells: list[list[str]]) -> str:
    align = ["---" if i < 3 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def markdown(summary: Collected) -> str:
    parts = ["# streamline summary", ""]
    for w in _warnings(summary):
        parts += [f"> **⚠ WARNING** {w}", ">"]
    if parts[-1] == ">":
        parts[-1] = ""
    for title, header, cells, note in sections(summary):
        parts += [f"## {title}", "", _markdown_table(header, cells), ""]
        if note:
            parts += [note.format(limit=_limit_words(summary)), ""]
    noise = _noise(summary)
    if noise:
        parts += ["## What is within noise", ""] + [f"- {line}" for line in noise] + [""]
    return "\n".join(parts)


def _html_table(header: list[str], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(summary: Collected) -> str:
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin:1em 0}"
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "th:nth-child(-n+3),td:nth-child(-n+3){text-align:left}th{background:#eee}"
             ".warn{background:#fdd;border:2px solid #c00;padding:.5em;font-weight:bold}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>streamline summary</title>"
             f"<style>{style}</style></head><body>", "<h2>streamline summary</h2>"]
    parts += [f"<p class='warn'>⚠ WARNING {html.escape(w)}</p>" for w in _warnings(summary)]
    for title, header, cells, note in sections(summary):
        parts += [f"<h3>{html.escape(title)}</h3>", _html_table(header, cells)]
        if note:
            parts.append(f"<p>{html.escape(note.format(limit=_limit_words(summary)))}</p>")
    noise = _noise(summary)
    if noise:
        parts += ["<h3>What is within noise</h3><ul>"] + [
            f"<li>{html.escape(line.replace('**', ''))}</li>" for line in noise] + ["</ul>"]
    return "\n".join(parts + ["</body></html>"]) + "\n"


# ---------------------------------------------------------------- entry point

def read_manifest(text: str) -> ReportManifest:
    """The rule's manifest (JSON), checked: one line for anything that is not what report.smk writes."""
    import json
    try:
        manifest = json.loads(text)
    except ValueError:
        raise StreamlineError("--manifest: not valid JSON") from None
    return ReportManifest.from_json(manifest, "--manifest", then='expected {"baseline": {name, eval, samples}, '
                                    '"rows": [{name, eval, samples, stability, train_log?, estimate_log?}, ...], '
                                    '"scores": [files]}')


def report(manifest: ReportManifest, *, out_json: Path, out_md: Path, plots_dir: Path,
           out_html: Path | None = None) -> Summary:
    collected = collect(manifest)
    plots_dir = Path(plots_dir)
    plot_block_scores(collected, plots_dir / PLOTS["block_scores"])
    plot_training(collected, plots_dir / PLOTS["training_loss"])
    plot_accuracy(collected, plots_dir / PLOTS["task_accuracy"])
    plot_pareto(collected, plots_dir / PLOTS["pareto"])
    summary = Summary(tasks=collected.tasks, rows=collected.rows, within_noise=_noise(collected),
                      warnings=_warnings(collected), plots={k: str(plots_dir / v) for k, v in PLOTS.items()})
    atomic_write_text(out_md, markdown(collected))
    if out_html is not None:
        atomic_write_text(out_html, html_page(collected))
    summary.write(out_json)  # last: the table is complete once summary.json exists
    log.info("report: %d rows over %d tasks -> %s", len(collected.rows), len(collected.tasks), out_md)
    return summary


# --- the command: streamline report -------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, metavar="JSON|@FILE",
                   help='the files, as JSON (or @FILE holding it): {"baseline": {"name", "eval", "samples"}, "rows": '
                        '[{"name", "eval", "samples", "stability", "train_log", "estimate_log", "gguf"}, ...], '
                        '"scores": [block-score files to plot]}; a row names its train_log (trained) or '
                        'estimate_log (linear), or neither; gguf (a gguf.json) may be null')
    p.add_argument("--json", required=True, help="summary.json")
    p.add_argument("--md", required=True, help="summary.md")
    p.add_argument("--html", help="summary.html")
    p.add_argument("--plots-dir", required=True, help="where the plots go")


def run(a: argparse.Namespace) -> None:
    if a.manifest.startswith("@") and not Path(a.manifest[1:]).is_file():
        raise StreamlineError(f"--manifest: {a.manifest[1:]} is not a file")
    text = Path(a.manifest[1:]).read_text() if a.manifest.startswith("@") else a.manifest
    report(read_manifest(text), out_json=Path(a.json), out_md=Path(a.md),
           out_html=Path(a.html) if a.html else None, plots_dir=Path(a.plots_dir))
