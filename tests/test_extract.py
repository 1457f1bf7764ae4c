"""Calibration extraction: bit-exact raw hidden states, bf16 round trip, resume after SIGKILL."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import make_data_dir

from streamline.adapters import run_with_capture
from streamline.extract import extract_hidden_states
from streamline.loading import load_model
from streamline.store import HiddenStore


def reference_states(model_dir, data_dir, dtype="float32"):
    model, adapter = load_model(model_dir, dtype=dtype, device="cpu")
    ids = torch.from_numpy(np.load(data_dir / "calib_input_ids.npy").astype(np.int64))
    mask = torch.from_numpy(np.load(data_dir / "calib_attention_mask.npy").astype(np.int64))
    out = {}
    for n in range(len(ids)):  # one sample at a time: batch composition must not matter
        hs = {}
        run_with_capture(adapter, model, ids[n : n + 1], mask[n : n + 1], lambda k, h: hs.__setitem__(k, h[0].clone()))
        out[n] = torch.stack([hs[k] for k in sorted(hs)])
    return out, mask.bool()


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_store_holds_raw_states_of_every_layer(family, tiny_llama_dir, tiny_opt_dir, data_dir, tmp_path):
    model_dir = tiny_llama_dir if family == "llama" else tiny_opt_dir
    summary = extract_hidden_states(
        model_dir, data_dir, tmp_path / "c.zarr", batch_size=3, device="cpu", manifest=tmp_path / "c.json"
    )
    store = HiddenStore(tmp_path / "c.zarr")
    assert store.hidden.shape == (7, 10, 16, 32) and summary["computed_samples"] == 10
    assert store.hidden.chunks == (1, 1, 16, 32)
    ref, mask = reference_states(model_dir, data_dir)
    for n in range(10):
        got = store.read_sample(n)
        valid = mask[n]
        # Batching with padding may change padded positions only; real tokens match to float rounding.
        assert torch.allclose(got[:, valid], ref[n][:, valid], atol=1e-5, rtol=1e-4)
        assert torch.equal(store.read_mask(n), valid)
    assert (tmp_path / "c.json").exists()


def test_bfloat16_is_stored_bit_exactly(tiny_llama_dir, data_dir, tmp_path):
    extract_hidden_states(
        tiny_llama_dir, data_dir, tmp_path / "b.zarr", dtype="bfloat16", batch_size=1, device="cpu", codec="blosc"
    )
    store = HiddenStore(tmp_path / "b.zarr")
    assert store.hidden.dtype == np.uint16 and store.attrs["dtype"] == "bfloat16"
    ref, _ = reference_states(tiny_llama_dir, data_dir, dtype="bfloat16")
    got = store.read_sample(4)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, ref[4])


def test_only_needed_layers_are_kept(tiny_llama_dir, data_dir, tmp_path):
    extract_hidden_states(
        tiny_llama_dir, data_dir, tmp_path / "p.zarr", keep=[2, 4], split="train", num_samples=4, device="cpu"
    )
    store = HiddenStore(tmp_path / "p.zarr")
    assert store.hidden.shape[:2] == (2, 4) and store.attrs["layers"] == [2, 4]


def test_changed_inputs_restart_the_store(tiny_llama_dir, data_dir, tmp_path):
    extract_hidden_states(tiny_llama_dir, data_dir, tmp_path / "c.zarr", num_samples=4, device="cpu")
    again = extract_hidden_states(tiny_llama_dir, data_dir, tmp_path / "c.zarr", num_samples=4, device="cpu")
    assert again["computed_samples"] == 0  # same inputs: nothing recomputed
    bigger = extract_hidden_states(tiny_llama_dir, data_dir, tmp_path / "c.zarr", num_samples=6, device="cpu")
    assert bigger["computed_samples"] == 6  # other inputs: never mix chunks from two configurations


def _files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_sigkill_then_resume_gives_identical_store(tiny_llama_dir, tmp_path):
    data = make_data_dir(tmp_path / "data", num=200, seq_len=64)
    cmd = [
        sys.executable,
        "-m",
        "streamline.cli",
        "extract-calibration",
        "--model",
        str(tiny_llama_dir),
        "--data",
        str(data),
        "--batch-size",
        "1",
        "--device",
        "cpu",
    ]
    subprocess.run(cmd + ["--out", str(tmp_path / "ref.zarr")], check=True, capture_output=True)

    store = tmp_path / "killed.zarr"
    proc = subprocess.Popen(
        cmd + ["--out", str(store), "--manifest", str(tmp_path / "m.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((store / "attention_mask").rglob("c/*"))) < 30:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = HiddenStore(store)
    done = 200 - len(partial.missing_samples())
    assert 0 < done < 200, f"kill landed outside the run ({done} samples done)"
    assert not (tmp_path / "m.json").exists()  # a killed run is never taken for done

    out = subprocess.run(
        cmd + ["--out", str(store), "--manifest", str(tmp_path / "m.json")], check=True, capture_output=True, text=True
    )
    assert f"{200 - done} of 200 samples to do" in out.stderr  # exactly the samples not done, nothing more
    import json

    assert json.loads((tmp_path / "m.json").read_text())["computed_samples"] == 200 - done  # resumed, not restarted
    assert _files(store) == _files(tmp_path / "ref.zarr")


def _chunk(store: Path, k: int, n: int) -> Path:
    return store / "hidden" / "c" / str(k) / str(n) / "0" / "0"


@pytest.mark.parametrize("damage", ["delete", "garbage", "truncate"])
def test_a_damaged_chunk_is_refused_by_readers_and_repaired_by_extraction(tiny_llama_dir, data_dir, tmp_path, damage):
    from streamline.errors import StreamlineError
    from streamline.score import score

    extract_hidden_states(tiny_llama_dir, data_dir, tmp_path / "ref.zarr", device="cpu")
    store = tmp_path / "c.zarr"
    extract_hidden_states(tiny_llama_dir, data_dir, store, device="cpu")
    chunk = _chunk(store, 3, 4)
    size = chunk.stat().st_size
    if damage == "delete":
        chunk.unlink()  # zarr would read zeros back
    elif damage == "garbage":
        chunk.write_bytes(np.random.default_rng(0).bytes(size))  # same size, so a size check would pass
    else:
        chunk.write_bytes(chunk.read_bytes()[: size // 2])
    with pytest.raises(
        StreamlineError, match=r"c.zarr: sample 4, hidden state 3 (does not match its checksum|cannot be read)"
    ):
        score(store, 2, tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()
    again = extract_hidden_states(tiny_llama_dir, data_dir, store, device="cpu")  # a forced re-extraction
    assert again["computed_samples"] == 1  # only the damaged sample is recomputed
    assert _files(store) == _files(tmp_path / "ref.zarr")


def test_an_incomplete_store_is_refused(tiny_llama_dir, data_dir, tmp_path):
    from streamline.errors import StreamlineError
    from streamline.score import score

    extract_hidden_states(tiny_llama_dir, data_dir, tmp_path / "c.zarr", device="cpu")
    (tmp_path / "c.zarr" / "checksum" / "c" / "7" / "0").unlink()  # sample 7 never finished
    with pytest.raises(StreamlineError, match=r"incomplete store \(1 of 10 samples missing\)"):
        score(tmp_path / "c.zarr", 2, tmp_path / "s.json")
