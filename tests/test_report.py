"""The report stage on hand-made artifacts: row facts, statistics, markdown/html, plots; and the CLI wiring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import write_scores

from streamline.artifacts import (
    KL,
    SAMPLES_FORMAT,
    EstimateLog,
    Evaluation,
    LlamaCppCheck,
    LlamaCppSpeed,
    Perplexity,
    Question,
    Samples,
    Speed,
    Stability,
    Summary,
    TaskScores,
    TaskStability,
    TrainLog,
    TrainStep,
)
from streamline.cli import main as cli
from streamline.errors import StreamlineError
from streamline.model_info import ModelInfo
from streamline.plots import pareto_front
from streamline.records import digest
from streamline.report import read_manifest, report

TASKS = ["arc_easy", "boolq"]
Q = 20
BASE_PARAMS = 1000
BASE_RIGHT = {"arc_easy": range(0, 12), "boolq": range(0, 14)}  # 60% and 70%


def _train_log(
    loss: str, steps: int, seconds: float, tokens: int, val: list[tuple[int, float]], warnings: tuple[str, ...] = ()
) -> TrainLog:
    """A train log as the training core writes it (only what the report shows varies)."""
    first, best = val[0][1], min(v for _, v in val)
    return TrainLog(
        net="transformer",
        loss=loss,
        stage_loss=loss.split("+")[-1],
        replacement_layers=1,
        slots=[2],
        block=[2, 3],
        settings={"lr": 1e-3},
        select="loss",
        total_steps=steps,
        warmup_steps=0,
        train_samples=8,
        train_tokens=tokens,
        val_samples={"val": 4},
        steps=[TrainStep(step=i, loss=1.0 / i, lr=1e-3, grad_norm=0.5) for i in range(1, steps + 1)],
        val=[{"step": s, "loss": v} for s, v in val],
        initial_val_loss=first,
        best_val_loss=best,
        initial_val={"loss": first},
        best_val={"loss": best},
        best_step=max(s for s, v in val if v == best),
        kept="best",
        num_processes=1,
        distributed_type="NO",
        mixed_precision="no",
        deepspeed=False,
        resumed_at_step=None,
        seconds=seconds,
        validation_seconds=1.0,
        samples_per_second=10.0,
        peak_rss_mb=100.0,
        peak_gpu_mb=None,
        warnings=list(warnings),
    )


def _estimate_log(seconds: float) -> EstimateLog:
    return EstimateLog(
        block=[2, 3],
        ridge=0.0,
        tokens=4096,
        objective="lstsq",
        steps=0,
        relative_residual=0.5,
        relative_residual_of_identity=0.9,
        cosine_distance=0.2,
        cosine_distance_of_identity=0.4,
        extract_seconds=seconds - 1.0,
        estimate_seconds=1.0,
        seconds=seconds,
    )


KD_WARNING = "training made held-out perplexity worse (11.0 -> 12.0)"
# name -> streamline.json, questions answered right per task, params, layers, ppl, log (kind, record)
VARIANTS = {
    "none": (
        {"net": "none", "n": 1, "loss": None, "block": [3], "replacement_layers": 0},
        {"arc_easy": range(0, 10), "boolq": range(0, 12)},
        900,
        5,
        20.0,
        None,
    ),
    "ffn-mse": (
        {"net": "ffn", "n": 1, "loss": "mse", "block": [2, 3], "replacement_layers": 1},
        BASE_RIGHT,
        850,
        5,
        15.0,
        ("train_log", _train_log("mse", 5, 42.0, 20480, [(0, 1.0), (5, 0.3)])),
    ),
    "transformerx2-mse+kd": (
        {"net": "transformer", "n": 2, "loss": "kd", "replacement_layers": 2, "block": [2, 3, 4, 5]},
        {"arc_easy": range(2, 14), "boolq": range(0, 20)},
        800,
        4,
        12.0,
        ("train_log", _train_log("mse+kd", 4, 100.0, 32768, [(0, 2.0), (4, 1.5)], (KD_WARNING,))),
    ),
    "linear": (
        {"net": "linear", "n": 2, "loss": None, "block": [2, 3], "replacement_layers": 0},
        {"arc_easy": range(0), "boolq": range(0, 14)},
        800,
        4,
        30.0,
        ("estimate_log", _estimate_log(3.5)),
    ),
}


def _write(path: Path, obj: dict) -> Path:
    """`obj` written signed, as its stage writes it (or as an edit that also rewrites the digest, which the checks
    behind the digest must catch: NaN included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**obj, "digest": digest(obj)}))
    return path


