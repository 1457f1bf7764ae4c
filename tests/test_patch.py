"""`network: linear` with a loss (linear-kd, linear-llm, linear-mse): the folded map trained as a patch (the only
trainable weights), folded into the weights at export: a plain model of the base family with L-n layers."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny import make_data_dir, write_scores
from transformers import AutoModelForCausalLM

from streamline.layout import Variant, variants
from streamline.linear import estimate_linear, extract_linear_states
from streamline.patch import PARAM, fold_patches, install
from streamline.pruned import count_params
from streamline.training.recipes import build_recipe, train
from streamline.training.settings import TrainSettings

FAST = dict(batch_size=2, gradient_accumulation_step=2, epochs=3, lr=1e-2, min_lr=1e-3, val_every=3, device="cpu")
PROJ = "model.layers.1.mlp.down_proj"  # the removal block is 2..3: the map sits on layer 1's MLP output


@pytest.fixture
def linear_init(tiny_llama_dir, tmp_path):
    """The training-free `linear` model of the tiny Llama (layers 2..3 removed, the map folded into layer 1)."""
    data = make_data_dir(tmp_path / "data", num=16, seq_len=16, pattern="arithmetic")
    scores = write_scores(tmp_path / "s.json", n=2, span=2, best=2, num_layers=6)
    extract_linear_states(tiny_llama_dir, data, scores, tmp_path / "states.zarr", device="cpu")
    estimate_linear(tiny_llama_dir, tmp_path / "states.zarr", scores, tmp_path / "linear", log_json=tmp_path / "e.json")
    return tmp_path / "linear", data


def test_the_variants_of_a_patched_network_come_from_the_table():
    assert [v.name for v in variants(["linear"], [1], ["kd", "mse"], ["inherit", "mse"])] == [
        "linear",
        "linear-kd",
        "linear-mse+kd",
        "linear-mse",
    ]
    assert Variant.parse("linear-kd") == Variant("linear", 0, "kd") and Variant.parse("linear") == Variant("linear", 0)
    assert not Variant("linear", 0, "mse").stored_pairs and Variant("transformer", 1, "mse").stored_pairs
    assert [v.name for v in variants(["none"], [1], ["kd"], ["inherit"])] == ["none"]  # nothing to patch


def test_only_the_patch_trains_and_an_untrained_patch_is_the_estimate(linear_init, tiny_llama_dir):
    init, data = linear_init
    recipe = build_recipe("kd", init, TrainSettings(**FAST), data_dir=data, teacher_dir=tiny_llama_dir)
    module = recipe.module
    assert module.trainable == [f"{PROJ}.{PARAM}"]
    assert [n for n, p in module.named_parameters() if p.requires_grad] == [f"model.{PROJ}.{PARAM}"]
    assert module.replacement.block == [1, 2, 3] and module.replacement.target == 4  # h_1 -> h_4 of the original
    # the export of the initial state (D = 0, what a run that never improves keeps) is the estimate, bit for bit
    model = AutoModelForCausalLM.from_pretrained(init)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert fold_patches(model, module.trainable_state()) == {}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_folded_model_computes_what_the_patched_model_computes(linear_init):
    init, _ = linear_init
    ids = torch.randint(5, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    delta = 0.1 * torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
    patched = AutoModelForCausalLM.from_pretrained(init).eval()
    install(patched, PROJ).delta.data.copy_(delta)
    folded = AutoModelForCausalLM.from_pretrained(init).eval()
    fold_patches(folded, {f"{PROJ}.{PARAM}": delta})
    plain = AutoModelForCausalLM.from_pretrained(init).eval()
    with torch.no_grad():
        want, got, untouched = (m(ids).logits for m in (patched, folded, plain))
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(untouched, want, atol=1e-3)  # the patch did change the model


@pytest.mark.parametrize("loss", ["kd", "mse"])
def test_training_the_patch_lowers_validation_loss_and_exports_a_plain_model(
    linear_init, tiny_llama_dir, tmp_path, loss
):
    init, data = linear_init
    result = train(
        loss,
        init,
        tmp_path / "model",
        tmp_path / "log.json",
        TrainSettings(**FAST),
        data_dir=data,
        teacher_dir=tiny_llama_dir,
    )
    assert result.kept == "best" and result.best_val_loss < result.initial_val_loss  # the untrained map's
    out = tmp_path / "model"
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 4 and config["architectures"] == ["LlamaForCausalLM"]
    assert "auto_map" not in config and not list(out.glob("*.py"))  # a plain model: no remote code
    before, after = load_file(init / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()  # no extra parameter
    assert {k for k in before if not torch.equal(before[k], after[k])} == {f"{PROJ}.weight"}
    model = AutoModelForCausalLM.from_pretrained(out)
    assert count_params(model) == count_params(AutoModelForCausalLM.from_pretrained(init))
    assert json.loads((out / "streamline.json").read_text())["loss"] == loss
    if loss == "kd":  # and it exports to GGUF as the family's own architecture, unchanged
        from gguf import GGUFReader

        from streamline.gguf_export import export_gguf

        export_gguf(out, tmp_path / "m.gguf", "f32")
        reader = GGUFReader(tmp_path / "m.gguf")
        assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "llama"
        assert reader.fields["llama.block_count"].parts[-1][0] == 4
    # a run that keeps its initial state (D = 0) exports today's `linear` weights bit for bit, by the same export
    from streamline.training.export import export_model

    export_model(init, tmp_path / "untrained", {f"{PROJ}.{PARAM}": torch.zeros(32, 32)}, result)
    untrained = load_file(tmp_path / "untrained" / "model.safetensors")
    assert untrained.keys() == before.keys() and all(torch.equal(before[k], untrained[k]) for k in before)


def test_the_dry_run_of_linear_with_kd_plans_the_estimate_then_its_patch(tiny_llama_dir, text_corpus, tmp_path):
    """network: linear, loss: kd: the training-free estimate and its patch trained by distillation, both evaluated;
    no replacement and no pair store (a patch's pairs, for mse, are computed online); the resource plan agrees."""
    from workflow_utils import planned_outputs, planned_rules, tiny_config, write_config

    from streamline import plan

    write_config(tmp_path, tiny_config(tiny_llama_dir, text_corpus, network="linear", loss="kd"))
    rules = planned_rules(tmp_path)
    assert {
        r: rules.get(r)
        for r in ("score", "extract_linear", "linear", "train_end_to_end", "evaluate_variant", "stability")
    } == {"score": 1, "extract_linear": 1, "linear": 1, "train_end_to_end": 1, "evaluate_variant": 2, "stability": 2}
    assert not {"replace", "extract_pairs", "train_mse"} & rules.keys()
    assert {
        "results/tiny/n2/linear/init",
        "results/tiny/n2/linear-kd/model",
        "results/tiny/n2/linear-kd/eval.json",
        "results/tiny/n2/removal_scores.json",
    } <= planned_outputs(tmp_path)
    jobs = plan.plan_for_config(tmp_path / "config.yaml", device="cpu", root=tmp_path).jobs
    assert [j.label for j in jobs if j.rule.startswith("train")] == ["n2 linear-kd"]
    write_config(tmp_path, tiny_config(tiny_llama_dir, text_corpus, network="linear", loss="mse"))
    assert planned_rules(tmp_path)["train_mse"] == 1 and "extract_pairs" not in planned_rules(tmp_path)
