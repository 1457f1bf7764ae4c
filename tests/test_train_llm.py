"""LLM-loss training under accelerate: exact freezing, DeepSpeed ZeRO-2 and DDP on CPU processes, resume."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import build_tiny_model, holds_only_the_finished_state, make_data_dir, tiny_model_config, write_scores
from transformers import AutoModelForCausalLM

from streamline.launch import launch_command
from streamline.replace import replace
from streamline.training.model import trainable_parameter_names
from streamline.training.sources import micro_batch_plan

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"deepspeed": ROOT / "configs/accelerate/deepspeed_zero2.yaml", "ddp": ROOT / "configs/accelerate/ddp.yaml"}
SLOT = 1
# 32 blocks / (2 per micro-batch x 2 processes) = 8 micro-batches per epoch, 4 optimizer steps, x 5 epochs
ARGS = [
    "--batch-size",
    "2",
    "--gradient-accumulation-step",
    "2",
    "--epochs",
    "5",
    "--lr",
    "1e-2",
    "--min-lr",
    "1e-3",
    "--val-every",
    "5",
    "--checkpoint-every",
    "1",
    "--seed",
    "3",
]
TOTAL_STEPS = 20


def schedule(steps: int, warmup: int, lr: float, min_lr: float) -> list[float]:
    """The rate of each optimizer step: transformers' cosine schedule with warm-up, down to min_lr."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, steps, min_lr=min_lr)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


# --- exact freezing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family, prefix", [("llama", "model.layers."), ("opt", "model.decoder.layers.")])
def test_trainable_names_are_exactly_the_slots(family, prefix):
    model = AutoModelForCausalLM.from_config(tiny_model_config(family, 64, layers=12))
    names = trainable_parameter_names(model, [SLOT])
    slot_params = dict(model.named_parameters())
    assert names and all(n.startswith(f"{prefix}{SLOT}.") for n in names)
    assert len(names) == len(list(model.get_submodule(prefix + str(SLOT)).parameters()))
    # the reference's substring test would also have unfrozen layers 10 and 11
    substring = {n for n in slot_params if f"layers.{SLOT}" in n}
    assert {n.split(".")[len(prefix.split(".")) - 1] for n in substring} == {"1", "10", "11"}
    assert not any(n.startswith((f"{prefix}10.", f"{prefix}11.")) for n in names)
    two = trainable_parameter_names(model, [SLOT, SLOT + 1])
    assert sorted(two) == sorted(n for n in slot_params if n.startswith((f"{prefix}1.", f"{prefix}2.")))


def test_micro_batch_plan_shares_every_epoch_evenly_across_processes():
    one = micro_batch_plan(10, 3, 2, seed=0)
    assert [len(g) for g in one] == [3, 3, 3, 1] * 2  # per epoch: short last batch, nothing dropped
    assert sorted(i for g in one[:4] for i in g) == list(range(10))
    ranks = [micro_batch_plan(10, 3, 1, seed=0, world=2, rank=r) for r in (0, 1)]
    assert [len(g) for g in ranks[0]] == [len(g) for g in ranks[1]] == [3, 2]  # 6 + 4 (2 each), never empty
    seen = [i for r in ranks for g in r for i in g]
    assert set(seen) == set(range(10)) and len(seen) == 10
    assert len(micro_batch_plan(10, 3, 0.5, seed=0)) == 2  # fractions of an epoch: ceil(0.5 x 4)


def test_launch_command_cpu_and_gpu():
    ds = launch_command(CONFIGS["deepspeed"], 2, ["--init", "x"], gpus=0, port=1234, cpus=8)
    assert ds[0] != "env"  # ACCELERATE_USE_CPU would make accelerate drop DeepSpeed
    assert ds[ds.index("--num_processes") + 1] == "2" and ds[ds.index("--num_cpu_threads_per_process") + 1] == "4"
    assert ds[-4:] == ["-m", "streamline.cli", "--init", "x"]
    ddp = launch_command(CONFIGS["ddp"], 2, [], gpus=0, port=1234, cpus=2)
    assert ddp[:2] == ["env", "ACCELERATE_USE_CPU=1"]
    gpu = launch_command(CONFIGS["deepspeed"], 4, [], gpus=4, port=1234)
    assert gpu[0] != "env" and "--num_cpu_threads_per_process" not in gpu
    assert gpu[gpu.index("--num_processes") + 1] == "4"
    with pytest.raises(Exception, match="4 processes"):
        launch_command(CONFIGS["ddp"], 4, [], gpus=2)