def _eval(right: dict, params: int, layers: int, ppl: float, info: ModelInfo | None = None) -> Evaluation:
    """eval.json as evaluate writes it; a pruned model's (with `info`) has KL and speed as well."""
    import math

    blocks = 4
    nll = [math.log(ppl) * 10 * (0.925 + 0.05 * i) for i in range(blocks)]  # varies by block, mean 1
    pruned = info is not None
    return Evaluation(
        model_dir="x/model" if pruned else "resources/models/m",
        tasks=TASKS,
        limit=Q,
        offline_data_dir="eval-data",
        splits={t: "validation" for t in TASKS},
        device="cpu",
        dtype="float32",
        batch_size=4,
        lm_eval_version="0.4",
        results={t: TaskScores(n=Q, acc=len(r) / Q, headline=len(r) / Q) for t, r in right.items()},
        average=sum(len(r) / Q for r in right.values()) / len(right),
        average_acc_norm_where_available=sum(len(r) / Q for r in right.values()) / len(right),
        samples_path="samples.json.gz",
        num_hidden_layers=layers,
        params=params,
        streamline=info,
        perplexity=Perplexity(
            value=math.exp(sum(nll) / 40),
            data_dir="d",
            split="val",
            blocks=blocks,
            tokens=40,
            nll_per_block=nll,
            tokens_per_block=[10] * blocks,
            wall_time_s=1.0,
        ),
        kl_to_original=KL(value=0.5, original="m", kl_per_block=[4.0, 5.0, 6.0, 5.0]) if pruned else None,
        speed=Speed(
            device="cpu",
            threads=2,
            batch=4,
            prefill_tokens=128,
            decode_prompt_tokens=32,
            decode_steps=32,
            repeats=3,
            prefill_tokens_per_s={"pruned": 120.0, "original": 100.0},
            decode_tokens_per_s={"pruned": 13.0, "original": 10.0},
            flops_per_token={"pruned": 1.0, "original": 1.25},
            decode_weight_bytes={"pruned": 4, "original": 5},
            speedup={"prefill": 1.2, "decode": 1.3},
            ideal={"prefill": 1.25, "decode": 1.25},
            wall_time_s=1.0,
        )
        if pruned
        else None,
    )


def _stability(per_task: dict[str, float], right: dict, effective: float = 12.5) -> Stability:
    """stability.json of a variant whose questions answered right are `right` (its agreement with the baseline
    follows from them)."""
    agree = {t: sum((i in BASE_RIGHT[t]) == (i in right[t]) for i in range(Q)) / Q for t in per_task}
    return Stability(
        metric="acc",
        legacy=False,
        scale="per_token",
        average=sum(per_task.values()) / len(per_task),
        tasks={
            t: TaskStability(
                stability=s, agreement=agree[t], n=Q, effective_questions=effective, sigma_min=0.1, sigma_max=1.0
            )
            for t, s in per_task.items()
        },
        effective_questions={t: effective for t in per_task},
        skipped_tasks=[],
    )


def _samples(right: dict) -> Samples:
    """Option 0 is the likelier: a question is answered right where gold is 0."""
    return Samples(
        format=SAMPLES_FORMAT,
        tasks={
            t: {
                str(i): Question(ll=[0.0, -1.0], ntok=[1, 1], gold=0 if i in r else 1, acc=i in r, acc_norm=None)
                for i in range(Q)
            }
            for t, r in right.items()
        },
    )


