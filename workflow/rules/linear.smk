# network: linear (training-free, ReplaceMe): Y and M of layer i-1 and h_{i+n} for the calibration blocks go
# to a store (resumable, like every store), then the least-squares map is estimated, folded into layer i-1's
# MLP output projection, and the block removed. The block: the best window of n that starts after layer 0.
rule extract_linear:
    input:
        model=lambda w: model_dir(w.model),
        data=lambda w: data_dir(w.model),
        scores="results/{model}/n{n}/removal_scores.json",
        code=code("linear.py", "extract.py", "store.py"),
    output:
        manifest="results/{model}/n{n}/linear_states.json",
    params:
        store="results/{model}/n{n}/linear_states.zarr",
        num_samples=config["cosine_num_data"],
        dtype=config["dtype"],
        codec=config["zarr"]["codec"],
        level=config["zarr"]["level"],
    resources:
        gpu=1,
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/extract_linear.log",
    shell:
        "streamline --log {log} extract-linear --model {input.model} --data {input.data} --scores {input.scores}"
        " --out {params.store} --manifest {output.manifest} --num-samples {params.num_samples}"
        " --dtype {params.dtype} --codec {params.codec} --level {params.level}"
        " --batch-size {config[extract][batch_size]} --device {config[extract][device]}"
        " --writers {config[extract][writers]}"


rule linear:
    input:
        model=lambda w: model_dir(w.model),
        states="results/{model}/n{n}/linear_states.json",
        scores="results/{model}/n{n}/removal_scores.json",
        code=code("linear.py", "store.py", "pruned.py"),
    output:
        model=directory("results/{model}/n{n}/linear/init"),
        log="results/{model}/n{n}/linear/estimate_log.json",
    params:
        ridge=config["linear"]["ridge"],
        dtype=config["dtype"],
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/linear.log",
    shell:
        "streamline --log {log} linear --model {input.model} --store {input.states} --scores {input.scores}"
        " --out {output.model} --log-json {output.log} --ridge {params.ridge} --dtype {params.dtype}"
