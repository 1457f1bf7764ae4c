"""Distillation with a weight-sharing teacher, MSE pairs computed online, staged training, the disk preflight."""

import copy
import json
import shutil
import subprocess
import sys
from dataclasses import replace as with_fields

import pytest
import torch
from safetensors.torch import load_file
from tiny import make_data_dir, write_scores
from transformers import AutoModelForCausalLM

from streamline.errors import StreamlineError
from streamline.extract import extract_hidden_states
from streamline.pairs import extract_pairs
from streamline.replace import replace
from streamline.score import score
from streamline.training import losses
from streamline.training.model import ReplacedModel
from streamline.training.recipes import build_recipe, train
from streamline.training.settings import TrainSettings

FAST = dict(batch_size=2, gradient_accumulation_step=2, epochs=3, lr=1e-2, min_lr=1e-3, val_every=3, device="cpu")


@pytest.fixture(params=["llama", "opt"])
def family_dir(request, tiny_llama_dir, tiny_opt_dir):
    return tiny_llama_dir if request.param == "llama" else tiny_opt_dir


def prepare(model_dir, tmp_path, k=1, samples=12, pairs=True):
    data = make_data_dir(tmp_path / "data", num=samples, seq_len=16, pattern="arithmetic")
    extract_hidden_states(model_dir, data, tmp_path / "calib.zarr", device="cpu")
    score(tmp_path / "calib.zarr", 2, tmp_path / "scores.json", span=2 + k)
    replace(model_dir, tmp_path / "scores.json", tmp_path / "init", net="transformer", layers=k)
    if pairs:
        extract_pairs(model_dir, data, tmp_path / "scores.json", tmp_path / "pairs", device="cpu")
    return tmp_path / "init", data


def token_batch(data, n=4):
    from streamline.training.sources import TokenSamples, collate

    samples = TokenSamples(data, "val")
    return collate([samples[i] for i in range(n)])


