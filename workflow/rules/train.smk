# Training the replacement network (streamline train). The checkpoint dir is not an output: it must
# survive a killed job so that training resumes.
TRAIN_CODE = code("training/recipes.py")


def mse_inputs(w):
    inputs = {"init": f"results/{w.model}/n{w.n}/{w.net}/init", "data": data_dir(w.model),
              "model": model_dir(w.model), "code": TRAIN_CODE}
    if config["pairs"]["mode"] == "store":
        inputs["pairs"] = f"results/{w.model}/n{w.n}/{pairs_name(w.net)}.json"
    return inputs


# MSE: the network alone, on (h_b, h_b+n+k) pairs from the pair store, or computed online by the frozen
# prefix and the original block (pairs.mode: online; nothing is written to disk).
rule train_mse:
    input:
        unpack(mse_inputs),
    output:
        model=directory("results/{model}/n{n}/{net}-mse/model"),
        log="results/{model}/n{n}/{net}-mse/train_log.json",
    params:
        pairs=lambda w, input: ["--pairs", input.pairs] if "pairs" in input.keys() else [],  # the store's manifest
        checkpoint="results/{model}/n{n}/{net}-mse/checkpoint",
        flags=workflow_flags(config, "mse"),  # every key that changes the weights: a change reruns training
    resources:
        gpu=1,
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/train_{net}-mse.log",
    shell:
        "streamline --log {log} train --loss mse --init {input.init} --data {input.data} --teacher {input.model}"
        " {params.pairs:q} --out {output.model} --log-json {output.log} --checkpoint-dir {params.checkpoint}"
        " {params.flags:q} --checkpoint-every {config[train][checkpoint_every]} --device {config[train][device]}"


def end_to_end_inputs(w):
    staged = w.loss.startswith("mse+")  # train.init_from: mse starts from the MSE-trained network
    init = f"results/{w.model}/n{w.n}/{w.net}-mse/model" if staged else f"results/{w.model}/n{w.n}/{w.net}/init"
    return {"init": init, "data": data_dir(w.model), "model": model_dir(w.model), "code": TRAIN_CODE}


# The whole replaced model, only the network trainable: next-token loss (llm) or distillation from the
# original model (kd), under `accelerate launch` with llm.accelerate_config (DeepSpeed ZeRO-2 or DDP).
# One process per GPU from the `gpu` resource; with no GPU, CPU processes over gloo.
rule train_end_to_end:
    input:
        unpack(end_to_end_inputs),
    output:
        model=directory("results/{model}/n{n}/{net}-{loss}/model"),
        log="results/{model}/n{n}/{net}-{loss}/train_log.json",
    params:
        accelerate_config=accelerate_config(),
        mixed_precision={"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[config["dtype"]],
        checkpoint="results/{model}/n{n}/{net}-{loss}/checkpoint",
        loss=lambda w: w.loss.rpartition("+")[2],
        flags=lambda w: workflow_flags(config, w.loss.rpartition("+")[2]),
    wildcard_constraints:
        loss=rf"(mse\+)?({WHOLE_MODEL_LOSSES})",
    resources:
        gpu=config["llm"]["num_processes"],
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/train_{net}-{loss}.log",
    shell:
        "streamline launch --config {params.accelerate_config:q} --num-processes {resources.gpu}"
        " --mixed-precision {params.mixed_precision} --"
        " --log {log} train --loss {params.loss} --init {input.init} --data {input.data} --teacher {input.model}"
        " --out {output.model} --log-json {output.log} --checkpoint-dir {params.checkpoint} {params.flags:q}"
        " --checkpoint-every {config[train][checkpoint_every]}"
