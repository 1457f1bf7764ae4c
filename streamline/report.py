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
import logging
from pathlib import Path
from typing import Any

import numpy as np

from . import stats
from .artifacts import (
    BaselineFiles,
    EstimateLog,
    Evaluation,
    LlamaCppCheck,
    ReportManifest,
    RoundFacts,
    Row,
    Samples,
    Stability,
    Summary,
    TrainFacts,
    TrainLog,
    VariantFiles,
    VariantRow,
    read_samples,
    read_scores,
)
from .atomic import atomic_write_text
from .errors import StreamlineError
from .layout import PLOTS
from .plots import Collected, Curve, plot_accuracy, plot_block_scores, plot_pareto, plot_training
from .render import html_page, markdown, noise_lines, warning_lines
from .rounds import in_original

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
        return _train_facts([tl]), tl
    if spec.estimate_log:
        el = EstimateLog.load(spec.estimate_log, "estimate log")
        return TrainFacts(
            kind="estimated",
            tokens=None,
            seconds=el.seconds,
            total_steps=None,
            initial_val_loss=None,
            best_val_loss=None,
            best_step=None,
            kept=None,
            warnings=[],
        ), None
    return None, None


def _train_facts(logs: list[TrainLog]) -> TrainFacts:
    """One training, or the rounds' trainings together: tokens, time and steps summed; the validation is the last
    round's (each round validates the model it trains, so only one round's figures compare)."""
    last = logs[-1]
    return TrainFacts(
        kind="trained",
        tokens=sum(tl.train_tokens for tl in logs),
        seconds=sum(tl.seconds for tl in logs),
        total_steps=sum(tl.total_steps for tl in logs),
        initial_val_loss=last.initial_val_loss,
        best_val_loss=last.best_val_loss,
        best_step=last.best_step,
        kept=last.kept,
        warnings=[w for tl in logs for w in tl.warnings],
    )


def _rounds(spec: VariantFiles) -> tuple[list[RoundFacts], list[TrainLog]]:
    """Each round of a variant pruned in rounds (original layer numbering), and the rounds' train logs."""
    logs = [TrainLog.load(r.train_log, "train log") if r.train_log else None for r in spec.rounds]
    facts = in_original([read_scores(r.scores) for r in spec.rounds], logs)
    return facts, [tl for tl in logs if tl]


def _accuracy(ev: Evaluation, correct: dict) -> dict[str, Any]:
    acc = {t: r.headline if r.headline is not None else r.acc for t, r in ev.results.items()}
    return {
        "tasks": acc,
        "average": _mean([acc.get(t) for t in ev.tasks]),
        "questions": {t: len(c) for t, c in correct.items()},
        **stats.accuracy_intervals(correct),
    }


def _ppl_interval(ev: Evaluation) -> list[float] | None:
    p = ev.perplexity
    return stats.block_ratio_interval(p.nll_per_block, p.tokens_per_block, transform=np.exp) if p else None


def _base_row(name: str, ev: Evaluation, correct: dict, gguf: str | None = None) -> Row:
    return Row(
        model=name,
        n=None,
        variant="baseline",
        label=f"{name} (baseline)",
        net=None,
        loss=None,
        replacement_layers=None,
        block=None,
        layers=ev.num_hidden_layers,
        params=ev.params,
        params_removed_pct=0.0,
        compression_ratio=1.0,
        **_accuracy(ev, correct),
        delta=None,
        delta_average=None,
        delta_ci95=None,
        retention=1.0,
        retention_ci95=None,
        flips=0.0,
        flips_tasks={},
        stability=None,
        stability_tasks={},
        stability_effective_questions={},
        perplexity=ev.perplexity.value if ev.perplexity else None,
        perplexity_ci95=_ppl_interval(ev),
        perplexity_ratio=1.0,
        perplexity_ratio_ci95=None,
        kl_to_original=0.0,
        kl_to_original_ci95=None,
        speedup={"prefill": 1.0, "decode": 1.0},
        speedup_ideal={"prefill": 1.0, "decode": 1.0},
        train=None,
        warnings=[],
        limit=ev.limit,
        **_llamacpp(gguf),
    )


