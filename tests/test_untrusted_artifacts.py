"""Every artifact on disk is untrusted input (third reliability round): a damaged, edited, swapped or planted
file ends in one line naming it, or is repaired by rerunning what must rerun; never a wrong number with exit 0,
never a traceback, never code run from a file in results/."""

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_reliability import CLI, cli, one_error_line
from tiny import build_tiny_model, make_data_dir, write_scores
from workflow_utils import ROOT, package_copy, planned_rules, snakemake, tiny_config, workflow_env, write_config

from streamline.errors import StreamlineError
from streamline.extract import extract_hidden_states
from streamline.pairs import extract_pairs
from streamline.records import write_record
from streamline.replace import replace
from streamline.score import score
from streamline.training.recipes import train
from streamline.training.settings import TrainSettings

FAST = dict(batch_size=2, gradient_accumulation_step=1, epochs=2, lr=1e-3, min_lr=1e-4, device="cpu")


@pytest.fixture
def calibrated(tiny_llama_dir, tmp_path):
    """A calibration store with its manifest, as the workflow writes them."""
    data = make_data_dir(tmp_path / "data", num=8, seq_len=16)
    extract_hidden_states(tiny_llama_dir, data, tmp_path / "c.zarr", device="cpu", manifest=tmp_path / "c.json")
    return tmp_path / "c.zarr", tmp_path / "c.json", data


def _extract_again(model, data, tmp_path):
    return extract_hidden_states(model, data, tmp_path / "c.zarr", device="cpu", manifest=tmp_path / "c.json")


# --- 1. a model swapped in by `cp -a` (old mtimes kept) -------------------------------------------------------


def _swap_keeping_mtimes(target: Path, other: Path) -> None:
    """What `cp -a other/* target/` does: other's bytes, other's (older) mtimes."""
    for f in other.iterdir():
        shutil.copy2(f, target / f.name)


def test_a_model_swapped_in_with_old_mtimes_reruns_the_download(tmp_path, text_corpus):
    other = build_tiny_model("llama", tmp_path / "other", seed=7)  # built first: its files are older
    time.sleep(1.1)
    model = build_tiny_model("llama", tmp_path / "model")
    write_config(tmp_path, tiny_config(model, text_corpus))
    snakemake(tmp_path, "resources/models/tiny")
    assert planned_rules(tmp_path, "resources/models/tiny") == {}
    _swap_keeping_mtimes(model, other)
    assert planned_rules(tmp_path, "resources/models/tiny") == {"download_model": 1}


