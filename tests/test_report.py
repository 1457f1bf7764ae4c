"""The report stage on hand-made artifacts: table values, ratios, markdown/html, plots; and the CLI wiring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamline.cli import main as cli
from streamline.errors import StreamlineError
from streamline.report import report

TASKS = ["arc_easy", "boolq"]
BASE_PARAMS = 1000
# (n, variant) -> (params, layers, acc per task, ppl, stability per task)
VARIANTS = {
    (1, "none"): (900, 5, {"arc_easy": 0.50, "boolq": 0.60}, 20.0, {"arc_easy": 0.9, "boolq": 0.8}),
    (1, "ffn-mse"): (850, 5, {"arc_easy": 0.55, "boolq": 0.65}, 15.0, {"arc_easy": 0.95, "boolq": 0.85}),
    (2, "none"): (800, 4, {"arc_easy": 0.40, "boolq": 0.50}, 40.0, {"arc_easy": 0.7, "boolq": 0.6}),
    (2, "ffn-mse"): (750, 4, {"arc_easy": 0.45, "boolq": 0.55}, 30.0, {"arc_easy": 0.75, "boolq": 0.65}),
}


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _eval(acc: dict, params: int, layers: int, ppl: float, info: dict | None = None) -> dict:
    return {"tasks": TASKS, "limit": 10, "params": params, "num_hidden_layers": layers, "streamline": info,
            "results": {t: {"n": 10, "acc": a, "headline_metric": "acc", "headline": a} for t, a in acc.items()},
            "average": sum(acc.values()) / len(acc), "perplexity": {"value": ppl, "split": "val"}}


def _scores(n: int, span: int, layers: int = 6) -> dict:
    vals = [0.1 * i for i in range(layers - span + 1)]
    return {"n": n, "span": span, "metric": "cosine", "num_layers": layers, "best_start": len(vals) - 1,
            "block": list(range(len(vals) - 1, len(vals) - 1 + span)),
            "scores": [{"start": i, "end": i + span - 1, "score": v} for i, v in enumerate(vals)]}


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "results"
    _write(root / "m/baseline/eval.json", _eval({"arc_easy": 0.6, "boolq": 0.7}, BASE_PARAMS, 6, 10.0))
    for n in (1, 2):
        _write(root / f"m/n{n}/scores.json", _scores(n, n + 1))
        _write(root / f"m/n{n}/removal_scores.json", _scores(n, n))
    for (n, v), (params, layers, acc, ppl, stab) in VARIANTS.items():
        net = v.split("-")[0]
        info = {"net": net, "loss": None if v == "none" else "mse", "params": params, "source_params": BASE_PARAMS,
                "num_hidden_layers": layers, "block": [3, 4]}
        d = root / f"m/n{n}/{v}"
        _write(d / "eval.json", _eval(acc, params, layers, ppl, info))
        _write(d / "stability.json", {"metric": "acc", "legacy": False, "average": sum(stab.values()) / 2,
                                      "tasks": {t: {"stability": s, "agreement": s, "n": 10} for t, s in stab.items()}})
        if v != "none":
            _write(d / "train_log.json", {
                "loss": "mse", "steps": [{"step": i, "loss": 1.0 / i, "lr": 1e-4, "grad_norm": 1.0} for i in range(1, 6)],
                "val": [{"step": 0, "loss": 1.0}, {"step": 5, "loss": 0.3}], "initial_val_loss": 1.0,
                "best_val_loss": 0.3, "best_step": 5, "kept": "best", "total_steps": 5})
    return root


def _run(results: Path, **kw) -> dict:
    out = results.parent
    return report(results, models=["m"], ns=kw.get("ns", [1, 2]), variants=kw.get("variants", ["none", "ffn-mse"]),
                  out_json=out / "summary.json", out_md=out / "summary.md", out_html=out / "summary.html",
                  plots_dir=out / "plots")


def test_table_values_and_ratios(results):
    summary = _run(results)
    saved = json.loads((results.parent / "summary.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(summary["rows"]))
    rows = saved["rows"]
    assert [(r["n"], r["variant"]) for r in rows] == [(None, "baseline"), (1, "none"), (1, "ffn-mse"), (2, "none"),
                                                      (2, "ffn-mse")]
    assert saved["tasks"] == TASKS
    base = rows[0]
    assert base["average"] == pytest.approx(0.65) and base["params_removed_pct"] == 0 and base["stability"] is None
    assert base["layers"] == 6 and base["perplexity"] == 10.0
    for r in rows[1:]:
        params, layers, acc, ppl, stab = VARIANTS[(r["n"], r["variant"])]
        assert r["tasks"] == acc and r["average"] == pytest.approx(sum(acc.values()) / 2)
        assert r["params"] == params and r["layers"] == layers and r["perplexity"] == ppl
        assert r["params_removed_pct"] == pytest.approx(100 * (1 - params / BASE_PARAMS))
        assert r["compression_ratio"] == pytest.approx(BASE_PARAMS / params)
        assert r["stability"] == pytest.approx(sum(stab.values()) / 2) and r["stability_tasks"] == stab
        assert ("train" in r) == (r["variant"] != "none")
    assert rows[4]["params_removed_pct"] == pytest.approx(25.0)


def test_markdown_html_and_plots(results):
    _run(results)
    out = results.parent
    md = (out / "summary.md").read_text()
    assert "| model | n | variant | ARC-e | BoolQ | Avg | layers | params | removed % | ratio | stability | ppl |" in md
    assert "| m | – | baseline | 60.0 | 70.0 | 65.0 | 6 | 1.00k | 0.0 | 1.00x | – | 10.00 |" in md
    assert "| m | 2 | ffn-mse | 45.0 | 55.0 | 50.0 | 4 | 750 | 25.0 | 1.33x | 70.0 | 30.00 |" in md
    assert "## Stability per task" in md and "## Training" in md
    page = (out / "summary.html").read_text()
    assert page.count("<tr>") == 1 + 5 + 1 + 4 and "<td>ffn-mse</td>" in page
    for name in ("block_scores", "training_loss", "task_accuracy"):
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not list(out.rglob("*.partial*"))


def test_only_plain_removal_has_no_training_curves(results):
    summary = _run(results, ns=[1], variants=["none"])
    assert [r["variant"] for r in summary["rows"]] == ["baseline", "none"]
    assert (results.parent / "plots/training_loss.png").is_file()
    assert "## Training" not in (results.parent / "summary.md").read_text()


def test_missing_artifact_is_a_clear_error(results):
    (results / "m/n2/ffn-mse/stability.json").unlink()
    with pytest.raises(StreamlineError, match=r"n2/ffn-mse/stability.json: stability of m n=2 ffn-mse not found"):
        _run(results)
    assert not (results.parent / "summary.json").exists()


def test_report_cli(results):
    out = results.parent / "cli"
    rc = cli(["report", "--results", str(results), "--model", "m", "--n", "1", "2", "--variants", "none", "ffn-mse",
              "--json", str(out / "s.json"), "--md", str(out / "s.md"), "--plots-dir", str(out / "plots")])
    assert rc == 0 and len(json.loads((out / "s.json").read_text())["rows"]) == 5
    rc = cli(["report", "--results", str(results), "--model", "nope", "--n", "1", "--variants", "none",
              "--json", str(out / "x.json"), "--md", str(out / "x.md"), "--plots-dir", str(out / "plots")])
    assert rc == 2