# --- two processes on CPU -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm")
    model_dir = build_tiny_model("llama", root / "tiny", layers=6)
    make_data_dir(root / "data", num=32, seq_len=16, vocab=12)  # learnable: 8 token ids
    write_scores(root / "scores.json", n=2, span=3, best=SLOT)
    replace(model_dir, root / "scores.json", root / "init", net="transformer")
    return root


def _env(root: Path) -> dict:
    ext = root / "torch_extensions"  # empty: anything DeepSpeed JIT-compiles would land here
    ext.mkdir(exist_ok=True)
    return {**os.environ, "TORCH_EXTENSIONS_DIR": str(ext), "PYTHONPATH": str(ROOT)}


def _command(root: Path, backend: str, name: str, loss: str = "llm", checkpoint: bool = True) -> list[str]:
    args = [
        "train",
        "--loss",
        loss,
        "--init",
        str(root / "init"),
        "--data",
        str(root / "data"),
        "--out",
        str(root / name / "model"),
        "--log-json",
        str(root / name / "train_log.json"),
    ] + ARGS
    if checkpoint:
        args += ["--checkpoint-dir", str(root / name / "checkpoints")]
    return launch_command(CONFIGS[backend], 2, args)


def _run(root: Path, backend: str, name: str, loss: str = "llm") -> tuple[dict, str, float]:
    start = time.time()
    out = subprocess.run(
        _command(root, backend, name, loss), env=_env(root), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-5000:]
    return json.loads((root / name / "train_log.json").read_text()), out.stderr, time.time() - start


@pytest.fixture(scope="module")
def trained(llm_setup):
    """One uninterrupted run per backend, shared by the tests below (each takes ~40 s, mostly start-up)."""
    cache = {}

    def get(backend, loss="llm"):
        if (backend, loss) not in cache:
            cache[backend, loss] = _run(llm_setup, backend, f"{backend}-{loss}", loss)
        return cache[backend, loss]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("backend, loss", [("deepspeed", "llm"), ("ddp", "llm"), ("deepspeed", "kd"), ("ddp", "kd")])
def test_two_process_training(backend, loss, llm_setup, trained):
    root, name = llm_setup, f"{backend}-{loss}"
    result, stderr, seconds = trained(backend, loss)
    print(f"{backend} {loss}: {seconds:.1f} s")
    assert result["distributed_type"] == ("DEEPSPEED" if backend == "deepspeed" else "MULTI_CPU")
    assert result["num_processes"] == 2 and result["total_steps"] == TOTAL_STEPS == len(result["steps"])
    assert result["loss"] == loss and result["kept"] == "best" and result["select"] == ("ce" if loss == "llm" else "kl")
    assert result["best_val_loss"] < 0.8 * result["initial_val_loss"], result["val"]
    assert [v["step"] for v in result["val"]] == [0, 5, 10, 15, 20]
    # the schedule decays over optimizer steps, and each step logs the rate it used
    assert [st["lr"] for st in result["steps"]] == pytest.approx(schedule(TOTAL_STEPS, 1, 1e-2, 1e-3))
    assert "built successfully" not in stderr and not any((root / "torch_extensions").iterdir())
    assert holds_only_the_finished_state(root / name / "checkpoints")
    # only the lightweight network changed, every other tensor is bit for bit the init's
    before = load_file(root / "init" / "model.safetensors")
    after = load_file(root / name / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(f"model.layers.{SLOT}.") for k in changed)
    assert all(before[k].dtype == after[k].dtype for k in before)
    # plain transformers loads it and generates
    model = AutoModelForCausalLM.from_pretrained(root / name / "model")
    assert model.config.num_hidden_layers == 4
    assert model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False).shape == (1, 7)
    card = (root / name / "model" / "README.md").read_text()
    assert f"`{loss}`" in card and f"chosen by {result['select']}" in card


