# Pair stores for MSE training: (h_b, h_b+n+1) of the best block. Like calibration, the store is
# not a declared output (a killed job keeps its chunks); the manifest is written last.
rule extract_pairs:
    input:
        model=lambda w: model_dir(w.model),
        data=lambda w: data_dir(w.model),
        scores="results/{model}/n{n}/scores.json",
        code=code("extract.py", "store.py"),
    output:
        manifest="results/{model}/n{n}/pairs.json",
    params:
        store="results/{model}/n{n}/pairs.zarr",
        num_samples=config["train_num_data"],
        dtype=config["dtype"],
        codec=config["zarr"]["codec"],
        level=config["zarr"]["level"],
    resources:
        gpu=1,
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/extract_pairs.log",
    shell:
        "streamline --log {log} extract-pairs --model {input.model} --data {input.data} --scores {input.scores}"
        " --out {params.store} --manifest {output.manifest} --num-samples {params.num_samples}"
        " --dtype {params.dtype} --codec {params.codec} --level {params.level}"
        " --batch-size {config[extract][batch_size]} --device {config[extract][device]}"
        " --writers {config[extract][writers]}"
