# Training the replacement network (streamline train). The checkpoint dir is not an output: it must
# survive a killed job so that training resumes.
TRAINED = dict(
    model=directory(paths("{model}").trained_model("{variant}")), log=paths("{model}").train_log("{variant}")
)
TRAIN_MSE = (
    "streamline --log {log} train --loss mse --init {input.init} --data {input.data} --teacher {input.model}"
    " {params.pairs:q} --out {output.model} --log-json {output.log} --checkpoint-dir {params.checkpoint}"
    " {params.flags:q} --checkpoint-every {config[train][checkpoint_every]} --device {config[train][device]}"
)
TRAIN_END_TO_END = (
    "streamline launch --config {params.accelerate_config:q} --num-processes {resources.gpu}"
    " --mixed-precision {params.mixed_precision} --"
    " --log {log} train --loss {params.loss} --init {input.init} --data {input.data} --teacher {input.model}"
    " --out {output.model} --log-json {output.log} --checkpoint-dir {params.checkpoint} {params.flags:q}"
    " --checkpoint-every {config[train][checkpoint_every]}"
)


# MSE: the network alone, on (h_b, h_b+n+k) pairs from the pair store, or computed online by the frozen
# prefix and the original block (pairs.mode: online; nothing is written to disk).
rule train_mse:
    input:
        unpack(train_inputs),
        block=block_of,  # a separate entry: while the score checkpoint reruns, only it waits
    output:
        **TRAINED,
    log:
        paths("{model}").log("train_{variant}"),
    wildcard_constraints:
        variant=variant_pattern(NETWORK_ALONE_LOSSES, staged=False),
    threads: torch_threads()
    resources:
        **planned("train_mse", gpu=1),
    params:
        version=VERSIONS["train"],
        pairs=lambda w, input: ["--pairs", input.pairs] if "pairs" in input.keys() else [],  # the store's manifest
        checkpoint=paths("{model}").checkpoint("{variant}"),
        flags=workflow_flags(config, "mse"),  # every key that changes the weights: a change reruns training
    shell:
        TRAIN_MSE


# The whole replaced model, only the network trainable: next-token loss (llm) or distillation from the
# original model (kd), under `accelerate launch` with llm.accelerate_config (DeepSpeed ZeRO-2 or DDP).
# One process per GPU from the `gpu` resource; with no GPU, CPU processes over gloo.
rule train_end_to_end:
    input:
        unpack(train_inputs),
        block=block_of,  # a separate entry: while the score checkpoint reruns, only it waits
    output:
        **TRAINED,
    log:
        paths("{model}").log("train_{variant}"),
    wildcard_constraints:
        variant=variant_pattern(WHOLE_MODEL_LOSSES),
    threads: torch_threads()
    resources:
        **planned("train_end_to_end", gpu=config["llm"]["num_processes"]),
    params:
        version=VERSIONS["train"],
        accelerate_config=accelerate_config(),
        mixed_precision={"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[config["dtype"]],
        checkpoint=paths("{model}").checkpoint("{variant}"),
        loss=lambda w: Variant.parse(w.variant).loss,
        flags=lambda w: workflow_flags(config, Variant.parse(w.variant).loss),
    shell:
        TRAIN_END_TO_END
