"""Kill the whole snakemake process tree mid-stage, run again: it completes, nothing half-written is kept."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import holds_only_the_finished_state
from workflow_utils import SNAKEFILE, snakemake, tiny_config, workflow_env, write_config


def start(workdir: Path, *targets: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "-d",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        "2",
        *targets,
    ]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=workflow_env(),
        cwd=workdir,
    )


def kill_tree_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not ready():
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started
    proc.wait()


def files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_killed_extraction_resumes_to_identical_store(tmp_path, tiny_llama_dir, text_corpus):
    config = tiny_config(tiny_llama_dir, text_corpus, cosine_num_data=300, **{"extract.batch_size": 1})
    target = "results/tiny/calibration.json"
    ref, run = tmp_path / "ref", tmp_path / "run"
    for d in (ref, run):
        d.mkdir()
        write_config(d, config)
    snakemake(ref, target)

    store = run / "results/tiny/calibration.zarr"
    proc = start(run, target)
    kill_tree_when(proc, lambda: len(list((store / "attention_mask").glob("c/*"))) >= 20)
    assert not (run / target).exists()  # the manifest marks a complete store; never written by a killed run
    snakemake(run, "--unlock")  # a SIGKILLed snakemake leaves its lock behind, as the README says
    snakemake(run, target)
    assert (run / target).exists()
    assert json.loads((run / target).read_text())["computed_samples"] < 300  # resumed, not restarted
    assert files(store) == files(ref / "results/tiny/calibration.zarr")
    assert not list(store.rglob("*.partial"))


@pytest.mark.slow
def test_killed_training_resumes_from_checkpoint(tmp_path, tiny_llama_dir, text_corpus):
    config = tiny_config(
        tiny_llama_dir,
        text_corpus,
        epochs=40,
        batch_size=1,
        gradient_accumulation_step=1,
        network="transformer",
        **{"train.checkpoint_every": 1, "train.val_every": 100},
    )
    write_config(tmp_path, config)
    target = "results/tiny/n2/transformer-mse/train_log.json"
    snakemake(tmp_path, "results/tiny/n2/pairs.json", "results/tiny/n2/transformer/init")
    checkpoint = tmp_path / "results/tiny/n2/transformer-mse/checkpoint"
    proc = start(tmp_path, target)
    kill_tree_when(proc, (checkpoint / "progress.json").exists)  # written last: a complete checkpoint exists
    assert not (tmp_path / "results/tiny/n2/transformer-mse/model").exists()
    snakemake(tmp_path, "--unlock")
    snakemake(tmp_path, target)
    log = (tmp_path / "logs/tiny/n2/train_transformer-mse.log").read_text()
    assert "resumed from" in log
    result = json.loads((tmp_path / target).read_text())
    assert result["resumed_at_step"] >= 1
    assert len(result["steps"]) == result["total_steps"] == 640
    assert (tmp_path / "results/tiny/n2/transformer-mse/model/model.safetensors").exists()
    assert holds_only_the_finished_state(checkpoint)
