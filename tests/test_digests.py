"""Numbers no stage computed never reach the summary (fourth reliability round): every record a stage hands on
carries a digest of its content, checked before anything is read from it; behind the digest (an edit that
rewrites it too), the values are recomputed or cross-checked. Either way: one line, the file moved aside, its
stage reruns."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
from test_reliability import cli, one_error_line
from test_report import LLAMACPP_SPEED, _run, _write, artifacts, llamacpp_check  # noqa: F401 (artifacts: a fixture)
from tiny import make_data_dir, write_scores

from streamline.errors import StreamlineError
from streamline.extract import extract_hidden_states
from streamline.pairs import extract_pairs

NONE, FFN, KD, LINEAR = range(4)  # the report fixture's variants, in order


def _read(path: Path) -> dict:
    data = path.read_bytes()
    return json.loads(gzip.decompress(data) if path.name.endswith(".gz") else data)


def _edit_by_hand(path: Path, edit) -> None:
    """An edit that leaves the digest as it was (a hand edit, a file copied in from another run)."""
    obj = _read(path)
    edit(obj)
    data = json.dumps(obj).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def _edit_and_resign(path: Path, edit) -> None:
    """An edit that also rewrites the digest: what a digest cannot catch, and the checks behind it must."""
    obj = {k: v for k, v in _read(path).items() if k != "digest"}
    edit(obj)
    if path.name.endswith(".gz"):
        from streamline.records import digest

        path.write_bytes(gzip.compress(json.dumps({**obj, "digest": digest(obj)}).encode()))
    else:
        _write(path, obj)


def _refused(artifacts: dict, path: Path, message: str) -> None:
    """The report stops with one line naming the file and the problem; the file is moved aside, so that its
    stage reruns, and no summary is written."""
    with pytest.raises(StreamlineError, match=message) as e:
        _run(artifacts)
    assert "\n" not in str(e.value) and f"moved {path.name} aside" in str(e.value)
    assert not path.exists() and list(path.parent.glob(f"{path.name}.corrupt-*"))
    assert not (artifacts["out"] / "summary.json").exists()


# --- 1. every record is checked against what its stage wrote ---------------------------------------------------


@pytest.mark.parametrize(
    "row, kind, edit",
    [
        (KD, "eval", lambda e: e.update(wall_time_s=1.0)),  # no value check could catch these: only the digest
        (KD, "samples", lambda s: s.update(model_dir="elsewhere")),
        (None, "samples", lambda s: s["headline_metric"].update(boolq="acc")),  # the baseline's, gzipped
        (KD, "stability", lambda s: s["tasks"]["boolq"].update(sigma_max=9.0)),
        (KD, "train_log", lambda t: t.update(seconds=1.0)),  # the table's train time
        (LINEAR, "estimate_log", lambda t: t.update(seconds=1.0)),
        (None, "scores", lambda s: s.update(tokens=1)),
        (KD, "eval", lambda e: e.pop("digest")),  # a record of the release before digests: unverified
    ],
)
def test_a_record_changed_since_its_stage_wrote_it_is_one_line_and_moved_aside(artifacts, row, kind, edit):
    spec = artifacts["baseline"] if row is None else artifacts["variants"][row]
    path = Path(artifacts["scores"][0] if kind == "scores" else spec[kind])
    _edit_by_hand(path, edit)
    why = "it carries no digest" if "pop" in edit.__code__.co_names else "its content does not match its digest"
    _refused(artifacts, path, rf"{path.name}: the .* is not what its stage wrote \({why}")


@pytest.fixture
def stores(tiny_llama_dir, tmp_path):
    """A data dir, a calibration store and a pair store, with their manifests, as the workflow writes them."""
    data = make_data_dir(tmp_path / "data", num=8, seq_len=16)
    extract_hidden_states(tiny_llama_dir, data, tmp_path / "c.zarr", device="cpu", manifest=tmp_path / "c.json")
    write_scores(tmp_path / "s.json", n=2, span=3, best=1)
    extract_pairs(
        tiny_llama_dir, data, tmp_path / "s.json", tmp_path / "pairs", device="cpu", manifest=tmp_path / "pairs.json"
    )
    return data, tmp_path / "c.json", tmp_path / "pairs.json"


def test_an_edited_store_manifest_is_one_line_and_its_extraction_rewrites_it(stores, tiny_llama_dir, tmp_path):
    """calibration.json and pairs.json are records: an edit is one line, the manifest moved aside, and the
    extraction (which resumes from the store's verified chunks, computing nothing) writes it again."""
    data, calibration, pairs = stores
    _edit_by_hand(calibration, lambda m: m.update(seconds=0.01))
    line = one_error_line(cli("score", "--store", calibration, "--n", 2, "--out", tmp_path / "a.json"))
    assert "c.json: the store manifest is not what its stage wrote" in line and "moved c.json aside" in line
    again = extract_hidden_states(tiny_llama_dir, data, tmp_path / "c.zarr", device="cpu", manifest=calibration)
    assert (
        again["computed_samples"] == 0
        and cli("score", "--store", calibration, "--n", 2, "--out", tmp_path / "a.json").returncode == 0
    )
    _edit_and_resign(pairs, lambda m: m["train"].update(samples=99))  # behind the digest: its shape disagrees
    init = tmp_path / "init"
    assert (
        cli(
            "replace", "--model", tiny_llama_dir, "--scores", tmp_path / "s.json", "--net", "transformer", "--out", init
        ).returncode
        == 0
    )
    line = one_error_line(
        cli(
            "train",
            "--loss",
            "mse",
            "--init",
            init,
            "--pairs",
            pairs,
            "--data",
            data,
            "--out",
            tmp_path / "out",
            "--log-json",
            tmp_path / "log.json",
            "--device",
            "cpu",
        )
    )
    assert "pairs.json: the pair store manifest is incomplete (at 'train': a store of shape [2, 8, 16, 32]" in line
    assert not pairs.exists() and not (tmp_path / "out").exists()


def test_an_edited_meta_json_moves_its_data_dir_aside(tiny_llama_dir, tmp_path):
    """meta.json describes the token blocks every stage reads: edited, it is one line and the data dir is moved
    aside (prepare-data reruns); and behind the digest, the blocks must be the shape it records."""
    data = make_data_dir(tmp_path / "data", num=8, seq_len=16)
    _edit_by_hand(data / "meta.json", lambda m: m.update(seed=7))
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
    assert "meta.json: the data dir's meta.json is not what its stage wrote" in line and "moved data aside" in line
    assert not data.exists() and not (tmp_path / "c.zarr").exists()
    data = make_data_dir(tmp_path / "data", num=8, seq_len=16)
    _edit_and_resign(data / "meta.json", lambda m: m["counts"].update(calib=16))
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
    assert "calib input_ids (8, 16) and attention_mask (8, 16), meta.json records 16 blocks of 16" in line


# --- 2. values that can be recomputed are -----------------------------------------------------------------------


def _accuracies_099(e: dict) -> None:
    """Every accuracy and the average set to 0.99: consistent with each other, not with the samples."""
    for task in e["results"].values():
        task.update(acc=0.99, headline=0.99)
    e.update(average=0.99, average_acc_norm_where_available=0.99)


def _speedup_1e308(e: dict) -> None:
    e["speed"]["speedup"]["prefill"] = 1e308


@pytest.mark.parametrize(
    "row, kind, edit, message",
    [
        (KD, "eval", _accuracies_099, r"arc_easy acc 0.99 is not what its samples give \(0.6\)"),
        (KD, "eval", lambda e: e["results"]["boolq"].update(headline=0.5), "headline 0.5 is not its acc, 1.0"),
        (KD, "eval", lambda e: e.update(average=0.99), r"average 0.99 is not the mean of its tasks \(0.8\)"),
        (KD, "eval", lambda e: e.update(params=-800), r"out of range \('params' is -800"),
        (KD, "eval", lambda e: e.update(num_hidden_layers=-4), r"out of range \('num_hidden_layers' is -4"),
        (KD, "eval", lambda e: e["streamline"].update(source_params=-1), r"'streamline.source_params' is -1"),
        (KD, "eval", _speedup_1e308, r"prefill speedup 1e\+308 is not what its measurements give \(1.2\)"),
        (
            KD,
            "samples",
            lambda s: [q.update(acc=True) for q in s["tasks"]["arc_easy"].values()],
            r"acc True is not what its log-likelihoods give \(gold 1, best option 0\)",
        ),
        (
            KD,
            "samples",
            lambda s: s["tasks"]["boolq"]["0"].update(gold=5),
            "gold 5, token counts .* do not fit 2 options",
        ),
        (
            KD,
            "stability",
            lambda s: s.update(tasks={}, effective_questions={}, average=5.0),
            r"out of range \('average' is 5.0",
        ),
        (
            KD,
            "stability",
            lambda s: s.update(tasks={}, effective_questions={}, average=1.0),
            "average 1.0 is not the mean of its 0 tasks",
        ),
        (KD, "stability", lambda s: s["tasks"]["boolq"].update(agreement=1.5), r"'tasks.boolq.agreement' is 1.5"),
        (
            KD,
            "stability",
            lambda s: s["tasks"]["boolq"].update(agreement=1.0),
            r"boolq agreement 1.0 is not what the samples give \(0.7\)",
        ),
        (KD, "train_log", lambda t: t.update(best_val_loss=0.1), r"validation 2.0 -> best 0.1 is not its log's"),
        (KD, "train_log", lambda t: t.update(train_tokens=-5), r"'train_tokens' is -5"),
    ],
)
def test_a_value_edited_with_its_digest_is_recomputed_and_refused(artifacts, row, kind, edit, message):
    """Hand-edited results went into the table with exit 0: accuracies of 0.99 next to deltas from samples that
    say nothing changed, flipped flags giving a CI of [100, 100], negative counts, a stability of 5.0 over no
    tasks, a speedup of 1e308. Each is recomputed from what it was computed from, or range-checked."""
    path = Path(artifacts["variants"][row][kind])
    _edit_and_resign(path, edit)
    _refused(artifacts, path, rf"{path.name}: the .*{message}")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda g: g.update(gguf_ppl=3.0), r"gguf_perplexity 3.0 is not what its blocks' NLL gives"),
        (lambda g: g["speedup_llamacpp"].update(decode=9.0), "speedup_llamacpp is not its speed_llamacpp's"),
        (lambda g: g["speed_llamacpp"]["decode_tokens_per_s"].update(pruned=1e308), "decode speedup 1.28 is not what"),
        (lambda g: g.update(layers=-2), r"'layers' is -2"),
    ],
)
def test_a_gguf_check_is_recomputed_from_its_blocks_and_speeds(artifacts, edit, message):
    path = Path(artifacts["variants"][KD]["eval"]).with_name("gguf.json")
    _write(path, llamacpp_check(math.e, LLAMACPP_SPEED))
    artifacts["variants"][KD]["gguf"] = str(path)
    assert _run(artifacts).rows[3].gguf_ppl == math.e  # as written: consistent, shown
    (artifacts["out"] / "summary.json").unlink()
    _edit_and_resign(path, edit)
    _refused(artifacts, path, rf"gguf.json: the llama.cpp check is .*{message}")


