"""Presets: each validates like config.yaml, and a dry run plans the whole DAG without downloading."""

import subprocess
import sys

import pytest
from workflow_utils import ROOT, SNAKEFILE

from streamline.schema import SCHEMA

PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


def dry_run(preset, workdir, *args) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(SNAKEFILE),
            "-d",
            str(workdir),
            "-n",
            "--configfile",
            str(preset),
            "--cores",
            "1",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_validates(preset):
    from streamline import config

    c = config.load(preset, SCHEMA)
    assert c["dtype"] in ("bfloat16", "float16")  # GPU presets


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_dry_run_plans_every_stage_without_downloading(preset, tmp_path):
    text = dry_run(preset, tmp_path)
    for rule in (
        "download_model",
        "prepare_data",
        "extract_calibration",
        "score",
        "replace",
        "train_end_to_end",
        "evaluate_baseline",
        "evaluate_variant",
        "stability",
        "report",
    ):
        assert f"rule {rule}:" in text or f"\n{rule} " in text, rule
    assert "extract_pairs" not in text  # LLM loss trains on token blocks, not stored pairs
    assert not (tmp_path / "resources").exists()  # nothing was downloaded


def test_released_5_4b_preset_keeps_two_layers_of_a_block_of_fourteen(tmp_path):
    text = dry_run(ROOT / "configs/llama-3.1-8b-5.4b.yaml", tmp_path, "--printshellcmds")
    assert "--n 12 --span 14" in text and "--out results/Llama-3.1-8B/n12/scores_k2.json" in text
    assert "--net transformer --layers 2 --out results/Llama-3.1-8B/n12/transformerx2/init" in text
    assert "train --loss llm --init results/Llama-3.1-8B/n12/transformerx2/init" in text
    assert "--adam-beta2 0.95" in text
