# The store itself is not a declared output: Snakemake would delete a killed job's outputs,
# and the chunks already written are what makes extraction resumable. The manifest is written
# last, once every chunk exists.
rule extract_calibration:
    input:
        model=lambda w: model_dir(w.model),
        data=lambda w: data_dir(w.model),
        code=code("extract.py", "store.py"),
    output:
        manifest=paths("{model}").calibration,
    params:
        store=paths("{model}").calibration_store,
        num_samples=config["cosine_num_data"],
        dtype=config["dtype"],
        codec=config["zarr"]["codec"],
        level=config["zarr"]["level"],
    resources:
        **planned("extract_calibration", gpu=1),
    threads: torch_threads()
    log:
        Paths("{model}", None).log("extract_calibration"),
    shell:
        "streamline --log {log} extract-calibration --model {input.model} --data {input.data}"
        " --out {params.store} --manifest {output.manifest} --num-samples {params.num_samples}"
        " --dtype {params.dtype} --codec {params.codec} --level {params.level}"
        " --batch-size {config[extract][batch_size]} --device {config[extract][device]}"
        " --writers {config[extract][writers]}"
