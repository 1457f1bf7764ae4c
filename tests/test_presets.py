"""Presets: real hub ids, the paper's settings, and a dry run that plans the whole DAG without downloading."""

import pytest
import yaml

from workflow_utils import ROOT, SNAKEFILE

import subprocess
import sys

PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


def test_llama31_preset_is_the_papers_setting():
    c = yaml.safe_load((ROOT / "configs/llama-3.1-8b.yaml").read_text())
    assert c["model_name"] == "meta-llama/Llama-3.1-8B" and c["dtype"] == "bfloat16"
    assert c["data"]["source"] == "DKYoon/SlimPajama-6B" and c["data"]["seq_len"] == 2048
    assert c["layer_intervals"] == 8 and c["cosine_num_data"] == 50
    assert (c["lr"], c["min_lr"], c["wd"], c["gradient_accumulation_step"], c["epochs"]) == (2e-4, 5e-5, 1e-3, 16, 1)
    assert c["loss"] == "llm" and c["llm"]["num_processes"] == 4
    assert c["llm"]["accelerate_config"].endswith("deepspeed_zero2.yaml")


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_dry_run_plans_every_stage_without_downloading(preset, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(tmp_path), "-n",
                           "--configfile", str(preset), "--cores", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    for rule in ("download_model", "prepare_data", "extract_calibration", "score", "replace", "train_llm",
                 "evaluate_baseline", "evaluate_variant", "stability", "report"):
        assert f"rule {rule}:" in text or f"\n{rule} " in text, rule
    assert "extract_pairs" not in text  # LLM loss trains on token blocks, not stored pairs
    assert not (tmp_path / "resources").exists()  # nothing was downloaded