def test_a_weight_file_swapped_with_the_same_size_and_mtime_is_caught(tmp_path, tiny_llama_dir):
    from streamline.download import download_model
    from streamline.pruned import load_pruned

    out = download_model(str(tiny_llama_dir), tmp_path / "models/tiny", tmp_path / "cache")
    other = build_tiny_model("llama", tmp_path / "other", seed=3)
    st = (out / "model.safetensors").stat()
    shutil.copyfile(other / "model.safetensors", out / "model.safetensors")
    os.utime(out / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as recorded
    assert (out / "model.safetensors").stat().st_size == st.st_size
    with pytest.raises(StreamlineError, match="model.safetensors does not match what the stage that wrote it"):
        load_pruned(out)


# --- 2. a store whose zarr.json was edited -----------------------------------------------------------------------


def _edit_shape(store: Path, samples: int) -> None:
    meta = json.loads((store / "hidden/zarr.json").read_text())
    meta["shape"][1] = samples
    (store / "hidden/zarr.json").write_text(json.dumps(meta))


def test_an_edited_store_shape_is_refused_by_readers_and_rebuilt_by_extraction(calibrated, tiny_llama_dir, tmp_path):
    store, manifest, data = calibrated
    reference = score(manifest, 2, tmp_path / "ref.json").scores
    _edit_shape(store, 4)
    line = one_error_line(cli("score", "--store", manifest, "--n", 2, "--out", tmp_path / "s.json"))
    assert "c.zarr: the store's shape was changed" in line and "run the extraction again" in line
    assert not (tmp_path / "s.json").exists()
    summary = _extract_again(tiny_llama_dir, data, tmp_path)
    assert summary["shape"][1] == 8 and summary["computed_samples"] == 8
    assert score(manifest, 2, tmp_path / "s.json").scores == reference


# --- 3. zero training tokens ----------------------------------------------------------------------------------


def test_skipping_every_position_on_the_cli_is_one_line(tiny_llama_dir, tmp_path):
    data = make_data_dir(tmp_path / "data", num=8, seq_len=16)
    score_file = tmp_path / "s.json"
    write_scores(score_file, n=2, span=3, best=1)
    replace(tiny_llama_dir, score_file, tmp_path / "init", net="transformer")
    line = one_error_line(
        cli(
            "train",
            "--loss",
            "mse",
            "--init",
            tmp_path / "init",
            "--data",
            data,
            "--out",
            tmp_path / "out",
            "--log-json",
            tmp_path / "log.json",
            "--skip-first-tokens",
            99,
            "--device",
            "cpu",
        )
    )
    assert "train.skip_first_tokens: 99 leaves no position of a 16-token block" in line
    assert not (tmp_path / "out").exists()


def test_training_blocks_with_no_real_token_are_one_line(tiny_llama_dir, tmp_path):
    data = make_data_dir(tmp_path / "data", num=8, seq_len=16)
    np.save(data / "train_attention_mask.npy", np.zeros((8, 16), dtype=np.uint8))
    write_scores(tmp_path / "s.json", n=2, span=3, best=1)
    replace(tiny_llama_dir, tmp_path / "s.json", tmp_path / "init", net="transformer")
    with pytest.raises(StreamlineError, match="step 1 has no token in its loss"):
        train("llm", tmp_path / "init", tmp_path / "out", tmp_path / "log.json", TrainSettings(**FAST), data_dir=data)
    assert not (tmp_path / "out").exists()


# --- 4, 5. checkpoints: a damaged one leaves no state behind; a planted pickle never runs ------------------------


@pytest.fixture(scope="module")
def mse_setup(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    data = make_data_dir(root / "data", num=40, seq_len=16, pattern="arithmetic")
    extract_hidden_states(tiny_llama_dir, data, root / "c.zarr", device="cpu")
    score(root / "c.zarr", 2, root / "s.json")
    replace(tiny_llama_dir, root / "s.json", root / "init", net="transformer")
    extract_pairs(tiny_llama_dir, data, root / "s.json", root / "pairs", device="cpu", manifest=root / "pairs.json")
    args = [
        "--loss",
        "mse",
        "--init",
        root / "init",
        "--pairs",
        root / "pairs.json",
        "--data",
        data,
        "--batch-size",
        1,
        "--gradient-accumulation-step",
        1,
        "--epochs",
        3,
        "--lr",
        "1e-3",
        "--min-lr",
        "1e-4",
        "--checkpoint-every",
        1,
        "--val-every",
        40,
        "--device",
        "cpu",
    ]
    subprocess.run(
        [*CLI, "train", *map(str, args), "--out", root / "ref", "--log-json", root / "ref.json"],
        check=True,
        capture_output=True,
    )
    return root, args


def _killed_run(root: Path, args: list, name: str) -> Path:
    """A run killed once a checkpoint beyond step 2 is complete: its checkpoint dir."""
    ck = root / name / "ck"
    proc = subprocess.Popen(
        [
            *CLI,
            "train",
            *map(str, args),
            "--out",
            str(root / name / "model"),
            "--log-json",
            str(root / name / "log.json"),
            "--checkpoint-dir",
            str(ck),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads((ck / "progress.json").read_text())["state"]["step"] >= 3:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (ck / "progress.json").exists() and not (root / name / "model").exists()
    return ck


def _resume(root: Path, args: list, name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            *CLI,
            "train",
            *map(str, args),
            "--out",
            str(root / name / "model"),
            "--log-json",
            str(root / name / "log.json"),
            "--checkpoint-dir",
            str(root / name / "ck"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_a_garbage_best_file_leaves_no_state_behind(mse_setup):
    root, args = mse_setup
    ck = _killed_run(root, args, "garbage")
    best = next(ck.glob("best-*.safetensors"))
    best.write_bytes(b"\0garbage" * 100)
    proc = _resume(root, args, "garbage")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cannot be read" in proc.stderr and "starting afresh" in proc.stderr
    log = json.loads((root / "garbage/log.json").read_text())
    assert log["resumed_at_step"] is None
    # started afresh for real: nothing of the set-aside checkpoint (weights, optimizer) was kept
    assert _same_weights(root / "garbage/model", root / "ref")
    assert log["steps"] == json.loads((root / "ref.json").read_text())["steps"]


@pytest.mark.parametrize("edit", ["unrecorded best file", "done without a result", "done with an edited log"])
def test_an_edited_progress_file_is_set_aside_not_a_traceback(mse_setup, edit):
    root, args = mse_setup
    name = edit.replace(" ", "-")
    ck = _killed_run(root, args, name)
    progress = json.loads((ck / "progress.json").read_text())
    if edit == "unrecorded best file":  # a weights file nobody checksummed would be loaded as the best state
        shutil.copy(next(ck.glob("best-*.safetensors")), ck / "best-9999999.safetensors")
        progress["best_file"] = "best-9999999.safetensors"
    elif edit == "done without a result":
        progress["done"] = True
    else:  # a finished run's log, edited: it would be written out as this run's train log
        ref = json.loads((root / "ref.json").read_text())
        progress.update(done=True, result={**ref, "train_tokens": "many"})
    if edit == "done without a result":  # by hand: its digest no longer matches, which is caught first
        (ck / "progress.json").write_text(json.dumps(progress))
    else:  # its digest rewritten too: the checks behind it catch it
        write_record(ck / "progress.json", progress)
    proc = _resume(root, args, name)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "cannot be read" in proc.stderr and "starting afresh" in proc.stderr
    assert ("does not match its digest" in proc.stderr) == (edit == "done without a result")
    assert json.loads((root / name / "log.json").read_text())["resumed_at_step"] is None
    assert _same_weights(root / name / "model", root / "ref")


class _Planted:
    """A pickle that runs a command when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(ck: Path, marker: Path, forge_checksum: bool) -> None:
    import hashlib

    progress = json.loads((ck / "progress.json").read_text())
    target = ck / progress["state_dir"] / "optimizer.bin"
    target.write_bytes(pickle.dumps(_Planted(marker)))
    if forge_checksum:  # someone who can write results/ can also rewrite progress.json, and its digest
        progress["files"][str(target.relative_to(ck))] = hashlib.sha256(target.read_bytes()).hexdigest()
        write_record(ck / "progress.json", progress)


def test_a_planted_pickle_is_never_loaded(mse_setup, tmp_path):
    root, args = mse_setup
    marker = tmp_path / "pwned"
    _plant(_killed_run(root, args, "planted"), marker, forge_checksum=False)
    proc = _resume(root, args, "planted")
    assert proc.returncode == 0 and "not what was saved" in proc.stderr and "starting afresh" in proc.stderr
    assert not marker.exists()
    assert _same_weights(root / "planted/model", root / "ref")


def test_a_planted_pickle_with_a_forged_checksum_is_not_unpickled(mse_setup, tmp_path):
    root, args = mse_setup
    marker = tmp_path / "pwned"
    ck = _killed_run(root, args, "forged")
    _plant(ck, marker, forge_checksum=True)
    line = one_error_line(_resume(root, args, "forged"))
    assert "passed its checksums but cannot be loaded" in line and "set aside" in line
    assert not marker.exists() and not (root / "forged/model").exists()
    assert not ck.exists() and list((root / "forged").glob("ck.unreadable-*"))


# --- tracebacks that are now one line ------------------------------------------------------------------------------


@contextmanager
def cpu_hog():
    """Every core busy, as on a shared machine: timing-dependent output shows up here."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def test_a_garbage_checksum_table_is_one_line_and_extraction_repairs_it(calibrated, tiny_llama_dir, tmp_path):
    store, manifest, data = calibrated
    chunks = [c for c in (store / "checksum/c").rglob("*") if c.is_file()]
    assert len(chunks) == 8
    for chunk in chunks:
        chunk.write_bytes(b"\x28\xb5\x2f\xfdgarbage")  # a zstd magic number, then nothing that decodes
    with cpu_hog():  # under load, zarr's other reads were still in flight at exit: their tracebacks leaked
        for _ in range(3):
            proc = cli("score", "--store", manifest, "--n", 2, "--out", tmp_path / "s.json")
            assert "the checksum table cannot be read" in one_error_line(proc)
            assert "Task was destroyed" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert _extract_again(tiny_llama_dir, data, tmp_path)["computed_samples"] == 8
    score(manifest, 2, tmp_path / "s.json")


@pytest.mark.parametrize("damage", ["deleted", "torn"])
def test_a_damaged_zarr_json_is_one_line_and_extraction_is_never_stuck(calibrated, tiny_llama_dir, tmp_path, damage):
    store, manifest, data = calibrated
    meta = store / "hidden/zarr.json"
    meta.unlink() if damage == "deleted" else meta.write_text(meta.read_text()[:40])
    line = one_error_line(cli("score", "--store", manifest, "--n", 2, "--out", tmp_path / "s.json"))
    assert "c.zarr: the store's metadata cannot be read" in line
    for _ in range(2):  # every rerun works, not only the first
        assert _extract_again(tiny_llama_dir, data, tmp_path)["shape"] == [7, 8, 16, 32]
    score(manifest, 2, tmp_path / "s.json")


def test_a_manifest_whose_store_is_not_a_path_is_one_line(tmp_path):
    write_record(tmp_path / "m.json", {"store": 5})
    line = one_error_line(cli("score", "--store", tmp_path / "m.json", "--n", 2, "--out", tmp_path / "s.json"))
    assert "m.json: the store manifest is incomplete (no valid 'store')" in line


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("binary.jsonl", bytes(range(256)) * 8, "is not a JSON record (not UTF-8 text)"),
        ("fake.jsonl.gz", b'{"text": "not gzipped"}\n', "cannot be read as gzip"),
        ("mixed.jsonl", b'{"text": "fine"}\nnot json\n', "line 2 is not a JSON record"),
        ("array.jsonl", b'{"text": "fine"}\n[1, 2]\n', "line 2 is not a JSON record (not a JSON object)"),
    ],
)
def test_a_broken_jsonl_corpus_is_one_line(tmp_path, tiny_llama_dir, name, content, message):
    (tmp_path / name).write_bytes(content)
    line = one_error_line(
        cli(
            "prepare-data",
            "--source",
            tmp_path / name,
            "--tokenizer",
            tiny_llama_dir,
            "--out",
            tmp_path / "d",
            "--seq-len",
            8,
            "--calib",
            1,
            "--train",
            1,
            "--val",
            1,
        )
    )
    assert f"data.source: {tmp_path / name}" in line and message in line
    assert not (tmp_path / "d").exists()


def test_kd_top_k_above_the_vocabulary_is_one_line(tmp_path, tiny_llama_dir, text_corpus):
    from streamline import config as cfg

    c = tiny_config(tiny_llama_dir, text_corpus, loss="kd", **{"kd.top_k": 10_000})
    with pytest.raises(StreamlineError, match="kd.top_k: 10000 is more than tiny-llama's 300 tokens"):
        cfg.validate(c)
    data = make_data_dir(tmp_path / "data", num=4, seq_len=16)
    write_scores(tmp_path / "s.json", n=2, span=3, best=1)
    replace(tiny_llama_dir, tmp_path / "s.json", tmp_path / "init", net="transformer")
    line = one_error_line(
        cli(
            "train",
            "--loss",
            "kd",
            "--init",
            tmp_path / "init",
            "--data",
            data,
            "--out",
            tmp_path / "out",
            "--log-json",
            tmp_path / "l.json",
            "--kd-top-k",
            10_000,
            "--device",
            "cpu",
        )
    )
    assert "kd.top_k: 10000 is more than the model's 300 tokens" in line


def test_a_malformed_accelerate_config_is_one_line(tmp_path):
    (tmp_path / "acc.yaml").write_text("distributed_type: [DEEPSPEED\n  num_processes: 2\n")
    line = one_error_line(cli("launch", "--config", tmp_path / "acc.yaml", "--", "train", "--help"))
    assert "llm.accelerate_config: " in line and "acc.yaml is not valid YAML" in line


def test_a_full_disk_inside_safetensors_while_checkpointing_is_one_line(mse_setup, tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    root, _ = mse_setup

    def full(*args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    s = TrainSettings(**{**FAST, "checkpoint_every": 1})
    with pytest.raises(StreamlineError, match="disk full writing checkpoint .*GB free"):
        train(
            "mse",
            root / "init",
            tmp_path / "out",
            tmp_path / "log.json",
            s,
            data_dir=root / "data",
            pairs_dir=root / "pairs.json",
            checkpoint_dir=tmp_path / "ck",
        )
    assert not (tmp_path / "out").exists()


def test_a_torn_weights_record_is_one_line_and_the_dir_is_rebuilt(tmp_path, tiny_llama_dir):
    from streamline.download import download_model
    from streamline.pruned import load_pruned

    out = download_model(str(tiny_llama_dir), tmp_path / "models/tiny", tmp_path / "cache")
    (out / "streamline-weights.json").write_text('{"origin": null, "files": {"config.j')
    (out / "model.safetensors").write_bytes(b"truncated")  # what the torn record can no longer catch
    with pytest.raises(StreamlineError, match="streamline-weights.json is torn .* moved it to tiny.corrupt-"):
        load_pruned(out)
    assert not out.exists()


@pytest.mark.parametrize("damage", ["torn", "incomplete"])
def test_a_damaged_init_streamline_json_is_one_line_and_moves_the_dir_aside(tmp_path, tiny_llama_dir, damage):
    data = make_data_dir(tmp_path / "data", num=4, seq_len=16)
    write_scores(tmp_path / "s.json", n=2, span=3, best=1)
    replace(tiny_llama_dir, tmp_path / "s.json", tmp_path / "init", net="transformer")
    info = tmp_path / "init/streamline.json"
    if damage == "torn":
        info.write_text(info.read_text()[:50])
    else:
        record = json.loads(info.read_text())
        del record["block"]
        info.write_text(json.dumps(record))
    line = one_error_line(
        cli(
            "train",
            "--loss",
            "llm",
            "--init",
            tmp_path / "init",
            "--data",
            data,
            "--out",
            tmp_path / "out",
            "--log-json",
            tmp_path / "l.json",
            "--device",
            "cpu",
        )
    )
    assert "init" in line and "moved it to init.corrupt-" in line
    assert not (tmp_path / "init").exists()


def test_an_unrecorded_init_dir_with_an_incomplete_streamline_json_is_one_line(tmp_path, tiny_llama_dir):
    write_scores(tmp_path / "s.json", n=2, span=3, best=1)
    replace(tiny_llama_dir, tmp_path / "s.json", tmp_path / "init", net="transformer")
    (tmp_path / "init/streamline-weights.json").unlink()  # a dir copied by hand, without its record
    write_record(tmp_path / "init/streamline.json", {"net": "transformer"})
    with pytest.raises(
        StreamlineError,
        match=r"streamline.json: the model dir's streamline.json is incomplete "
        r"\(no valid 'name'\); moved init aside",
    ):
        train(
            "llm",
            tmp_path / "init",
            tmp_path / "out",
            tmp_path / "l.json",
            TrainSettings(**FAST),
            data_dir=make_data_dir(tmp_path / "data"),
        )


@pytest.mark.parametrize("content", ['{"n": 2, "span": 3, "blo', '{"n": 2, "span": 3, "block": "1..3", "metric": "c"}'])
def test_damaged_scores_are_one_line_and_set_aside(tmp_path, tiny_llama_dir, content):
    (tmp_path / "scores.json").write_text(content)
    line = one_error_line(
        cli(
            "replace",
            "--model",
            tiny_llama_dir,
            "--scores",
            tmp_path / "scores.json",
            "--net",
            "transformer",
            "--out",
            tmp_path / "init",
        )
    )
    assert "scores.json: the block scores is" in line and "run the workflow again to rebuild it" in line
    assert not (tmp_path / "scores.json").exists() and not (tmp_path / "init").exists()


def test_scores_whose_block_is_not_their_best_window_are_set_aside(tmp_path, tiny_llama_dir):
    """An edited block of valid layers would prune the wrong layers with exit 0: it must match its windows."""
    path = write_scores(tmp_path / "scores.json", n=2, span=3, best=1)
    write_record(path, {**json.loads(path.read_text()), "block": [2, 3, 4], "best_start": 2})  # digest too
    line = one_error_line(
        cli("replace", "--model", tiny_llama_dir, "--scores", path, "--net", "transformer", "--out", tmp_path / "init")
    )
    assert "block [2, 3, 4] is not the best window (layers 1..3)" in line and not (tmp_path / "init").exists()


def test_a_truncated_token_file_is_one_line(tmp_path, tiny_llama_dir):
    data = make_data_dir(tmp_path / "data", num=8, seq_len=16)
    raw = (data / "train_input_ids.npy").read_bytes()
    (data / "train_input_ids.npy").write_bytes(raw[: len(raw) // 2])
    line = one_error_line(
        cli("perplexity", "--model", tiny_llama_dir, "--data", data, "--split", "train", "--device", "cpu")
    )
    assert "train_input_ids.npy: cannot be read" in line and "run prepare-data again" in line


def test_token_ids_outside_the_vocabulary_are_one_line(tmp_path, tiny_llama_dir):
    data = make_data_dir(tmp_path / "data", num=8, seq_len=16, vocab=5000)  # the tiny model has 300 tokens
    line = one_error_line(
        cli(
            "extract-calibration",
            "--model",
            tiny_llama_dir,
            "--data",
            data,
            "--out",
            tmp_path / "c.zarr",
            "--device",
            "cpu",
        )
    )
    assert "calib_input_ids.npy: token id" in line and "outside the model's vocabulary (0..299)" in line
    assert not (tmp_path / "c.zarr").exists()


def test_an_alias_of_dots_is_refused_by_the_schema(tmp_path, tiny_llama_dir, text_corpus):
    write_config(tmp_path, tiny_config(tiny_llama_dir, text_corpus, model_alias=".."))
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "config error: model_alias: '..' does not match" in proc.stderr
    assert not list(tmp_path.glob("*.log")) and not (tmp_path / "resources").exists()


def test_a_stage_failure_under_the_launcher_is_one_line(tmp_path):
    acc = ROOT / "configs/accelerate/ddp.yaml"
    proc = cli(
        "launch",
        "--config",
        acc,
        "--num-processes",
        1,
        "--",
        "train",
        "--loss",
        "llm",
        "--init",
        tmp_path / "nothing",
        "--data",
        tmp_path / "nodata",
        "--out",
        tmp_path / "o",
        "--log-json",
        tmp_path / "l.json",
    )
    line = one_error_line(proc)
    assert line.startswith("streamline train: error: ") and "nothing: no streamline.json" in line
    assert "ChildFailedError" not in proc.stderr and "Traceback" not in proc.stderr


# --- unclear messages -------------------------------------------------------------------------------------------


def test_missing_paths_in_the_config_name_their_key(tmp_path, tiny_llama_dir, text_corpus):
    write_config(tmp_path, tiny_config(tiny_llama_dir, text_corpus, eval_data=tmp_path / "no-such-eval-data"))
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "config error: eval.data: " in proc.stderr and "MissingInput" not in proc.stderr
    write_config(tmp_path, tiny_config(tmp_path / "no-such-model", text_corpus))
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "config error: model_name: path " in proc.stderr
    assert "does not exist" in proc.stderr and "MissingInput" not in proc.stderr


def test_a_full_disk_names_the_path_written_and_its_free_space(tmp_path, monkeypatch, capsys):
    from streamline import cli as cli_module

    usage = {}

    def disk_usage(path):
        usage["path"] = Path(path)
        return shutil._ntuple_diskusage(100, 99, 1)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)

    def full(a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("streamline.replace.run", full)
    (tmp_path / "big").mkdir()
    code = cli_module.main(
        [
            "--log",
            str(tmp_path / "log.txt"),
            "replace",
            "--model",
            "m",
            "--scores",
            "s",
            "--net",
            "none",
            "--out",
            str(tmp_path / "big/init"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"disk full writing {tmp_path / 'big/init'} (0.00 GB free there)" in err
    assert usage["path"] == tmp_path / "big"  # the filesystem written to, not the working dir's
    assert "disk full writing" in (tmp_path / "log.txt").read_text()  # the log Snakemake points to has it too


def test_the_error_line_is_in_the_log_file_too(tmp_path):
    proc = cli(
        "--log",
        tmp_path / "stage.log",
        "score",
        "--store",
        tmp_path / "nothing.zarr",
        "--n",
        2,
        "--out",
        tmp_path / "s.json",
    )
    line = one_error_line(proc)
    assert line in (tmp_path / "stage.log").read_text()


# --- Ctrl-C of Snakemake, a moved project ---------------------------------------------------------------------


@pytest.mark.slow
def test_an_interrupted_snakemake_does_not_retrain_a_finished_job(tmp_path, tiny_llama_dir, text_corpus):
    config = tiny_config(
        tiny_llama_dir,
        text_corpus,
        epochs=20,
        batch_size=1,
        gradient_accumulation_step=1,
        network="transformer",
        **{"train.val_every": 100},
    )
    write_config(tmp_path, config)
    target = "results/tiny/n2/transformer-mse/train_log.json"
    snakemake(tmp_path, "results/tiny/n2/pairs.json", "results/tiny/n2/transformer/init")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "workflow/Snakefile"),
            "-d",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "config.yaml"),
            "--cores",
            "2",
            target,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        env=workflow_env(),
    )
    log = tmp_path / "logs/tiny/n2/train_transformer-mse.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and "initial validation" in log.read_text()):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)  # `kill -INT <snakemake>`: the job itself runs on to its end
    proc.wait(timeout=600)
    first = json.loads((tmp_path / "results/tiny/n2/transformer-mse/checkpoint/progress.json").read_text())
    assert first.get("done") is True
    snakemake(tmp_path, "--unlock")
    snakemake(tmp_path, "--rerun-incomplete", target)  # what profiles/default sets
    assert "training already finished" in log.read_text()
    assert json.loads((tmp_path / target).read_text())["steps"] == first["result"]["steps"]


def test_a_moved_project_reruns_nothing(tmp_path, tiny_llama_dir, text_corpus):
    """The checkout (package and workflow) and its results moved together: every code input and param keeps its
    meaning, so Snakemake finds nothing to do."""
    project = tmp_path / "project"
    shutil.copytree(package_copy(), project / "streamline")
    shutil.copytree(ROOT / "workflow", project / "workflow", symlinks=True)
    write_config(project, tiny_config(tiny_llama_dir, text_corpus))

    def run(root: Path, *args: str) -> str:
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(root / "workflow/Snakefile"),
            "-d",
            str(root),
            "--configfile",
            str(root / "config.yaml"),
            "--cores",
            "2",
            *args,
            "results/tiny/n2/scores.json",
        ]
        env = {**os.environ, "PYTHONPATH": str(root)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    run(project)
    assert "Nothing to be done" in run(project, "-n")
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    project.rename(moved)
    assert "Nothing to be done" in run(moved, "-n")


# --- a checkpoint's progress.json: its step and its best are what the run saved (fourth round) -----------------


@pytest.mark.parametrize("edit", ["step beyond the plan", "best below its validations", "best NaN"])
def test_a_progress_file_out_of_range_is_set_aside_and_training_reruns(mse_setup, edit):
    """progress.json's step set to 10^9 skipped every step (exit 0); its best set to -1e300 kept the step-0
    weights; a NaN best was taken as computed. Each is set aside now, and the run trains afresh, even with
    its digest rewritten too (a stale digest alone sets it aside: test_an_edited_progress_file_...)."""
    root, args = mse_setup
    name = edit.replace(" ", "-").replace(",", "")
    ck = _killed_run(root, args, name)
    progress = json.loads((ck / "progress.json").read_text())
    if edit.startswith("step"):
        progress["state"]["step"] = 10**9
    else:
        progress["state"]["best"] = -1e300 if edit.startswith("best below") else float("nan")
    from streamline.records import digest

    (ck / "progress.json").write_text(json.dumps({**progress, "digest": digest(progress)}))  # NaN: not strict
    proc = _resume(root, args, name)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "cannot be read" in proc.stderr and "starting afresh" in proc.stderr
    assert json.loads((root / name / "log.json").read_text())["resumed_at_step"] is None
    assert _same_weights(root / name / "model", root / "ref")
    assert list((root / name).glob("ck.unreadable-*"))


# --- every file a stage reads is an input of its rule ------------------------------------------------------------


def _jobs(workdir: Path) -> dict[str, dict]:
    """The workflow's jobs that have run, by log file: rule, declared inputs and outputs (--detailed-summary)."""
    lines = snakemake(workdir, "--detailed-summary").stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("output_file\t"))
    head, jobs = lines[start].split("\t"), {}
    for line in lines[start + 1 :]:
        row = dict(zip(head, line.split("\t")))
        job = jobs.setdefault(row["log-file(s)"], {"rule": row["rule"], "inputs": set(), "outputs": set()})
        job["inputs"] |= {p.strip() for p in row["input-file(s)"].split(",") if p.strip() not in ("", "-")}
        job["outputs"].add(row["output_file"])
    return jobs


def _stores(workdir: Path, inputs: set[str]) -> set[str]:
    """The stores named by the declared manifests: their files count as declared."""
    stores = set()
    for path in (p for p in inputs if p.endswith(".json") and (workdir / p).is_file()):
        manifest = json.loads((workdir / path).read_text())
        stores |= {
            e["store"]
            for e in (manifest, manifest.get("train"), manifest.get("val"))
            if isinstance(e, dict) and isinstance(e.get("store"), str)
        }
    return stores


def _within(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def test_every_file_a_stage_opens_is_an_input_of_its_rule(tiny_workflow):
    """Each job of the tiny workflow recorded the files it opened under results/ and resources/ (audit.py). A
    file it read must be a declared input (or inside a declared dir, or in the store a declared manifest names):
    else Snakemake never reruns the job when that file changes. The job's own outputs (and their .partial
    scratch) and whatever it wrote itself (its checkpoints) are its own."""
    workdir, _, audit = tiny_workflow
    jobs = _jobs(workdir)
    undeclared, rules = {}, set()
    for record in (json.loads(f.read_text()) for f in audit.glob("*.json")):
        argv = record["argv"]
        job = jobs[argv[argv.index("--log") + 1]]
        rules.add(job["rule"])
        own = job["outputs"] | {f"{o}.partial" for o in job["outputs"]} | set(record["writes"])
        declared = job["inputs"] | _stores(workdir, job["inputs"])
        bad = [p for p in record["reads"] if not _within(p, declared | own)]
        if bad:
            undeclared[job["rule"]] = bad
    assert {
        "extract_calibration",
        "score",
        "extract_pairs",
        "train_mse",
        "evaluate_variant",
        "stability",
        "report",
    } <= rules  # every kind of stage was watched
    assert not undeclared, f"read but not declared as inputs: {undeclared}"


def test_every_file_the_report_reads_is_an_input_of_its_rule(tmp_path, tiny_llama_dir, text_corpus):
    """Every file of the report's manifest (train_log.json, estimate_log.json and gguf.json included) is an input
    of the report rule, for every kind of variant: an edit of any of them reruns the report."""
    import shlex

    from workflow_utils import make_eval_data

    config = tiny_config(
        tiny_llama_dir,
        text_corpus,
        eval_data=make_eval_data(tmp_path / "eval"),
        network=["none", "transformer", "linear"],
        loss=["mse", "llm"],
        export={"gguf": "f16"},
    )
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "-n", "-p", "results/summary.json")
    text = proc.stdout + proc.stderr
    job = text[text.index("rule report:") :]
    inputs = {p.strip() for p in job.split("input:", 1)[1].split("\n", 1)[0].split(",")}
    command = shlex.split(job.split("Shell command:", 1)[1].split("\n", 1)[0])
    manifest = json.loads(command[command.index("--manifest") + 1])
    files = {f for spec in [manifest["baseline"], *manifest["rows"]] for key, f in spec.items() if key != "name" and f}
    assert {Path(f).name for f in files} >= {"train_log.json", "estimate_log.json", "gguf.json", "stability.json"}
    assert files | set(manifest["scores"]) <= inputs, sorted((files | set(manifest["scores"])) - inputs)