def _llamacpp(path: str | None) -> dict[str, Any]:
    """The row's figures measured inside llama.cpp (gguf.json, with export.gguf): the GGUF's perplexity on the
    same held-out blocks, and its prefill/decode speedup over the original's GGUF next to the ideal."""
    if not path:
        return {"gguf_ppl": None, "speedup_llamacpp": None, "speedup_llamacpp_ideal": None}
    g = LlamaCppCheck.load(path, "llama.cpp check")
    return {
        "gguf_ppl": g.gguf_ppl,
        "speedup_llamacpp": g.speedup_llamacpp,
        "speedup_llamacpp_ideal": g.speedup_llamacpp_ideal,
        "speed_llamacpp_noise": g.speed_llamacpp.noise if g.speed_llamacpp else None,
    }


def _variant_row(
    spec: VariantFiles,
    ev: Evaluation,
    st: Stability,
    correct: dict,
    base: Row,
    base_ev: Evaluation,
    base_correct: dict,
    train: TrainFacts | None,
    rounds: list[RoundFacts] | None = None,
) -> VariantRow:
    """`rounds`: a variant pruned in rounds, whose model dir records its last round only (n and block of that
    round, in the numbering of the model it pruned): its n is the rounds' sum, its blocks are in `rounds`."""
    info = ev.streamline
    if info is None:
        raise StreamlineError(f"{spec.eval}: evaluates a model dir without streamline.json, not a pruned variant")
    params = ev.params or info.params
    src_params = base.params or info.source_params
    ppl = ev.perplexity.value if ev.perplexity else None
    kl, speed = ev.kl_to_original, ev.speed
    tokens_per_block = ev.perplexity.tokens_per_block if ev.perplexity else []
    n = sum(r.n for r in rounds) if rounds else info.n
    return VariantRow(
        model=base.model,
        n=n,
        variant=spec.name,
        label=f"n={n} {spec.name}",
        net=info.net,
        loss=info.loss,
        replacement_layers=info.replacement_layers,  # k kept in the block's place: 0 for none and linear
        block=None if rounds else info.block,
        layers=ev.num_hidden_layers or info.num_hidden_layers,
        params=params,
        params_removed_pct=(100.0 * (1 - params / src_params)) if params and src_params else None,
        compression_ratio=(src_params / params) if params and src_params else None,
        **_accuracy(ev, correct),
        **stats.paired_comparison(base_correct, correct),
        stability=st.average,
        stability_tasks={t: r.stability for t, r in st.tasks.items()},
        stability_effective_questions={t: r.effective_questions for t, r in st.tasks.items()},
        stability_legacy=st.legacy,
        stability_scale=st.scale,
        perplexity=ppl,
        perplexity_ci95=_ppl_interval(ev),
        perplexity_ratio=ppl / base.perplexity if ppl and base.perplexity else None,
        perplexity_ratio_ci95=_paired_ppl_ratio(ev, base_ev),
        kl_to_original=kl.value if kl else None,
        kl_to_original_ci95=stats.block_ratio_interval(kl.kl_per_block, tokens_per_block) if kl else None,
        speedup=speed.speedup if speed else None,
        speedup_ideal=speed.ideal if speed else None,
        speed={
            "device": speed.device,
            "threads": speed.threads,
            "batch": speed.batch,
            "prefill_tokens": speed.prefill_tokens,
            "decode_steps": speed.decode_steps,
            "prefill_tokens_per_s": speed.prefill_tokens_per_s,
            "decode_tokens_per_s": speed.decode_tokens_per_s,
            "spread": speed.spread,
            "load": speed.load,
            "cores": speed.cores,
        }
        if speed
        else None,
        speed_noise=speed.noise if speed else None,
        train=train,
        warnings=train.warnings if train else [],
        limit=ev.limit,
        **_llamacpp(spec.gguf),
        rounds=rounds,
    )


