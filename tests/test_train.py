"""The training core with the MSE loss: it learns, keeps the best, logs what it did, resumes; k kept layers."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from tiny import holds_only_the_finished_state, make_data_dir
from transformers import AutoModelForCausalLM

from streamline.extract import extract_hidden_states
from streamline.pairs import extract_pairs
from streamline.pruned import load_pruned
from streamline.replace import replace
from streamline.score import score
from streamline.training import losses
from streamline.training.core import make_optimizer, make_plan
from streamline.training.recipes import build_recipe, train
from streamline.training.settings import TrainSettings


def prepare(model_dir, tmp_path, net="transformer", n=2, samples=12, k=1, dtype="float32"):
    data = make_data_dir(tmp_path / "data", num=samples, seq_len=16, pattern="arithmetic")
    extract_hidden_states(model_dir, data, tmp_path / "calib.zarr", device="cpu", dtype=dtype)
    score(tmp_path / "calib.zarr", n, tmp_path / "scores.json", span=n + k)
    replace(model_dir, tmp_path / "scores.json", tmp_path / "init", net=net, layers=k, dtype=dtype)
    extract_pairs(
        model_dir,
        data,
        tmp_path / "scores.json",
        tmp_path / "pairs",
        device="cpu",
        dtype=dtype,
        manifest=tmp_path / "pairs.json",
    )
    return tmp_path / "init", tmp_path / "pairs", data


FAST = dict(batch_size=2, gradient_accumulation_step=2, epochs=4, lr=1e-2, min_lr=1e-4, val_every=2, device="cpu")


def run_mse(tmp_path, init, pairs, data, name="model", **settings):
    return train(
        "mse",
        init,
        tmp_path / name,
        tmp_path / f"{name}.json",
        TrainSettings(**{**FAST, **settings}),
        data_dir=data,
        pairs_dir=pairs,
    )


def changed_tensors(before_dir, after_dir):
    before, after = load_file(before_dir / "model.safetensors"), load_file(after_dir / "model.safetensors")
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def slot_keys(init_dir, prefix="model.layers."):
    info = json.loads((init_dir / "streamline.json").read_text())
    first, k = info["block"][0], info["replacement_layers"]
    keys = load_file(init_dir / "model.safetensors").keys()
    return {key for key in keys if key.startswith(tuple(f"{prefix}{s}." for s in range(first, first + k)))}


@pytest.mark.parametrize(
    "family, net", [("llama", "transformer"), ("opt", "transformer"), ("llama", "swiglu"), ("opt", "ffn")]
)
def test_training_lowers_validation_mse_and_exports(family, net, tiny_llama_dir, tiny_opt_dir, tmp_path):
    model_dir = tiny_llama_dir if family == "llama" else tiny_opt_dir
    init, pairs, data = prepare(model_dir, tmp_path, net=net)
    result = run_mse(tmp_path, init, pairs, data)
    assert min(v["mse"] for v in result.val) < 0.97 * result.initial_val["mse"]  # the objective is learned
    assert result.total_steps == 12  # ceil(12/2)*4 micro / 2 accumulation
    log = json.loads((tmp_path / "model.json").read_text())
    assert log["val"][0]["step"] == 0 and {"mse", "ce"} <= log["val"][0].keys() and log["select"] == "ce"
    assert log["train_tokens"] == 4 * int(load_file_mask(pairs).sum()) and log["replacement_layers"] == 1
    model = (
        load_pruned(tmp_path / "model")
        if net != "transformer"
        else AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    )
    assert model.config.num_hidden_layers == 4
    assert model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False).shape == (1, 7)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "`mse`" in card and "chosen by ce" in card
    assert re.search(rf"\b{log['settings']['mse_loss']}\b[^|\n]*skip first \d+ positions", card)  # which MSE


def load_file_mask(pairs):
    from streamline.store import HiddenStore

    store = HiddenStore(pairs / "train")
    return torch.stack([store.read_mask(i) for i in range(store.num_samples)])


@pytest.mark.parametrize("k", [1, 2])
def test_mse_heals_the_held_out_loss_and_only_the_kept_layers_change(trained_llama_dir, tmp_path, k):
    """On a model that learned something, removing layers hurts its next-token loss and MSE training heals it."""
    init, pairs, data = prepare(trained_llama_dir, tmp_path, k=k)
    result = run_mse(tmp_path, init, pairs, data)
    assert result.kept == "best" and result.replacement_layers == k and not result.warnings
    assert (
        result.best_val["ce"] < result.initial_val["ce"] - 0.02
        and result.best_val["mse"] < 0.95 * result.initial_val["mse"]
    )
    slots = slot_keys(init)
    assert len(slots) == 9 * k  # 4 attention + 3 MLP projections + 2 norms per Llama layer
    assert changed_tensors(init, tmp_path / "model") == slots  # every slot tensor trains, nothing else does


def test_training_that_hurts_keeps_the_initial_weights_and_says_so(trained_llama_dir, tmp_path, caplog):
    """The guard: a run that makes held-out perplexity worse exports the untrained network, loudly."""
    init, pairs, data = prepare(trained_llama_dir, tmp_path)
    result = run_mse(tmp_path, init, pairs, data, lr=1.0, min_lr=1.0, max_grad_norm=1e9, epochs=1, warmup_ratio=0)
    assert result.kept == "initial" and result.best_val_loss == result.initial_val_loss
    assert all(v["ce"] > result.initial_val["ce"] for v in result.val[1:])  # training really hurt
    assert len(result.warnings) == 1 and "keeps the INITIAL weights" in result.warnings[0]
    assert "WARNING: training never improved validation ce" in caplog.text
    assert json.loads((tmp_path / "model.json").read_text())["warnings"] == result.warnings
    assert not changed_tensors(init, tmp_path / "model")


def test_diverging_to_nan_stops_with_one_line(tiny_llama_dir, tmp_path):
    from streamline.errors import StreamlineError

    init, pairs, data = prepare(tiny_llama_dir, tmp_path)
    with pytest.raises(StreamlineError, match=r"(NaN|nan).*try dtype: float32 or a lower lr"):
        run_mse(tmp_path, init, pairs, data, lr=50.0, min_lr=50.0, max_grad_norm=1e9, epochs=1, warmup_ratio=0)
    assert not (tmp_path / "model").exists()


def test_logged_lr_is_the_rate_each_step_used(tiny_llama_dir, tmp_path):
    """Warm-up starts at lr 0 (the reference's and transformers' schedule): the first step changes nothing,
    and the log says 0 for it, not the rate of the step after."""
    init, pairs, data = prepare(tiny_llama_dir, tmp_path)
    result = run_mse(tmp_path, init, pairs, data, epochs=1, gradient_accumulation_step=6, warmup_ratio=1.0)
    assert result.total_steps == 1 and result.steps[0].lr == 0.0
    assert not changed_tensors(init, tmp_path / "model")
    result = run_mse(
        tmp_path, init, pairs, data, name="m2", epochs=2, gradient_accumulation_step=6, warmup_ratio=0.5, val_every=1
    )
    assert [s.lr for s in result.steps] == [0.0, pytest.approx(1e-2)]


def test_short_last_group_is_scaled_by_its_real_size(tiny_llama_dir, tmp_path):
    """12 blocks, batch 2, accumulation 4: steps of 4 and 2 micro-batches. The second step's gradient is
    the MEAN of its 2 micro-batch gradients (not half of it). With lr 0 on step 1 (warm-up), step 2's
    gradient is taken at the initial weights, so it can be computed here independently."""
    init, pairs, data = prepare(tiny_llama_dir, tmp_path)
    s = TrainSettings(
        **{**FAST, "epochs": 1, "gradient_accumulation_step": 4, "warmup_ratio": 0.5, "max_grad_norm": 1e9}
    )
    result = train("mse", init, tmp_path / "model", tmp_path / "log.json", s, data_dir=data, pairs_dir=pairs)
    assert result.total_steps == 2
    recipe = build_recipe("mse", init, s, data_dir=data, pairs_dir=pairs)
    micro = make_plan(len(recipe.train), s).micro[4:]
    assert len(micro) == 2
    for group in micro:
        batch = {key: torch.stack([recipe.train[i][key] for i in group]) for key in ("x", "y", "attention_mask")}
        (recipe.objective(recipe.module, batch)["loss"] / len(micro)).backward()
    grads = [p.grad for p in recipe.module.parameters() if p.requires_grad]
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert result.steps[1].grad_norm == pytest.approx(float(expected), rel=1e-4)


def test_adam_betas_come_from_the_settings():
    params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
    opt = make_optimizer(params, TrainSettings(adam_beta1=0.8, adam_beta2=0.95, wd=0.1))
    assert [g["betas"] for g in opt.param_groups] == [(0.8, 0.95)] * 2
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # no decay on vectors (norms, biases)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"batch_size": -2}, "batch_size: -2 is out of range"),
        ({"epochs": 0}, "epochs: 0 is out of range"),
        ({"lr": 0}, "lr: 0 is out of range"),
        ({"gradient_accumulation_step": 0}, "gradient_accumulation_step: 0"),
        ({"min_lr": 1.0, "lr": 0.1}, "min_lr: 1.0 is above lr 0.1"),
    ],
)
def test_bad_settings_are_one_line(bad, message):
    from streamline.errors import StreamlineError

    with pytest.raises(StreamlineError, match=message):
        TrainSettings(**bad)


def test_sigkill_then_resume_matches_uninterrupted(tiny_llama_dir, tmp_path):
    init, pairs, data = prepare(tiny_llama_dir, tmp_path, samples=40)
    # the pair store by its manifest, as the workflow passes it
    args = [
        "--init",
        str(init),
        "--pairs",
        str(tmp_path / "pairs.json"),
        "--data",
        str(data),
        "--batch-size",
        "1",
        "--gradient-accumulation-step",
        "1",
        "--epochs",
        "3",
        "--lr",
        "1e-3",
        "--min-lr",
        "1e-4",
        "--checkpoint-every",
        "1",
        "--val-every",
        "40",
        "--device",
        "cpu",
    ]
    cmd = [sys.executable, "-m", "streamline.cli", "train", "--loss", "mse"]
    subprocess.run(
        cmd + args + ["--out", str(tmp_path / "ref"), "--log-json", str(tmp_path / "ref.json")],
        check=True,
        capture_output=True,
    )
    ckdir = tmp_path / "ck"
    run = (
        cmd
        + args
        + ["--out", str(tmp_path / "res"), "--log-json", str(tmp_path / "res.json"), "--checkpoint-dir", str(ckdir)]
    )
    proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (ckdir / "progress.json").exists():
        time.sleep(0.02)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (ckdir / "progress.json").exists() and not (tmp_path / "res").exists()
    out = subprocess.run(run, check=True, capture_output=True, text=True)
    assert "resumed from" in out.stderr
    ref, res = json.loads((tmp_path / "ref.json").read_text()), json.loads((tmp_path / "res.json").read_text())
    assert len(res["steps"]) == len(ref["steps"]) == 120 and res["resumed_at_step"] > 0
    assert res["steps"] == ref["steps"] and res["val"] == ref["val"]
    assert res["train_tokens"] == ref["train_tokens"]
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "res" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert holds_only_the_finished_state(ckdir)


def test_unreadable_checkpoint_is_set_aside(tiny_llama_dir, tmp_path, caplog):
    init, pairs, data = prepare(tiny_llama_dir, tmp_path)
    s = TrainSettings(**{**FAST, "checkpoint_every": 1})
    ck = tmp_path / "ck"
    ck.mkdir()
    recipe = build_recipe("mse", init, s, data_dir=data, pairs_dir=pairs)
    from streamline.training.distributed import accelerator_for

    with accelerator_for(s, "no") as acc:  # the fingerprint a real run would write
        fingerprint = {
            "loss": "mse",
            "settings": s.as_dict(),
            "inputs": recipe.inputs,
            "world": 1,
            "distributed_type": str(acc.distributed_type),
            "mixed_precision": acc.mixed_precision,
        }
    (ck / "progress.json").write_text(
        json.dumps(
            {
                "fingerprint": fingerprint,
                "state_dir": "state-0000001",
                "best_file": "best-0000000.safetensors",
                "state": {},
            }
        )
    )
    (ck / "state-0000001").mkdir()
    (ck / "state-0000001" / "optimizer.bin").write_bytes(b"garbage")
    result = train(
        "mse", init, tmp_path / "model", tmp_path / "log.json", s, data_dir=data, pairs_dir=pairs, checkpoint_dir=ck
    )
    assert "cannot be read" in caplog.text and result.resumed_at_step is None
    assert result.total_steps == 12 and len(list(tmp_path.glob("ck.unreadable-*"))) == 1


def test_bfloat16_model_trains_with_fp32_master_weights_and_exports_bf16(trained_llama_dir, tmp_path):
    init, pairs, data = prepare(trained_llama_dir, tmp_path, dtype="bfloat16")
    result = run_mse(tmp_path, init, pairs, data)
    assert result.best_val_loss < result.initial_val_loss and result.kept == "best"
    trained = load_file(tmp_path / "model" / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in trained.values())
    assert json.loads((tmp_path / "model" / "streamline.json").read_text())["dtype"] == "bfloat16"


def test_a_planted_massive_activation_dominates_plain_mse_but_not_robust(tiny_llama_dir, tmp_path):
    """A sink at position 5 (not 0) of one block, ~100x the others' norm as in real models: robust finds
    it by norm; plain MSE's gradient is nearly all that one position, robust's has none of it."""
    init, pairs, data = prepare(tiny_llama_dir, tmp_path)
    recipe = build_recipe("mse", init, TrainSettings(**FAST), data_dir=data, pairs_dir=pairs)
    batch = {key: torch.stack([recipe.train[i][key] for i in range(2)]) for key in ("x", "y", "attention_mask")}
    batch["attention_mask"][:] = 1
    batch["y"][1, 5] *= 100.0
    found = losses.outlier_positions(batch["y"], batch["attention_mask"].float(), ratio=10.0)
    assert found.nonzero().tolist() == [[1, 5]]

    params = [p for p in recipe.module.parameters() if p.requires_grad]

    def grad(kind, drop=None):  # the same forward; `drop` leaves one position out of the loss only
        pred = recipe.module.network(batch["x"].float(), batch["attention_mask"].long())
        per_token, weight = losses.mse_per_token(pred, batch["y"], batch["attention_mask"].float(), kind)
        if drop:
            weight = weight.clone()
            weight[drop] = 0
        loss = (per_token * weight).sum() / weight.sum()
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    plain, plain_without = grad("plain"), grad("plain", drop=(1, 5))
    outlier_part = plain - plain_without * (31 / 32)  # the mean over 32 tokens vs over the other 31
    assert outlier_part.norm() > 0.9 * plain.norm()  # plain: the one position is > 90% of the gradient
    robust = grad("robust")
    assert torch.allclose(robust, plain_without, rtol=1e-4, atol=1e-8)  # robust: exactly the other positions
    assert losses.mse(recipe.module, batch, kind="robust")["count"] == 31  # the training loss leaves it out too
    assert losses.mse(recipe.module, batch, kind="plain")["count"] == 32