@pytest.fixture
def artifacts(tmp_path) -> dict:
    """The files report.smk would name, in made-up places (the report may not assume a layout)."""
    root = tmp_path / "anywhere"
    base = {"name": "m", "eval": str(_write(root / "b/e.json", _eval(BASE_RIGHT, BASE_PARAMS, 6, 10.0).to_json()))}
    _samples(BASE_RIGHT).write(root / "b/s.json.gz")
    base["samples"] = str(root / "b/s.json.gz")
    rows = []
    for i, (name, (info, right, params, layers, ppl, logf)) in enumerate(VARIANTS.items()):
        d = root / f"v{i}"
        info = ModelInfo(
            name=f"m minus {info['n']}",
            source_model="m",
            source_layers=6,
            source_params=BASE_PARAMS,
            metric="cosine",
            dtype="float32",
            params=params,
            num_hidden_layers=layers,
            **info,
        )
        spec = {
            "name": name,
            "eval": str(_write(d / "eval.json", _eval(right, params, layers, ppl, info).to_json())),
            "stability": str(
                _write(d / "stability.json", _stability({"arc_easy": 0.9, "boolq": 0.8}, right).to_json())
            ),
            "samples": str(d / "samples.json"),
        }
        _samples(right).write(d / "samples.json")
        if logf:  # as report.smk names it: the variant's own log only
            spec[logf[0]] = str(_write(d / f"{logf[0]}.json", logf[1].to_json()))
        rows.append(spec)
    scores = [write_scores(root / f"sc{n}{span}.json", n, span, best=6 - span) for n, span in ((1, 2), (2, 3), (1, 1))]
    return {"baseline": base, "variants": rows, "scores": scores, "out": tmp_path / "out"}


def _run(a: dict) -> dict:
    out = a["out"]
    return report(
        read_manifest(json.dumps(_manifest(a))),
        out_json=out / "summary.json",
        out_md=out / "summary.md",
        out_html=out / "summary.html",
        plots_dir=out / "plots",
    )


def _manifest(a: dict) -> dict:
    """What report.smk passes: the files, in one manifest."""
    return {"baseline": a["baseline"], "rows": a["variants"], "scores": [str(s) for s in a["scores"]]}


def test_rows_take_their_facts_from_the_artifacts(artifacts):
    summary = _run(artifacts)
    saved = json.loads((artifacts["out"] / "summary.json").read_text())
    assert Summary.from_json(saved) == summary  # summary.json reads back as the rows the report built
    assert saved == summary.to_json()  # unsigned: the user's file, its content as it always was
    assert Summary.load(artifacts["out"] / "summary.json", "summary") == summary  # as the README reads it
    rows = {r.variant: r for r in summary.rows}
    assert list(rows) == ["baseline", *VARIANTS] and summary.tasks == TASKS
    assert [r.pruned for r in summary.rows] == [False, True, True, True, True]
    # a baseline row has no stability scale or speed run; the variant rows do
    assert "speed" not in saved["rows"][0] and {"speed", "stability_scale"} <= set(saved["rows"][1])
    none = rows["none"]
    assert (none.net, none.replacement_layers, none.n) == ("none", 0, 1)
    assert (rows["ffn-mse"].replacement_layers, rows["ffn-mse"].loss) == (1, "mse")
    kd = rows["transformerx2-mse+kd"]
    assert (kd.net, kd.loss, kd.replacement_layers, kd.block, kd.layers, kd.n) == (
        "transformer",
        "kd",
        2,
        [2, 3, 4, 5],
        4,
        2,
    )
    assert rows["linear"].net == "linear" and rows["linear"].replacement_layers == 0  # k: one value everywhere
    assert rows["baseline"].layers == 6 and rows["baseline"].params_removed_pct == 0
    assert kd.params_removed_pct == pytest.approx(20.0) and kd.compression_ratio == pytest.approx(1.25)
    # Training facts from the train log; estimates from the estimate log.
    assert (kd.train.tokens, kd.train.seconds, kd.train.kind, kd.train.best_step) == (32768, 100.0, "trained", 4)
    assert rows["ffn-mse"].train.tokens == 20480 and rows["ffn-mse"].train.seconds == 42.0
    assert rows["linear"].train.kind == "estimated" and rows["linear"].train.seconds == 3.5
    assert rows["linear"].train.tokens is None
    assert none.train is None and kd.warnings == [KD_WARNING]
    assert kd.stability == pytest.approx(0.85) and kd.stability_scale == "per_token" and kd.speed["batch"] == 4


