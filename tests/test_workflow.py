"""The whole DAG on a tiny model in a temp dir: outputs, reruns, and config errors before any job."""

import json
import subprocess
import sys

import pytest
import yaml

from workflow_utils import ROOT, SNAKEFILE, planned_rules, snakemake, tiny_config, write_config


@pytest.fixture(scope="module")
def done_workdir(tmp_path_factory, tiny_llama_dir, text_corpus):
    workdir = tmp_path_factory.mktemp("wf")
    write_config(workdir, tiny_config(tiny_llama_dir, text_corpus))
    snakemake(workdir)
    return workdir


def test_workflow_produces_scores(done_workdir):
    scores = json.loads((done_workdir / "results/tiny/n2/scores.json").read_text())
    assert scores["n"] == 2 and scores["num_layers"] == 6 and len(scores["scores"]) == 4
    assert (done_workdir / "results/tiny/n2/scores.png").exists()
    assert (done_workdir / "resources/models/tiny/config.json").exists()
    calib = json.loads((done_workdir / "results/tiny/calibration.json").read_text())
    assert calib["shape"] == [7, 8, 16, 32]


def test_nothing_changed_nothing_runs(done_workdir):
    assert planned_rules(done_workdir) == {}


def test_changing_n_reruns_scoring_only(done_workdir, tiny_llama_dir, text_corpus):
    write_config(done_workdir, tiny_config(tiny_llama_dir, text_corpus, layer_intervals=3))
    assert planned_rules(done_workdir) == {"score": 1}
    write_config(done_workdir, tiny_config(tiny_llama_dir, text_corpus, layer_intervals=[2, 3, 4]))
    assert planned_rules(done_workdir) == {"score": 2}
    write_config(done_workdir, tiny_config(tiny_llama_dir, text_corpus))


def test_command_line_config_overrides(done_workdir):
    assert planned_rules(done_workdir, "--config", "layer_intervals=4", "lr=1e-4") == {"score": 1}


def test_extraction_batch_size_does_not_rerun_anything(done_workdir, tiny_llama_dir, text_corpus):
    cfg = tiny_config(tiny_llama_dir, text_corpus)
    cfg["extract"]["batch_size"] = 2
    write_config(done_workdir, cfg)
    assert planned_rules(done_workdir) == {}
    write_config(done_workdir, tiny_config(tiny_llama_dir, text_corpus))


def test_metric_change_reruns_scoring(done_workdir):
    assert planned_rules(done_workdir, "--config", "metric=angular") == {"score": 1}


@pytest.mark.parametrize("override, message", [
    ("layer_intervals=0", "layer_intervals: 0 is not valid: expected an integer >= 1 or a list of integers >= 1"),
    ("layer_intervals=6", "layer_intervals: 6 is out of range for tiny-llama, which has 6 layers (allowed: 1..5)"),
    ("metric=l2", "metric: 'l2' is not one of ['cosine', 'angular']"),
    ("model_name=/no/such/model", "model_name: path /no/such/model does not exist"),
    ("lr=-1", "lr: -1 is less than or equal to the minimum of 0"),
    ("min_lr=0.5", "min_lr: 0.5 is above lr"),
    ("typo_key=1", "config: Additional properties are not allowed ('typo_key' was unexpected)"),
])
def test_bad_config_is_one_line_before_any_job(done_workdir, override, message):
    proc = snakemake(done_workdir, "-n", "--config", override, check=False)
    assert proc.returncode != 0
    err = [line for line in proc.stderr.strip().splitlines() if not line.startswith("Using workflow specific profile")]
    assert len(err) == 1 and err[0].startswith("config error: ") and message in err[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_architecture(tmp_path, text_corpus):
    from transformers import GPT2Config, GPT2LMHeadModel
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    write_config(tmp_path, tiny_config(tmp_path / "gpt2", text_corpus, layer_intervals=1))
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.stderr.strip().splitlines()[-1] == ("config error: model_name: architecture 'gpt2' has no adapter "
                                   "(supported: llama, mistral, opt, qwen2)")
