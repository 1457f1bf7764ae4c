# The checkpoint dir is not an output: it must survive a killed job so training resumes.
rule train_mse:
    input:
        init="results/{model}/n{n}/{net}/init",
        pairs="results/{model}/n{n}/pairs.json",
        code=code("train_mse.py"),
    output:
        model=directory("results/{model}/n{n}/{net}-mse/model"),
        log="results/{model}/n{n}/{net}-mse/train_log.json",
    params:
        pairs="results/{model}/n{n}/pairs.zarr",
        checkpoint="results/{model}/n{n}/{net}-mse/checkpoint",
        batch_size=config["batch_size"],
        accumulation=config["gradient_accumulation_step"],
        epochs=config["epochs"],
        lr=config["lr"],
        min_lr=config["min_lr"],
        wd=config["wd"],
        seed=config["seed"],
        warmup_ratio=config["train"]["warmup_ratio"],
        max_grad_norm=config["train"]["max_grad_norm"],
        val_every=config["train"]["val_every"],
        skip_first_tokens=config["train"]["skip_first_tokens"],
    resources:
        gpu=1,
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/train_{net}-mse.log",
    shell:
        "streamline --log {log} train --init {input.init} --pairs {params.pairs} --out {output.model}"
        " --log-json {output.log} --checkpoint-dir {params.checkpoint} --batch-size {params.batch_size}"
        " --gradient-accumulation-step {params.accumulation} --epochs {params.epochs} --lr {params.lr}"
        " --min-lr {params.min_lr} --wd {params.wd} --seed {params.seed} --warmup-ratio {params.warmup_ratio}"
        " --max-grad-norm {params.max_grad_norm} --val-every {params.val_every}"
        " --skip-first-tokens {params.skip_first_tokens}"
        " --checkpoint-every {config[train][checkpoint_every]} --device {config[train][device]}"


# LLM loss: the replaced model end to end, only the lightweight network trainable, under
# `accelerate launch` with the config in llm.accelerate_config. One process per GPU from the
# `gpu` resource (set it in the config or the profile); with no GPU, CPU processes over gloo.
rule train_llm:
    input:
        init="results/{model}/n{n}/{net}/init",
        data=lambda w: data_dir(w.model),
        code=code("train_llm.py"),
    output:
        model=directory("results/{model}/n{n}/{net}-llm/model"),
        log="results/{model}/n{n}/{net}-llm/train_log.json",
    params:
        accelerate_config=config["llm"]["accelerate_config"],
        mixed_precision={"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[config["dtype"]],
        checkpoint="results/{model}/n{n}/{net}-llm/checkpoint",
        train_samples=config["llm"]["max_train_samples"] or config["train_num_data"],
        batch_size=config["batch_size"],
        accumulation=config["gradient_accumulation_step"],
        epochs=config["epochs"],
        lr=config["lr"],
        min_lr=config["min_lr"],
        wd=config["wd"],
        seed=config["seed"],
        warmup_ratio=config["train"]["warmup_ratio"],
        max_grad_norm=config["train"]["max_grad_norm"],
        val_every=config["train"]["val_every"],
    resources:
        gpu=config["llm"]["num_processes"],
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/train_{net}-llm.log",
    shell:
        "python -m streamline.launch --config {params.accelerate_config} --num-processes {resources.gpu}"
        " --mixed-precision {params.mixed_precision} --"
        " --log {log} --init {input.init} --data {input.data} --out {output.model} --log-json {output.log}"
        " --checkpoint-dir {params.checkpoint} --train-samples {params.train_samples}"
        " --batch-size {params.batch_size} --gradient-accumulation-step {params.accumulation}"
        " --epochs {params.epochs} --lr {params.lr} --min-lr {params.min_lr} --wd {params.wd} --seed {params.seed}"
        " --warmup-ratio {params.warmup_ratio} --max-grad-norm {params.max_grad_norm}"
        " --val-every {params.val_every} --checkpoint-every {config[train][checkpoint_every]}"
