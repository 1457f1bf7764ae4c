"""A stage deletes or replaces only what it can show it wrote: a user's directory given as --out (or sitting
where a scratch dir goes) is refused in one line and left exactly as it was; a store or model dir that is a
symlink to another disk is restarted or replaced through the link, and the link stays."""

import json
import os
from pathlib import Path

import pytest
from test_reliability import cli, one_error_line
from tiny import make_data_dir, write_scores

from streamline.errors import StreamlineError
from streamline.extract import extract_hidden_states
from streamline.ownership import MARKER, move_aside
from streamline.store import HiddenStore


def user_dir(path: Path) -> Path:
    """A directory holding a user's files (one of them named like a store's own)."""
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("three years of work")
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    return path


def intact(path: Path) -> bool:
    return (path / "thesis.tex").read_text() == "three years of work" and not (path / MARKER).exists()


@pytest.fixture
def data(tmp_path):
    return make_data_dir(tmp_path / "data", num=6, seq_len=16)


@pytest.mark.parametrize("command", ["extract-calibration", "extract-linear", "extract-pairs"])
def test_an_extraction_into_a_users_directory_is_refused_and_touches_nothing(command, tmp_path, tiny_llama_dir, data):
    out = user_dir(tmp_path / "mine")
    args = ["--model", tiny_llama_dir, "--data", data, "--device", "cpu", "--num-samples", 2]
    if command != "extract-calibration":
        scores = write_scores(
            tmp_path / "scores.json", best=1, n=2, span=2 if command == "extract-linear" else 3, num_layers=6
        )
        args += ["--scores", scores]
    target = out / "train" if command == "extract-pairs" else out
    if command == "extract-pairs":
        user_dir(target)
    line = one_error_line(cli(command, *args, "--out", out))
    assert str(target) in line and "not written by streamline" in line and "remove it" in line
    assert intact(target) and intact(out)


@pytest.mark.parametrize("command", ["replace", "prepare-data", "download"])
def test_a_stage_writing_a_directory_never_replaces_a_users_directory(
    command, tmp_path, tiny_llama_dir, data, text_corpus
):
    out = user_dir(tmp_path / "mine")
    args = {
        "replace": [
            "--model",
            tiny_llama_dir,
            "--net",
            "transformer",
            "--scores",
            write_scores(tmp_path / "s.json", best=1, n=2, span=3, num_layers=6),
        ],
        "prepare-data": [
            "--source",
            text_corpus,
            "--tokenizer",
            tiny_llama_dir,
            "--seq-len",
            16,
            "--calib",
            2,
            "--train",
            2,
            "--val",
            2,
            "--text-fields",
            "text",
        ],
        "download": ["--model-name", tiny_llama_dir, "--cache", tmp_path / "cache"],
    }[command]
    line = one_error_line(cli(command, *args, "--out", out))
    assert str(out) in line and "not written by streamline" in line
    assert intact(out)


def test_a_users_directory_where_the_scratch_dir_goes_is_refused(tmp_path, tiny_llama_dir):
    scratch = user_dir(tmp_path / "init.partial")
    line = one_error_line(
        cli(
            "replace",
            "--model",
            tiny_llama_dir,
            "--net",
            "none",
            "--out",
            tmp_path / "init",
            "--scores",
            write_scores(tmp_path / "s.json", best=1, n=2, span=2, num_layers=6),
        )
    )
    assert str(scratch) in line and intact(scratch) and not (tmp_path / "init").exists()


def test_an_empty_directory_and_streamlines_own_output_may_be_replaced(tmp_path, tiny_llama_dir):
    out = tmp_path / "init"
    out.mkdir()  # `mkdir out && streamline replace --out out`: nothing in it to lose
    scores = write_scores(tmp_path / "s.json", best=1, n=2, span=2, num_layers=6)
    for _ in range(2):  # and the second run replaces what the first wrote
        assert (
            cli("replace", "--model", tiny_llama_dir, "--net", "none", "--scores", scores, "--out", out).returncode == 0
        )
        assert (out / MARKER).is_file() and (out / "config.json").is_file()