@pytest.mark.parametrize("k", [1, 2])
def test_shared_prefix_teacher_gives_the_original_models_logits(family_dir, tmp_path, k):
    init, data = prepare(family_dir, tmp_path, k=k, pairs=False)
    recipe = build_recipe("kd", init, TrainSettings(**FAST), data_dir=data, teacher_dir=family_dir)
    m = recipe.module.eval()
    batch = token_batch(data)  # some blocks are right-padded
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        teacher = m.logits(m.target(m.prefix(ids, mask), mask), mask)
        original = AutoModelForCausalLM.from_pretrained(family_dir).eval()(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(teacher[real], original[real], atol=1e-5, rtol=1e-4)
    # and the student path is the pruned model itself
    with torch.no_grad():
        student = m.logits(m.network(m.prefix(ids, mask), mask), mask)
        pruned = AutoModelForCausalLM.from_pretrained(init).eval()(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(student[real], pruned[real], atol=1e-5, rtol=1e-4)


def test_kd_against_a_teacher_that_is_the_student_is_zero(family_dir, tmp_path):
    init, data = prepare(family_dir, tmp_path, pairs=False)
    recipe = build_recipe("llm", init, TrainSettings(**FAST), data_dir=data)
    m = recipe.module
    slot = [m.adapter.layers(m.model)[s] for s in m.replacement.slots]
    r = with_fields(m.replacement, span=m.replacement.kept)  # the "original block" is the network itself
    same = ReplacedModel(m.model, r, losses.kd, torch.nn.ModuleList(copy.deepcopy(slot)), m.model.config)
    out = losses.kd(same, token_batch(data), temperature=2.0, alpha=1.0)
    assert out["loss"].detach().item() == 0.0 and int(out["count"]) > 0
    assert losses.kd(same, token_batch(data), alpha=0.0)["loss"].detach().item() == pytest.approx(
        losses.ce(same, token_batch(data))["loss"].detach().item()
    )  # alpha 0: plain next-token loss


@pytest.mark.parametrize("alpha,top_k", [(1.0, 0), (0.5, 0), (0.7, 5)])
def test_losses_over_chunks_equal_the_whole_logits_loss(family_dir, tmp_path, monkeypatch, alpha, top_k):
    """The head and loss run over chunks of positions (a 400 MB-8 GB logits tensor is never built): the value
    and every gradient equal the loss on the whole logits, for any chunk size, padding included."""
    import torch.nn.functional as F

    init, data = prepare(family_dir, tmp_path, pairs=False)
    recipe = build_recipe("kd", init, TrainSettings(**FAST), data_dir=data, teacher_dir=family_dir)
    m, batch = recipe.module, token_batch(data)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert not mask.all()  # padded blocks are part of the check
    params = [p for p in m.parameters() if p.requires_grad]

    def whole(loss_name):  # the plain formulas on full logits
        h = m.prefix(ids, mask)
        student = m.logits(m.network(h, mask), mask)
        keep = mask[:, 1:].float()
        nll = F.cross_entropy(student[:, :-1].transpose(1, 2), ids[:, 1:].long(), reduction="none")
        ce = (nll * keep).sum() / keep.sum()
        if loss_name == "ce":
            return ce
        with torch.no_grad():
            teacher = m.logits(m.target(h, mask), mask)
        klv = (losses.kl_per_token(student, teacher, 2.0, top_k) * mask).sum() / mask.sum()
        return alpha * 4.0 * klv + (1 - alpha) * ce

    def chunked(loss_name):
        if loss_name == "ce":
            return losses.ce(m, batch)["loss"]
        return losses.kd(m, batch, temperature=2.0, alpha=alpha, top_k=top_k)["loss"]

    vocab = m.model.config.vocab_size
    for loss_name in ("ce", "kd"):
        expected = whole(loss_name)
        expected_grads = torch.autograd.grad(expected, params)
        for rows in (1, 5, 10**6):  # one position per chunk, a ragged last chunk, one chunk
            monkeypatch.setattr(losses, "CHUNK_LOGITS", rows * vocab)
            got = chunked(loss_name)
            assert got.item() == pytest.approx(expected.item(), rel=1e-5)
            for g, e in zip(torch.autograd.grad(got, params), expected_grads):
                assert torch.allclose(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("top_k", [0, 5])
def test_only_the_networks_parameters_get_gradients(tiny_llama_dir, tmp_path, top_k):
    init, data = prepare(tiny_llama_dir, tmp_path, k=2, pairs=False)
    recipe = build_recipe("kd", init, TrainSettings(**FAST, kd_top_k=top_k, kd_temperature=2.0), data_dir=data)
    m = recipe.module
    out = recipe.objective(m, token_batch(data))
    assert out["loss"].detach().item() > 0
    out["loss"].backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {f"model.{n}" for n in m.trainable}
    assert all(p.grad is None for p in m.teacher_layers.parameters())


@pytest.mark.parametrize("loss", ["kd", "llm"])
def test_a_nan_in_the_chunked_loss_stops_with_one_line(tiny_llama_dir, tmp_path, loss):
    """A non-finite value in any chunk makes the whole loss non-finite (never a number computed on): the run
    stops before anything is exported."""
    from streamline.training.core import fit

    init, data = prepare(tiny_llama_dir, tmp_path, pairs=False)
    recipe = build_recipe(loss, init, TrainSettings(**FAST), data_dir=data, teacher_dir=tiny_llama_dir)
    m = recipe.module
    with torch.no_grad():  # one weight of the network: every position after it becomes NaN
        dict(m.model.named_parameters())[f"model.layers.{m.replacement.slots[0]}.mlp.down_proj.weight"][0, 0] = float(
            "nan"
        )
    with pytest.raises(StreamlineError, match=r"NaN"):
        fit(recipe, TrainSettings(**FAST), lambda result, state: pytest.fail("a NaN run was exported"))


def test_kd_training_lowers_validation_kl_and_only_trains_the_network(tiny_llama_dir, tmp_path):
    init, data = prepare(tiny_llama_dir, tmp_path, pairs=False, samples=16)
    result = train(
        "kd",
        init,
        tmp_path / "model",
        tmp_path / "log.json",
        TrainSettings(**FAST),
        data_dir=data,
        teacher_dir=tiny_llama_dir,
    )
    assert result.select == "kl" and result.best_val["kl"] < 0.9 * result.initial_val["kl"]
    assert result.kept == "best" and {"kl", "ce"} == result.initial_val.keys() - {"loss"}
    before, after = load_file(init / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(key.startswith(f"model.layers.{result.slots[0]}.") for key in changed)
    assert "`kd`" in (tmp_path / "model" / "README.md").read_text()


def test_staged_training_starts_from_the_mse_network(trained_llama_dir, tmp_path):
    tiny_llama_dir = trained_llama_dir
    init, data = prepare(tiny_llama_dir, tmp_path)
    mse = train(
        "mse",
        init,
        tmp_path / "mse",
        tmp_path / "mse.json",
        TrainSettings(**FAST),
        data_dir=data,
        pairs_dir=tmp_path / "pairs",
    )
    staged = train(
        "kd",
        tmp_path / "mse",
        tmp_path / "staged",
        tmp_path / "staged.json",
        TrainSettings(**FAST),
        data_dir=data,
        teacher_dir=tiny_llama_dir,
    )
    assert mse.loss == "mse" and mse.kept == "best" and staged.loss == "mse+kd"
    info = json.loads((tmp_path / "staged" / "streamline.json").read_text())
    assert info["loss"] == "mse+kd" and info["block"] == json.loads((init / "streamline.json").read_text())["block"]
    # its starting point is the MSE network: the KL it starts from is the MSE model's, not the untrained one's
    untrained = build_recipe("kd", init, TrainSettings(**FAST), data_dir=data, teacher_dir=tiny_llama_dir)
    from streamline.training.core import validate
    from streamline.training.distributed import accelerator_for

    with accelerator_for(TrainSettings(**FAST), "no") as acc:
        kl_untrained = validate(acc, untrained.module, untrained, TrainSettings(**FAST))["kl"]
    assert staged.initial_val["kl"] != pytest.approx(kl_untrained, rel=1e-6)


def test_online_pairs_give_the_same_trajectory_as_the_store(tiny_llama_dir, tmp_path):
    init, data = prepare(tiny_llama_dir, tmp_path, k=2)
    s = TrainSettings(**FAST, mse_loss="robust")
    stored = train("mse", init, tmp_path / "a", tmp_path / "a.json", s, data_dir=data, pairs_dir=tmp_path / "pairs")
    online = train("mse", init, tmp_path / "b", tmp_path / "b.json", s, data_dir=data, teacher_dir=tiny_llama_dir)
    assert len(stored.steps) == len(online.steps) == stored.total_steps
    # the store holds what the forward computed in batches of another size: equal up to float noise
    assert [x.loss for x in online.steps] == pytest.approx([x.loss for x in stored.steps], rel=1e-4)
    assert online.best_val["ce"] == pytest.approx(stored.best_val["ce"], rel=1e-4)
    # the validation MSE differs in kind (online: val blocks through the prefix; store: val pairs) only in source
    assert online.best_val["mse"] == pytest.approx(stored.best_val["mse"], rel=1e-4)


def test_disk_preflight_on_a_small_filesystem(tiny_llama_dir, tmp_path):
    """A real 64 kB tmpfs (in a user+mount namespace): one line naming the bytes, and nothing left behind."""
    if not shutil.which("unshare"):
        pytest.skip("unshare not available")
    init, data = prepare(tiny_llama_dir, tmp_path, pairs=False, samples=40)
    small = tmp_path / "small"
    small.mkdir()
    cmd = (
        f"mount -t tmpfs -o size=64k none {small} || exit 77; "
        f"{sys.executable} -m streamline.cli extract-pairs --model {tiny_llama_dir} --data {data} "
        f"--scores {tmp_path / 'scores.json'} --out {small / 'pairs.zarr'} --manifest {small / 'pairs.json'} "
        f"--device cpu; echo rc=$?; ls -A {small}"
    )
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, timeout=120)
    if proc.returncode == 77 or "Operation not permitted" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[-200:]}")
    err = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and "streamline extract-pairs: error: disk:" in err[0], proc.stderr[-2000:]
    assert "GB free" in err[0] and "pairs.mode: online" in err[0]
    assert "rc=2" in proc.stdout and proc.stdout.strip().endswith("rc=2")  # ls printed nothing: no store, no manifest


def test_bad_losses_are_one_line(tiny_llama_dir, tmp_path):
    prepare(tiny_llama_dir, tmp_path, pairs=False)
    write_scores(tmp_path / "removal.json", n=2, span=2, best=1)
    replace(tiny_llama_dir, tmp_path / "removal.json", tmp_path / "none", net="none")
    with pytest.raises(StreamlineError, match="loss: 'kd' needs a network to train; network 'none' has none"):
        build_recipe("kd", tmp_path / "none", TrainSettings(**FAST), data_dir=tmp_path / "data")
    with pytest.raises(StreamlineError, match="loss: unknown loss 'l2'"):
        build_recipe("l2", tmp_path / "init", TrainSettings(**FAST), data_dir=tmp_path / "data")