def test_statistics_fields(artifacts):
    rows = {r.variant: r for r in _run(artifacts).rows}
    base = rows["baseline"]
    assert base.accuracy_ci95.keys() == set(TASKS) and len(base.average_ci95) == 2
    assert (base.retention, base.flips, base.kl_to_original) == (1.0, 0.0, 0.0)
    assert base.speedup == {"prefill": 1.0, "decode": 1.0} and base.delta_ci95 is None
    none, same, kd, lin = rows["none"], rows["ffn-mse"], rows["transformerx2-mse+kd"], rows["linear"]
    assert none.delta == pytest.approx({"arc_easy": -0.1, "boolq": -0.1}) and none.flips == pytest.approx(0.1)
    assert none.retention == pytest.approx(0.55 / 0.65) and none.delta_average == pytest.approx(-0.1)
    assert same.delta_ci95 == {"arc_easy": [0.0, 0.0], "boolq": [0.0, 0.0], "average": [0.0, 0.0]}
    assert same.flips == 0 and same.retention == pytest.approx(1.0)
    # arc_easy: 2 lost, 2 gained (0 net, 20% flipped); boolq: 6 gained, none lost.
    assert kd.delta == pytest.approx({"arc_easy": 0.0, "boolq": 0.3}) and kd.flips_tasks["arc_easy"] == 0.2
    assert kd.delta_ci95["boolq"][0] > 0 and kd.delta_ci95["arc_easy"][0] < 0 < kd.delta_ci95["arc_easy"][1]
    assert lin.delta_ci95["arc_easy"][1] < 0 and lin.delta_ci95["average"][1] < 0
    assert kd.kl_to_original == 0.5 and kd.kl_to_original_ci95[0] <= 0.5 <= kd.kl_to_original_ci95[1]
    assert kd.speedup == {"prefill": 1.2, "decode": 1.3} and kd.speedup_ideal["prefill"] == 1.25
    assert kd.stability_effective_questions == {"arc_easy": 12.5, "boolq": 12.5}
    assert kd.perplexity_ratio == pytest.approx(12.0 / 10.0, rel=1e-6) and kd.perplexity_ratio_ci95[0] > 1


def test_markdown_html_and_plots(artifacts):
    _run(artifacts)
    out = artifacts["out"]
    md = (out / "summary.md").read_text()
    first_table = md.index("## Summary")
    warning = f"> **⚠ WARNING** n=2 transformerx2-mse+kd: {KD_WARNING}"
    assert warning in md and md.index(warning) < first_table  # loud: before any table
    assert "| model | n | variant | layers | params | ratio | Avg acc [95% CI] | Δ Avg, points [95% CI] |" in md
    assert "| m | 2 | transformerx2-mse+kd | transformer | kd | 2 | 2..5 | 4 | 800 | 20.0 | 32.8k | 1 min 40 s |" in md
    assert "| m | 1 | ffn-mse | ffn | mse | 1 | 2..3 | 5 | 850 | 15.0 | 20.5k | 42 s |" in md
    assert "| m | 2 | linear | linear | – | 0 | 2..3 | 4 | 800 | 20.0 | – | 4 s |" in md
    assert "+30.0* [" in md and "12.5 of 20" in md
    noise = md[md.index("## What is within noise") :]
    assert (
        "**n=1 ffn-mse**: no task's accuracy difference is distinguishable from noise at 20 questions per task" in noise
    )
    assert "beyond noise (the 95% interval excludes 0): BoolQ +30.0" in noise
    assert "held-out perplexity is 1.20x" in noise and "KL to the original 0.500" in noise
    page = (out / "summary.html").read_text()
    assert "<td>transformerx2-mse+kd</td>" in page and "class='warn'" in page
    for name in ("block_scores", "training_loss", "task_accuracy", "pareto"):
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not list(out.rglob("*.partial*"))