def test_a_symlinked_store_is_restarted_through_the_link(tmp_path, tiny_llama_dir, data):
    other_disk = tmp_path / "big-disk" / "calibration.zarr"
    other_disk.parent.mkdir()
    extract_hidden_states(tiny_llama_dir, data, other_disk, device="cpu", num_samples=2)
    link = tmp_path / "calibration.zarr"
    link.symlink_to(other_disk)
    # other inputs (4 samples, not 2): the store starts afresh, where the link points
    summary = extract_hidden_states(tiny_llama_dir, data, link, device="cpu", num_samples=4)
    assert link.is_symlink() and os.path.realpath(link) == str(other_disk)
    assert summary["computed_samples"] == 4 and HiddenStore(link).num_samples == 4
    assert HiddenStore(other_disk).require_complete().num_samples == 4
    # and a rerun resumes through it with nothing to do
    assert extract_hidden_states(tiny_llama_dir, data, link, device="cpu", num_samples=4)["computed_samples"] == 0


def test_a_dangling_store_link_is_written_through_not_stuck(tmp_path, tiny_llama_dir, data):
    link = tmp_path / "calibration.zarr"
    (tmp_path / "disk").mkdir()
    link.symlink_to(tmp_path / "disk" / "c.zarr")  # the target is not there yet
    extract_hidden_states(tiny_llama_dir, data, link, device="cpu", num_samples=2)
    assert link.is_symlink() and HiddenStore(tmp_path / "disk" / "c.zarr").require_complete().num_samples == 2


def test_a_symlinked_model_dir_is_replaced_through_the_link(tmp_path, tiny_llama_dir):
    real = tmp_path / "big-disk" / "init"
    real.parent.mkdir()
    link = tmp_path / "init"
    link.symlink_to(real)
    scores = write_scores(tmp_path / "s.json", best=1, n=2, span=2, num_layers=6)
    for _ in range(2):
        assert (
            cli("replace", "--model", tiny_llama_dir, "--net", "none", "--scores", scores, "--out", link).returncode
            == 0
        )
        assert link.is_symlink() and (real / "config.json").is_file() and (real / MARKER).is_file()
    assert not (tmp_path / "init.partial").exists() and not (real.parent / "init.partial").exists()


def test_damaged_copies_moved_aside_keep_only_the_last_per_path(tmp_path):
    victim = tmp_path / "eval.json"
    for i in range(3):
        victim.write_text(f"damage {i}")
        moved = move_aside(victim)
        os.utime(moved)
    kept = sorted(tmp_path.glob("eval.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == "damage 2"


def test_a_checkpoint_dir_that_is_a_users_directory_is_refused(tmp_path, tiny_llama_dir, data):
    from streamline.training.recipes import train
    from streamline.training.settings import TrainSettings

    scores = write_scores(tmp_path / "s.json", best=1, n=2, span=3, num_layers=6)
    assert (
        cli(
            "replace", "--model", tiny_llama_dir, "--net", "transformer", "--scores", scores, "--out", tmp_path / "init"
        ).returncode
        == 0
    )
    mine = user_dir(tmp_path / "ckpt")
    (mine / "state-0000001").mkdir()  # named like a checkpoint's own leftovers
    with pytest.raises(StreamlineError, match="not written by streamline"):
        train(
            "llm",
            tmp_path / "init",
            tmp_path / "out",
            tmp_path / "log.json",
            TrainSettings(batch_size=2, gradient_accumulation_step=1, epochs=1, lr=1e-3, min_lr=1e-4, device="cpu"),
            data_dir=data,
            checkpoint_dir=mine,
        )
    assert intact(mine) and (mine / "state-0000001").is_dir()
