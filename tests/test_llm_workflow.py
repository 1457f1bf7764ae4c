"""`loss: llm` and `kd` through the workflow: two CPU processes under DeepSpeed ZeRO-2, and under DDP."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from workflow_utils import ROOT, snakemake, write_config


@pytest.mark.slow
@pytest.mark.parametrize(
    "accelerate_config, loss", [("deepspeed_zero2.yaml", "llm"), ("ddp.yaml", "llm"), ("deepspeed_zero2.yaml", "kd")]
)
def test_whole_model_losses_two_processes_through_the_workflow(tiny_workflow, accelerate_config, loss):
    done, config = tiny_workflow[:2]
    TARGET = f"results/tiny/n2/transformer-{loss}/model"
    llm = copy.deepcopy(config)
    llm.update(
        network="transformer",
        loss=loss,
        lr=1e-2,
        min_lr=1e-3,
        epochs=3,
        llm={"accelerate_config": f"{ROOT}/configs/accelerate/{accelerate_config}", "num_processes": 2},
    )
    write_config(done, llm)
    try:
        proc = snakemake(done, TARGET, "--forcerun", "train_end_to_end", "--resources", "gpu=2")
    finally:
        write_config(done, config)
    assert "train_end_to_end" in proc.stdout + proc.stderr
    log_text = (done / f"logs/tiny/n2/train_transformer-{loss}.log").read_text()
    assert "; 2 process(es) (" in log_text, log_text[-2000:]
    assert ("DEEPSPEED" in log_text) == accelerate_config.startswith("deepspeed")
    log = json.loads((done / f"results/tiny/n2/transformer-{loss}/train_log.json").read_text())
    assert log["best_val_loss"] < log["initial_val_loss"]
    slot = json.loads((done / TARGET / "streamline.json").read_text())["block"][0]
    init = load_file(done / "results/tiny/n2/transformer/init/model.safetensors")
    trained = load_file(done / TARGET / "model.safetensors")
    assert init.keys() == trained.keys()
    changed = {k for k in init if not torch.equal(init[k], trained[k])}
    assert changed and all(k.startswith(f"model.layers.{slot}.") for k in changed)
    model = AutoModelForCausalLM.from_pretrained(done / TARGET)
    assert model.config.num_hidden_layers == 4
    assert model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False).shape == (1, 6)