def test_pareto_front():
    # (params, retention): the 900 point is beaten by 800 (fewer params, higher retention).
    pts = [(1000, 100.0), (900, 80.0), (800, 85.0), (700, 60.0)]
    assert pareto_front(pts, higher_is_better=True) == [3, 2, 0]
    assert pareto_front([(1000, 10.0), (900, 30.0), (800, 20.0)], higher_is_better=False) == [2, 0]


def test_only_plain_removal_has_no_training_section(artifacts):
    artifacts["variants"] = artifacts["variants"][:1]
    summary = _run(artifacts)
    assert [r.variant for r in summary.rows] == ["baseline", "none"]
    md = (artifacts["out"] / "summary.md").read_text()
    assert "## Training" not in md and "WARNING" not in md
    assert (artifacts["out"] / "plots/training_loss.png").is_file()


def test_missing_artifact_is_a_clear_error(artifacts):
    Path(artifacts["variants"][1]["stability"]).unlink()
    with pytest.raises(StreamlineError, match=r"v1/stability.json: no stability of variant ffn-mse here"):
        _run(artifacts)
    assert not (artifacts["out"] / "summary.json").exists()


def test_mismatched_limit_is_refused(artifacts):
    ev = json.loads(Path(artifacts["variants"][0]["eval"]).read_text())
    _write(Path(artifacts["variants"][0]["eval"]), {**ev, "limit": 5})
    with pytest.raises(StreamlineError, match="evaluate both the same way"):
        _run(artifacts)


def test_report_cli(artifacts):
    out = artifacts["out"] / "cli"
    b = artifacts["baseline"]
    outputs = ["--json", str(out / "s.json"), "--md", str(out / "s.md"), "--plots-dir", str(out / "plots")]
    assert cli(["report", "--manifest", json.dumps(_manifest(artifacts)), *outputs]) == 0
    assert len(json.loads((out / "s.json").read_text())["rows"]) == 5
    (out / "m.json").write_text(json.dumps(_manifest(artifacts)))
    assert cli(["report", "--manifest", f"@{out / 'm.json'}", *outputs]) == 0
    missing = {"baseline": {**b, "eval": "nope.json"}, "rows": [], "scores": []}
    assert cli(["report", "--manifest", json.dumps(missing), *outputs]) == 2
    assert cli(["report", "--manifest", "oops", *outputs]) == 2
    assert cli(["report", "--manifest", f"@{out / 'no-such.json'}", *outputs]) == 2
    assert cli(["report", "--manifest", json.dumps({"baseline": b, "rows": [5], "scores": []}), *outputs]) == 2


def test_llamacpp_figures_reach_the_rows_and_the_table(artifacts):
    """With export.gguf the manifest names each row's gguf.json: its llama.cpp perplexity and speedup show up."""
    root = Path(artifacts["variants"][0]["eval"]).parent.parent
    artifacts["baseline"]["gguf"] = str(_write(root / "b/gguf.json", llamacpp_check(10.01)))
    artifacts["variants"][1]["gguf"] = str(_write(root / "v1/gguf.json", llamacpp_check(14.9, LLAMACPP_SPEED)))
    summary = _run(artifacts)
    rows = {r.variant: r for r in summary.rows}
    assert rows["baseline"].gguf_ppl == 10.01 and rows["ffn-mse"].speedup_llamacpp["prefill"] == 1.33
    assert rows["none"].gguf_ppl is None  # no gguf.json named: nothing made up
    md = (artifacts["out"] / "summary.md").read_text()
    assert "## Inside llama.cpp (export.gguf)" in md and "| 15.00 | 14.90 | 1.33x (1.36x) | 1.28x (1.27x) |" in md
    _write(root / "v1/gguf.json", {"speedup_llamacpp": {}})  # torn: no perplexity
    with pytest.raises(StreamlineError, match="gguf.json: the llama.cpp check is incomplete"):
        _run(artifacts)


