"""MSE training of the lightweight network from pair stores: it learns, keeps the best, resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import make_data_dir
from streamline.extract import extract_pairs
from streamline.pruned import load_pruned
from streamline.replace import replace
from streamline.score import score
from streamline.extract import extract_hidden_states
from streamline.train_mse import TrainSettings, lr_factor, train_mse


def prepare(model_dir, tmp_path, net="transformer", n=2, samples=12):
    data = make_data_dir(tmp_path / "data", num=samples, seq_len=16)
    extract_hidden_states(model_dir, data, tmp_path / "calib.zarr", device="cpu")
    score(tmp_path / "calib.zarr", n, tmp_path / "scores.json")
    replace(model_dir, tmp_path / "scores.json", tmp_path / "init", net=net)
    extract_pairs(model_dir, data, tmp_path / "scores.json", tmp_path / "pairs", device="cpu")
    return tmp_path / "init", tmp_path / "pairs"


FAST = dict(batch_size=2, gradient_accumulation_step=2, epochs=4, lr=1e-2, min_lr=1e-4, val_every=2, device="cpu")


@pytest.mark.parametrize("family, net", [("llama", "transformer"), ("opt", "transformer"), ("llama", "swiglu"),
                                         ("opt", "ffn")])
def test_training_lowers_validation_mse_and_exports(family, net, tiny_llama_dir, tiny_opt_dir, tmp_path):
    model_dir = tiny_llama_dir if family == "llama" else tiny_opt_dir
    init, pairs = prepare(model_dir, tmp_path, net=net)
    result = train_mse(init, pairs, tmp_path / "model", tmp_path / "log.json", TrainSettings(**FAST))
    assert result["best_val_loss"] < 0.97 * result["initial_val_loss"]
    assert result["kept"] == "best" and result["total_steps"] == 12  # ceil(12/2)*4 micro / 2 accumulation
    assert json.loads((tmp_path / "log.json").read_text())["val"][0]["step"] == 0
    model = load_pruned(tmp_path / "model") if net != "transformer" else \
        AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert model.config.num_hidden_layers == 4
    assert model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False).shape == (1, 7)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "`mse`" in card and "validation MSE" in card


def test_only_the_network_changes(tiny_llama_dir, tmp_path):
    init, pairs = prepare(tiny_llama_dir, tmp_path)
    train_mse(init, pairs, tmp_path / "model", tmp_path / "log.json", TrainSettings(**FAST))
    before, after = load_file(init / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.layers.1.") or k.startswith(f"model.layers.{_slot(init)}.")
                           for k in changed)


def _slot(init):
    return json.loads((init / "streamline.json").read_text())["block"][0]


def test_never_improving_keeps_initial_weights(tiny_llama_dir, tmp_path, caplog):
    init, pairs = prepare(tiny_llama_dir, tmp_path)
    settings = TrainSettings(**{**FAST, "lr": 50.0, "min_lr": 50.0, "max_grad_norm": 1e9, "epochs": 1})
    result = train_mse(init, pairs, tmp_path / "model", tmp_path / "log.json", settings)
    assert result["kept"] == "initial" and result["best_val_loss"] == result["initial_val_loss"]
    assert "never improved" in caplog.text
    before, after = load_file(init / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_schedule_is_counted_in_optimizer_steps():
    total, warmup, lr, min_lr = 100, 5, 2e-4, 5e-5
    lrs = [lr * lr_factor(s, total, warmup, lr, min_lr) for s in range(total)]
    assert lrs[0] == pytest.approx(lr / warmup) and lrs[warmup] == pytest.approx(lr)
    assert lrs[-1] == pytest.approx(min_lr, rel=1e-3)  # decays all the way by the last optimizer step
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))


def test_sigkill_then_resume_matches_uninterrupted(tiny_llama_dir, tmp_path):
    init, pairs = prepare(tiny_llama_dir, tmp_path, samples=40)
    args = ["--init", str(init), "--pairs", str(pairs), "--batch-size", "1", "--gradient-accumulation-step", "1",
            "--epochs", "8", "--lr", "1e-3", "--min-lr", "1e-4", "--checkpoint-every", "1", "--val-every", "40",
            "--device", "cpu"]
    cmd = [sys.executable, "-m", "streamline.cli", "train"]
    subprocess.run(cmd + args + ["--out", str(tmp_path / "ref"), "--log-json", str(tmp_path / "ref.json")],
                   check=True, capture_output=True)
    ckdir = tmp_path / "ck"
    run = cmd + args + ["--out", str(tmp_path / "res"), "--log-json", str(tmp_path / "res.json"),
                        "--checkpoint-dir", str(ckdir)]
    proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (ckdir / "checkpoint.pt").exists():
        time.sleep(0.02)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (ckdir / "checkpoint.pt").exists() and not (tmp_path / "res").exists()
    out = subprocess.run(run, check=True, capture_output=True, text=True)
    assert "resumed from" in out.stderr
    ref, res = json.loads((tmp_path / "ref.json").read_text()), json.loads((tmp_path / "res.json").read_text())
    assert len(res["steps"]) == len(ref["steps"]) == 320
    assert res["best_val_loss"] == pytest.approx(ref["best_val_loss"], rel=1e-4)
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "res" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert not (ckdir / "checkpoint.pt").exists()


def test_bfloat16_model_trains_with_fp32_master_weights_and_exports_bf16(tiny_llama_dir, tmp_path):
    data = make_data_dir(tmp_path / "data", num=12, seq_len=16)
    extract_hidden_states(tiny_llama_dir, data, tmp_path / "calib.zarr", device="cpu", dtype="bfloat16")
    score(tmp_path / "calib.zarr", 2, tmp_path / "scores.json")
    replace(tiny_llama_dir, tmp_path / "scores.json", tmp_path / "init", net="transformer", dtype="bfloat16")
    extract_pairs(tiny_llama_dir, data, tmp_path / "scores.json", tmp_path / "pairs", device="cpu",
                  dtype="bfloat16")
    result = train_mse(tmp_path / "init", tmp_path / "pairs", tmp_path / "model", tmp_path / "log.json",
                       TrainSettings(**FAST))
    assert result["best_val_loss"] < result["initial_val_loss"]
    trained = load_file(tmp_path / "model" / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in trained.values())
    assert json.loads((tmp_path / "model" / "streamline.json").read_text())["dtype"] == "bfloat16"