@pytest.mark.slow
@pytest.mark.parametrize("backend, loss", [("deepspeed", "llm"), ("ddp", "llm"), ("deepspeed", "kd")])
def test_sigkill_then_resume(backend, loss, llm_setup, trained):
    root, name = llm_setup, f"{backend}-{loss}-resumed"
    ckpt = root / name / "checkpoints"
    start = time.time()
    proc = subprocess.Popen(
        _command(root, backend, name, loss),
        env=_env(root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    progress, step = ckpt / "progress.json", 0
    deadline = time.time() + 300
    while time.time() < deadline and step < 6 and proc.poll() is None:  # 6: mid-way through epoch 2
        if progress.exists():
            step = json.loads(progress.read_text())["state"]["step"]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
    proc.wait()
    assert 6 <= step < TOTAL_STEPS, "the run ended before it could be killed mid-way"
    assert not (root / name / "model").exists()

    result, stderr, _ = _run(root, backend, name, loss)
    print(f"{backend}: killed at step >= {step}; kill + resume took {time.time() - start:.1f} s")
    assert "resumed from" in stderr
    assert result["resumed_at_step"] >= step and result["total_steps"] == TOTAL_STEPS
    assert [s["step"] for s in result["steps"]] == list(range(1, TOTAL_STEPS + 1))
    assert holds_only_the_finished_state(ckpt) and (root / name / "model" / "model.safetensors").exists()
    # it continued exactly where the killed run stopped: same batches (skipping those consumed mid-epoch),
    # same optimizer state and schedule: on CPU the result is bit for bit the uninterrupted run's
    reference, _, _ = trained(backend, loss)
    assert result["steps"] == reference["steps"] and result["val"] == reference["val"]
    a = load_file(root / f"{backend}-{loss}" / "model" / "model.safetensors")
    b = load_file(root / name / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_single_process_never_improving_keeps_initial_weights(llm_setup, tmp_path, caplog):
    """In-process, without a launcher (`streamline train --loss llm`): one plain process."""
    from streamline.training.recipes import train
    from streamline.training.settings import TrainSettings

    root = llm_setup
    # lr 1e-30: every update is below fp32 resolution, so validation stays exactly where it started
    settings = TrainSettings(
        batch_size=4, gradient_accumulation_step=1, epochs=1, lr=1e-30, min_lr=1e-30, val_every=2, warmup_ratio=0
    )
    result = train(
        "llm",
        root / "init",
        tmp_path / "model",
        tmp_path / "log.json",
        settings,
        data_dir=root / "data",
        checkpoint_dir=tmp_path / "ck",
    )
    assert result.num_processes == 1 and result.total_steps == 8
    assert result.kept == "initial" and result.best_val_loss == result.initial_val_loss
    assert "never improved" in caplog.text and holds_only_the_finished_state(tmp_path / "ck")
    before, after = load_file(root / "init" / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("k", [1, 2])
def test_llm_loss_in_process_trains_exactly_the_kept_layers(llm_setup, tmp_path, k):
    """k = 2: the block spans n + 2 layers and both kept layers train; nothing else changes."""
    from streamline.training.recipes import train
    from streamline.training.settings import TrainSettings

    root = llm_setup
    write_scores(tmp_path / "scores.json", n=2, span=2 + k, best=1)
    replace(root / "tiny", tmp_path / "scores.json", tmp_path / "init", net="transformer", layers=k)
    settings = TrainSettings(batch_size=4, gradient_accumulation_step=1, epochs=3, lr=1e-2, min_lr=1e-3, val_every=4)
    result = train(
        "llm", tmp_path / "init", tmp_path / "model", tmp_path / "log.json", settings, data_dir=root / "data"
    )
    assert result.best_val_loss < 0.9 * result.initial_val_loss and result.replacement_layers == k
    before, after = (
        load_file(tmp_path / "init" / "model.safetensors"),
        load_file(tmp_path / "model" / "model.safetensors"),
    )
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    slots = {key for key in before if key.startswith(tuple(f"model.layers.{s}." for s in range(1, 1 + k)))}
    assert changed == slots and len(slots) == 9 * k


@pytest.mark.slow
def test_a_pickle_planted_in_a_deepspeed_checkpoint_never_runs(llm_setup, tmp_path):
    """DeepSpeed loads its checkpoint files with torch.load(weights_only=False); streamline forces weights_only while
    a checkpoint loads, so a pickle planted in results/ (even with its checksum forged in progress.json) never runs:
    the run stops in one line and sets the checkpoint aside."""
    import hashlib
    import pickle

    root, name = llm_setup, "deepspeed-planted"
    ckpt = root / name / "checkpoints"
    proc = subprocess.Popen(
        _command(root, "deepspeed", name),
        env=_env(root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    progress, deadline = ckpt / "progress.json", time.time() + 300
    while time.time() < deadline and not progress.exists() and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = json.loads(progress.read_text())
    target = next((ckpt / saved["state_dir"]).rglob("mp_rank_00_model_states.pt"))
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    target.write_bytes(pickle.dumps({"module": Planted()}))
    saved["files"][str(target.relative_to(ckpt))] = hashlib.sha256(target.read_bytes()).hexdigest()
    from streamline.records import write_record

    write_record(progress, saved)  # its digest forged too
    out = subprocess.run(_command(root, "deepspeed", name), env=_env(root), capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and not marker.exists()
    assert "passed its checksums but cannot be loaded" in out.stderr and not (root / name / "model").exists()
    assert list((root / name).glob("checkpoints.unreadable-*"))