def test_lm_evals_flags_are_recomputed_from_a_real_samples_file(tiny_workflow, tmp_path):
    """The tiny workflow's baseline samples, written from lm-eval's own output: every question records its
    options' lengths, and its acc and acc_norm flags are what lm-eval 0.4.13's rule gives (argmax of ll, of
    ll / characters). A flipped flag, digest rewritten, is one line."""
    from streamline.artifacts import read_samples

    workdir = tiny_workflow[0]
    source = workdir / "results/tiny/baseline/samples.json.gz"
    questions = read_samples(source).tasks["arc_easy"]
    assert all(q.nchar and q.acc_norm is not None for q in questions.values())
    for flag in ("acc", "acc_norm"):
        copy = tmp_path / f"{flag}.json.gz"
        copy.write_bytes(source.read_bytes())

        def flip(samples: dict) -> None:
            question = samples["tasks"]["arc_easy"]["0"]
            question[flag] = not question[flag]

        _edit_and_resign(copy, flip)
        with pytest.raises(
            StreamlineError,
            match=rf"{flag} (True|False) is not what its "
            rf"(length-normalised )?log-likelihoods give",
        ):
            read_samples(copy)
        assert not copy.exists()
    copy = tmp_path / "ntok.json.gz"
    copy.write_bytes(source.read_bytes())
    _edit_and_resign(copy, lambda samples: samples["tasks"]["arc_easy"]["0"]["ntok"].append(2))
    with pytest.raises(StreamlineError) as caught:  # token counts for an option that is not there
        read_samples(copy)
    line = str(caught.value)
    assert "ntok.json.gz" in line and "tasks.arc_easy.0" in line and "do not fit" in line and "\n" not in line
    assert not copy.exists()


# --- 4. records own their reading and writing --------------------------------------------------------------


def test_the_report_and_stability_read_samples_without_the_evaluation_stage():
    """read_samples lives with the Samples record: the report and stability import neither evaluate (and with
    it lm-eval's loading code) nor torch; the records stay torch-free, as every stage that reads one imports them."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, streamline.artifacts, streamline.manifests, "
            "streamline.report, streamline.stability; print(sorted({'torch', 'lm_eval', "
            "'streamline.evaluate'} & set(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert loaded.strip() == "[]"


def test_the_report_manifest_is_a_record_and_names_each_variants_own_log(artifacts):
    """The report reads the log its rule declares, and only that one: a declared log that is missing is one line
    (it was silently skipped), and a variant cannot name two."""
    row = artifacts["variants"][FFN]
    Path(row["train_log"]).unlink()
    with pytest.raises(StreamlineError, match="train_log.json: no train log here"):
        _run(artifacts)
    row["estimate_log"] = artifacts["variants"][LINEAR]["estimate_log"]
    with pytest.raises(StreamlineError, match="--manifest: incomplete .*names a train log and an estimate log"):
        _run(artifacts)