def _paired_ppl_ratio(ev: Evaluation, base_ev: Evaluation) -> list[float] | None:
    """Perplexity ratio pruned / original with a paired bootstrap over the same held-out blocks."""
    p, bp = ev.perplexity, base_ev.perplexity
    if not p or not bp or len(p.nll_per_block) != len(bp.nll_per_block) or p.tokens_per_block != bp.tokens_per_block:
        return None
    return stats.block_ratio_interval(
        [x - y for x, y in zip(p.nll_per_block, bp.nll_per_block)], p.tokens_per_block, transform=np.exp
    )


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
        st = Stability.load(
            spec.stability, f"stability of {what}", check=lambda st: st.disagreement(base_samples, samples)
        )
        if set(ev.tasks) != set(tasks) or ev.limit != base_ev.limit:
            raise StreamlineError(
                f"{spec.eval}: evaluated on {ev.tasks} (limit {ev.limit}), the baseline "
                f"on {tasks} (limit {base_ev.limit}); evaluate both the same way"
            )
        correct = _correct(samples, tasks, spec.samples)
        if spec.rounds:
            rounds, logs = _rounds(spec)
            train = _train_facts(logs) if logs else None
        else:
            rounds = None
            train, train_log = _training(spec)
            logs = [train_log] if train_log else []
        row = _variant_row(spec, ev, st, correct, base, base_ev, base_correct, train, rounds)
        rows.append(row)
        for i, tl in enumerate(logs, 1):
            if tl.steps or tl.val:
                label = f"{row.label} round {i}" if rounds else row.label
                curves.append(Curve(label, tl.steps, tl.val, tl.loss, tl.select))
    block_scores = [read_scores(s) for s in manifest.scores]
    return Collected(tasks, rows, block_scores, curves)


# ---------------------------------------------------------------- entry point


def read_manifest(text: str) -> ReportManifest:
    """The rule's manifest (JSON), checked: one line for anything that is not what report.smk writes."""
    import json

    try:
        manifest = json.loads(text)
    except ValueError:
        raise StreamlineError("--manifest: not valid JSON") from None
    return ReportManifest.from_json(
        manifest,
        "--manifest",
        then='expected {"baseline": {name, eval, samples}, '
        '"rows": [{name, eval, samples, stability, train_log?, estimate_log?}, ...], '
        '"scores": [files]}',
    )


def report(
    manifest: ReportManifest, *, out_json: Path, out_md: Path, plots_dir: Path, out_html: Path | None = None
) -> Summary:
    collected = collect(manifest)
    plots_dir = Path(plots_dir)
    plot_block_scores(collected, plots_dir / PLOTS["block_scores"])
    plot_training(collected, plots_dir / PLOTS["training_loss"])
    plot_accuracy(collected, plots_dir / PLOTS["task_accuracy"])
    plot_pareto(collected, plots_dir / PLOTS["pareto"])
    summary = Summary(
        tasks=collected.tasks,
        rows=collected.rows,
        within_noise=noise_lines(collected),
        warnings=warning_lines(collected),
        plots={k: str(plots_dir / v) for k, v in PLOTS.items()},
    )
    atomic_write_text(out_md, markdown(collected))
    if out_html is not None:
        atomic_write_text(out_html, html_page(collected))
    summary.write(out_json)  # last: the table is complete once summary.json exists
    log.info("report: %d rows over %d tasks -> %s", len(collected.rows), len(collected.tasks), out_md)
    return summary


# --- the command: streamline report -------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--manifest",
        required=True,
        metavar="JSON|@FILE",
        help='the files, as JSON (or @FILE holding it): {"baseline": {"name", "eval", "samples"}, "rows": '
        '[{"name", "eval", "samples", "stability", "train_log", "estimate_log", "gguf"}, ...], '
        '"scores": [block-score files to plot]}; a row names its train_log (trained) or '
        "estimate_log (linear), or neither; gguf (a gguf.json) may be null",
    )
    p.add_argument("--json", required=True, help="summary.json")
    p.add_argument("--md", required=True, help="summary.md")
    p.add_argument("--html", help="summary.html")
    p.add_argument("--plots-dir", required=True, help="where the plots go")


def run(a: argparse.Namespace) -> None:
    if a.manifest.startswith("@") and not Path(a.manifest[1:]).is_file():
        raise StreamlineError(f"--manifest: {a.manifest[1:]} is not a file")
    text = Path(a.manifest[1:]).read_text() if a.manifest.startswith("@") else a.manifest
    report(
        read_manifest(text),
        out_json=Path(a.json),
        out_md=Path(a.md),
        out_html=Path(a.html) if a.html else None,
        plots_dir=Path(a.plots_dir),
    )
