# Pair stores for MSE training: (h_b, h_b+n+k) of the best block of n+k layers (pairs.zarr for k = 1,
# pairs_k{k}.zarr otherwise). Like calibration, the store is not a declared output (a killed job keeps
# its chunks); the manifest is written last.
rule extract_pairs:
    input:
        model=lambda w: model_dir(w.model),
        data=lambda w: data_dir(w.model),
        scores=lambda w: f"results/{w.model}/n{w.n}/{w.pairs.replace('pairs', 'scores')}.json",
        code=code("extract.py", "store.py"),
    output:
        manifest="results/{model}/n{n}/{pairs}.json",
    params:
        store="results/{model}/n{n}/{pairs}.zarr",
        num_samples=config["train_num_data"],
        dtype=config["dtype"],
        codec=config["zarr"]["codec"],
        level=config["zarr"]["level"],
    wildcard_constraints:
        pairs=r"pairs|pairs_k[2-9]|pairs_k[1-9]\d+",
    resources:
        gpu=1,
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/extract_{pairs}.log",
    shell:
        "streamline --log {log} extract-pairs --model {input.model} --data {input.data} --scores {input.scores}"
        " --out {params.store} --manifest {output.manifest} --num-samples {params.num_samples}"
        " --dtype {params.dtype} --codec {params.codec} --level {params.level}"
        " --batch-size {config[extract][batch_size]} --device {config[extract][device]}"
        " --writers {config[extract][writers]}"