LLAMACPP_SPEED = LlamaCppSpeed(
    engine="llama.cpp",
    threads=2,
    batch=1,
    prefill_tokens=16,
    decode_prompt_tokens=32,
    decode_steps=32,
    repeats=3,
    prefill_tokens_per_s={"pruned": 133.0, "original": 100.0},
    decode_tokens_per_s={"pruned": 12.8, "original": 10.0},
    flops_per_token={"pruned": 100.0, "original": 136.0},
    decode_weight_bytes={"pruned": 100, "original": 127},
    speedup={"prefill": 1.33, "decode": 1.28},
    ideal={"prefill": 1.36, "decode": 1.27},
    wall_time_s=1.0,
)


def llamacpp_check(ppl: float, speed: LlamaCppSpeed | None = None) -> dict:
    """gguf.json as gguf-check writes it: perplexity `ppl` over 4 blocks of 10 tokens, and (with the original's
    GGUF) its speed."""
    import math

    return LlamaCppCheck(
        gguf="m.gguf",
        file_type=1,
        layers=4,
        data_dir="d",
        split="val",
        blocks=4,
        tokens=40,
        gguf_ppl=ppl,
        gguf_nll_per_block=[math.log(ppl) * 10] * 4,
        gguf_tokens_per_block=[10] * 4,
        llama_cpp_python="0.3.36",
        extra_buffers=False,
        ppl_seconds=1.0,
        speed_llamacpp=speed,
        speedup_llamacpp=speed and speed.speedup,
        speedup_llamacpp_ideal=speed and speed.ideal,
    ).to_json()


@pytest.mark.parametrize(
    "kind, edit, field",
    [
        ("eval", lambda e: e["perplexity"].update(value="12.0"), "perplexity.value"),  # a string, not a number
        ("eval", lambda e: e["results"]["boolq"].update(acc=True), "results.boolq.acc"),  # a bool, not a fraction
        ("eval", lambda e: e.pop("params"), "params"),
        ("eval", lambda e: e["perplexity"].update(value=5.0), "perplexity 5.0 is not what its blocks' NLL gives"),
        ("eval", lambda e: e["perplexity"].update(nll_per_block=[1e6] * 4), "is not what its blocks' NLL gives"),
        ("samples", lambda s: s["tasks"].update(boolq={}), r"no questions for \['boolq'\]"),
        ("eval", lambda e: e["kl_to_original"].update(value=0.05), "KL 0.05 is not what its blocks give"),
        ("eval", lambda e: e["results"]["boolq"].update(acc=1.7), r"an accuracy outside \[0, 1\]"),
        ("train_log", lambda t: t.update(kept="initial"), "kept initial state, with validation 2 -> 1.5"),
        (
            "eval",
            lambda e: e["kl_to_original"]["kl_per_block"].__setitem__(0, float("nan")),
            "kl_to_original.kl_per_block.0",
        ),
        ("eval", lambda e: e["streamline"].update(replacement_layers=0), "network transformer with 0 kept layers"),
        ("stability", lambda s: s["tasks"]["boolq"].update(stability=None), "tasks.boolq.stability"),
        ("train_log", lambda t: t["steps"][0].update(loss="nan?"), "steps.0.loss"),
        ("samples", lambda s: s["tasks"]["boolq"]["3"].update(acc="yes"), "tasks.boolq.3.acc"),
    ],
)
def test_an_edited_artifact_is_one_line_naming_the_field_and_is_moved_aside(artifacts, kind, edit, field):
    """Every artifact the report reads is checked field by field, and against itself (a perplexity against its
    blocks' NLL): no KeyError, and no wrong number in the table."""
    path = Path(artifacts["variants"][2][kind])
    obj = json.loads(path.read_text())
    edit(obj)
    _write(path, obj)  # with its digest rewritten: the checks behind the digest catch it
    with pytest.raises(
        StreamlineError,
        match=rf"{path.name}: the .* is incomplete \(.*{field}.*\); moved "
        rf"{path.name} aside",
    ):
        _run(artifacts)
    assert not path.exists() and list(path.parent.glob(f"{path.name}.corrupt-*"))  # its stage reruns
    assert not (artifacts["out"] / "summary.json").exists()
