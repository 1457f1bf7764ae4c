"""Never compute on the wrong data: each probe of the reliability issue, reproduced, and its one-line answer."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import build_tiny_model, make_data_dir, write_scores
from workflow_utils import ROOT, planned_outputs, planned_rules, snakemake, tiny_config, write_config

from streamline.atomic import atomic_write_json, exclusive
from streamline.errors import StreamlineError
from streamline.extract import extract_hidden_states
from streamline.schema import SCHEMA
from streamline.score import score
from streamline.store import HiddenStore

CLI = [sys.executable, "-m", "streamline.cli"]


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


# --- 1, 2: a model's identity is its content --------------------------------------------------------------


def test_a_store_is_never_reused_for_other_weights_of_the_same_architecture(tmp_path, data_dir):
    model = build_tiny_model("llama", tmp_path / "model", seed=0)
    first = extract_hidden_states(model, data_dir, tmp_path / "c.zarr", device="cpu")
    before = HiddenStore(tmp_path / "c.zarr").read(3, 0).clone()
    build_tiny_model("llama", tmp_path / "model", seed=1)  # retrained in place: same config, same file sizes
    again = extract_hidden_states(model, data_dir, tmp_path / "c.zarr", device="cpu")
    assert first["computed_samples"] == again["computed_samples"] == 10  # restarted, not "0 of 10 to do"
    assert not torch.equal(HiddenStore(tmp_path / "c.zarr").read(3, 0), before)


def test_a_local_model_changed_in_place_reruns_the_download_onward(tmp_path, text_corpus):
    model = build_tiny_model("llama", tmp_path / "model")
    write_config(tmp_path, tiny_config(model, text_corpus))
    snakemake(tmp_path, "resources/models/tiny")
    assert planned_rules(tmp_path, "resources/models/tiny") == {}
    time.sleep(1.1)
    build_tiny_model("llama", tmp_path / "model", seed=5)
    assert planned_rules(tmp_path, "resources/models/tiny") == {"download_model": 1}


def test_the_alias_is_derived_from_model_name_unless_set(tmp_path, text_corpus, tiny_llama_dir):
    config = tiny_config(tiny_llama_dir, text_corpus)
    del config["model_alias"]
    write_config(tmp_path, config)
    assert "resources/models/tiny-llama" in planned_outputs(tmp_path)
    assert "model_alias" not in (ROOT / "config.yaml").read_text()  # the demo no longer pins a name


# --- 3: NaN never picks a block, and is never written ----------------------------------------------------


def test_nan_hidden_states_stop_scoring_with_one_line(tiny_llama_dir, data_dir, tmp_path):
    extract_hidden_states(tiny_llama_dir, data_dir, tmp_path / "c.zarr", device="cpu")
    store = HiddenStore(tmp_path / "c.zarr", mode="r+")
    h = store.read(4, 2).clone()
    h[0, 0] = float("nan")  # what an fp16 overflow leaves behind
    for k in range(store.num_states):
        store.write_range(k, 2, (h if k == 4 else store.read(k, 2)).numpy()[None])
    store.finish_sample(2, store.mask[2])
    with pytest.raises(StreamlineError, match=r"score: the cosine of block \d+\.\.\d+ is nan .*dtype: float32"):
        score(tmp_path / "c.zarr", 2, tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()


def test_json_artifacts_are_strict(tmp_path):
    with pytest.raises(StreamlineError, match="refusing to write it"):
        atomic_write_json(tmp_path / "x.json", {"ppl": float("nan")})
    assert not (tmp_path / "x.json").exists()


# --- 4: stores are complete and verified (see also test_extract.py) -----------------------------------------


def test_training_refuses_a_pair_store_with_a_missing_chunk(tiny_llama_dir, tmp_path):
    from streamline.pairs import extract_pairs
    from streamline.replace import replace
    from streamline.training.recipes import train
    from streamline.training.settings import TrainSettings

    data = make_data_dir(tmp_path / "data", num=8, seq_len=16)
    extract_hidden_states(tiny_llama_dir, data, tmp_path / "c.zarr", device="cpu")
    score(tmp_path / "c.zarr", 2, tmp_path / "s.json")
    replace(tiny_llama_dir, tmp_path / "s.json", tmp_path / "init", net="transformer")
    extract_pairs(tiny_llama_dir, data, tmp_path / "s.json", tmp_path / "pairs", device="cpu")
    (tmp_path / "pairs/train/hidden/c/1/5/0/0").unlink()
    with pytest.raises(StreamlineError, match=r"pairs/train: sample 5, hidden state 1 does not match its checksum"):
        train(
            "mse",
            tmp_path / "init",
            tmp_path / "out",
            tmp_path / "log.json",
            TrainSettings(batch_size=2, gradient_accumulation_step=1, device="cpu"),
            data_dir=data,
            pairs_dir=tmp_path / "pairs",
        )
    assert not (tmp_path / "out").exists()


def test_zarr_is_recent_enough_to_write_chunks_atomically():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"zarr>=3.1.3' in text
    import zarr

    assert tuple(int(x) for x in zarr.__version__.split(".")[:3]) >= (3, 1, 3)


# --- 5: config values checked before any job runs, CLI values like the config --------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("train={skip_first_tokens: 16}", "train.skip_first_tokens: 16 leaves no position of a 16-token block"),
        (
            "data={name: corpus, source: SOURCE, seq_len: 512, val_num_data: 4}",
            "data.seq_len: 512 is longer than tiny-llama's 256 positions",
        ),
    ],
)
def test_config_values_that_would_produce_nothing(tmp_path, text_corpus, tiny_llama_dir, override, message):
    write_config(tmp_path, tiny_config(tiny_llama_dir, text_corpus))
    proc = snakemake(tmp_path, "-n", "--config", override.replace("SOURCE", str(text_corpus)), check=False)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr


def test_seq_len_beyond_positions_is_refused_for_opt_too(tmp_path, text_corpus, tiny_opt_dir):
    from streamline import config

    c = tiny_config(tiny_opt_dir, text_corpus)
    c["data"]["seq_len"] = 300
    with pytest.raises(StreamlineError, match="data.seq_len: 300 is longer than tiny-opt's 256 positions"):
        config.validate(c, SCHEMA)


def test_a_binary_file_is_not_a_corpus(tmp_path, tiny_llama_dir):
    (tmp_path / "weights.txt").write_bytes(np.random.default_rng(0).bytes(4096))
    line = one_error_line(
        cli(
            "prepare-data",
            "--source",
            tmp_path / "weights.txt",
            "--tokenizer",
            tiny_llama_dir,
            "--out",
            tmp_path / "d",
            "--seq-len",
            16,
            "--calib",
            1,
            "--train",
            1,
            "--val",
            1,
        )
    )
    assert "data.source:" in line and "is not text" in line
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--loss", "mse", "--batch-size", "-2"], "batch_size: -2 is out of range"),
        (["train", "--loss", "mse", "--epochs", "0"], "epochs: 0.0 is out of range"),
        (["train", "--loss", "llm", "--lr", "0"], "lr: 0.0 is out of range"),
        (["extract-calibration", "--num-samples", "0"], "argument --num-samples: must be >= 1, got 0"),
        (["extract-calibration", "--writers", "0"], "argument --writers: must be >= 1, got 0"),
        (["extract-calibration", "--device", "cuda:3"], "device: cuda:3 is not available on this machine"),
    ],
)
def test_cli_values_are_checked_like_the_config(tmp_path, tiny_llama_dir, args, message):
    data = make_data_dir(tmp_path / "data")
    common = {
        "train": [
            "--init",
            tmp_path / "init",
            "--data",
            data,
            "--out",
            tmp_path / "o",
            "--log-json",
            tmp_path / "l.json",
        ],
        "extract-calibration": ["--model", tiny_llama_dir, "--data", data, "--out", tmp_path / "c.zarr"],
    }
    line = one_error_line(cli(*args, *common[args[0]]))
    assert message in line
    assert not (tmp_path / "c.zarr").exists() and not (tmp_path / "o").exists()


# --- 6: no orphans, no two writers -----------------------------------------------------------------------------


def test_a_stage_dies_with_its_parent(tmp_path, tiny_llama_dir):
    data = make_data_dir(tmp_path / "data", num=400, seq_len=64)
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import subprocess, sys, time; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); time.sleep(600)"
            ),
            *CLI,
            "extract-calibration",
            "--model",
            str(tiny_llama_dir),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "c.zarr"),
            "--batch-size",
            "1",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "c.zarr" / "checksum").exists():
        time.sleep(0.05)
    os.kill(parent.pid, signal.SIGKILL)  # what a killed Snakemake does to its jobs' parent
    parent.wait()
    deadline = time.time() + 10
    while (
        time.time() < deadline
        and Path(f"/proc/{child}").exists()
        and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z"
    ):
        time.sleep(0.05)
    alive = Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z"
    assert not alive, "the stage outlived its parent"


def test_two_writers_never_share_a_store_or_checkpoint_dir(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from streamline.atomic import exclusive\n"
                "with exclusive(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)"
            ),
            str(tmp_path / "ck"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    try:
        with pytest.raises(StreamlineError, match="ck is being written by another running process"):
            with exclusive(tmp_path / "ck"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with exclusive(tmp_path / "ck"):  # released with the process that held it
        pass


# --- 7: config values never reach a shell unquoted ----------------------------------------------------------------


def test_hostile_values_are_quoted(tmp_path, tiny_llama_dir, text_corpus):
    weird = tmp_path / "it's a corpus"
    weird.mkdir()
    shutil.copy(text_corpus, weird / "data.jsonl")
    marker = tmp_path / "injected"
    config = tiny_config(tiny_llama_dir, weird / "data.jsonl")
    config["data"]["text_fields"] = [f"text$(touch {marker})"]
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "resources/data/tiny/corpus", check=False)
    assert not marker.exists()  # the $(...) was passed on as text, never run
    assert "data.text_fields: " in proc.stderr + proc.stdout  # ...and named as a field the records lack
    config["data"]["text_fields"] = ["text"]
    write_config(tmp_path, config)
    snakemake(tmp_path, "resources/data/tiny/corpus")  # a path with a space and an apostrophe works
    assert json.loads((tmp_path / "resources/data/tiny/corpus/meta.json").read_text())["source"] == str(
        weird / "data.jsonl"
    )


# --- 8: corrupt artifacts ----------------------------------------------------------------------------------------


def test_a_corrupt_model_dir_is_set_aside_so_its_stage_reruns(tmp_path, tiny_llama_dir):
    from streamline.download import download_model
    from streamline.pruned import load_pruned

    out = download_model(str(tiny_llama_dir), tmp_path / "models/tiny", tmp_path / "cache")
    weights = out / "model.safetensors"
    weights.write_bytes(np.random.default_rng(0).bytes(weights.stat().st_size))  # same size, other bytes
    with pytest.raises(
        StreamlineError,
        match=r"model dir .*models/tiny: model.safetensors does not match what the "
        r"stage that wrote it recorded; moved it to tiny.corrupt-\d+",
    ):
        load_pruned(out)
    assert not out.exists() and len(list((tmp_path / "models").glob("tiny.corrupt-*"))) == 1


def test_disk_full_while_checkpointing_is_one_line(tmp_path, tiny_llama_dir):
    if not shutil.which("unshare"):
        pytest.skip("unshare not available")
    from streamline.replace import replace

    data = make_data_dir(tmp_path / "data", num=8, seq_len=16)
    write_scores(tmp_path / "s.json", n=2, span=3, best=1)
    replace(tiny_llama_dir, tmp_path / "s.json", tmp_path / "init", net="transformer")
    small = tmp_path / "small"
    small.mkdir()
    cmd = (
        f"mount -t tmpfs -o size=64k none {small} || exit 77; "
        + " ".join(CLI)
        + f" train --loss llm --init {tmp_path / 'init'} --data {data} --out {tmp_path / 'out'} --log-json "
        f"{tmp_path / 'log.json'} --checkpoint-dir {small / 'ck'} --checkpoint-every 1 --batch-size 2 "
        f"--gradient-accumulation-step 1 --device cpu"
    )
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, timeout=300)
    if proc.returncode == 77:
        pytest.skip("cannot mount a tmpfs here")
    line = one_error_line(proc)
    assert "disk full writing checkpoint" in line and "GB free" in line
    assert not (tmp_path / "out").exists()


# --- 9: one line where a traceback was ---------------------------------------------------------------------------


def test_a_corrupt_config_json_is_one_line(tmp_path, tiny_llama_dir, text_corpus):
    shutil.copytree(tiny_llama_dir, tmp_path / "model")
    (tmp_path / "model/config.json").write_text('{"model_type": "llama", ')
    write_config(tmp_path, tiny_config(tmp_path / "model", text_corpus))
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "config error: model_name: " in proc.stderr and "config.json is not a valid model config" in proc.stderr


def test_scoring_a_missing_store_is_one_line(tmp_path):
    line = one_error_line(cli("score", "--store", tmp_path / "nothing.zarr", "--n", 2, "--out", tmp_path / "s.json"))
    assert "nothing.zarr: no hidden-state store here" in line


def test_a_record_in_another_format_is_no_alarm_but_a_missing_file_is(tmp_path, tiny_llama_dir):
    import shutil as sh

    from streamline.pruned import load_pruned
    from streamline.weights import RECORD, record

    sh.copytree(tiny_llama_dir, tmp_path / "m")
    (tmp_path / "m" / RECORD).write_text('{"model.safetensors": {"size": 1}}')  # an older layout of the record
    load_pruned(tmp_path / "m")  # loads; nothing is moved aside on a record it cannot read
    assert (tmp_path / "m").is_dir()
    record(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(StreamlineError, match="model.safetensors is missing"):
        load_pruned(tmp_path / "m")


def test_eval_values_reach_the_shell_quoted(tmp_path, tiny_llama_dir, text_corpus):
    marker = tmp_path / "injected"
    config = tiny_config(tiny_llama_dir, text_corpus)
    config["eval"] = {"tasks": [f"arc_easy$(touch {marker})"], "offline": False, "limit": 2}
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "-n", "--printshellcmds", "results/tiny/baseline/eval.json", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"--tasks 'arc_easy$(touch {marker})'" in proc.stdout  # one quoted word for the shell, never run
