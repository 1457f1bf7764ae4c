# The store itself is not a declared output: Snakemake would delete a killed job's outputs,
# and the chunks already written are what makes extraction resumable. The manifest is written
# last, once every chunk exists.
EXTRACT_OPTIONS = (  # what every extraction passes on (calibration, pairs, the linear estimate's states)
    " --out {params.store} --manifest {output.manifest} --num-samples {params.num_samples}"
    " --dtype {params.dtype} --codec {params.codec} --level {params.level}"
    " --batch-size {config[extract][batch_size]} --device {config[extract][device]}"
    " --writers {config[extract][writers]}"
)
EXTRACT_CALIBRATION = (
    "streamline --log {log} extract-calibration --model {input.model} --data {input.data}" + EXTRACT_OPTIONS
)


rule extract_calibration:
    input:
        model=lambda w: model_dir(w.model),
        data=lambda w: data_dir(w.model),
    output:
        manifest=paths("{model}").calibration,
    log:
        Paths("{model}", None).log("extract_calibration"),
    threads: torch_threads()
    resources:
        **planned("extract_calibration", gpu=1),
    params:
        version=VERSIONS["extract"],
        store=paths("{model}").calibration_store,
        num_samples=config["cosine_num_data"],
        dtype=config["dtype"],
        codec=config["zarr"]["codec"],
        level=config["zarr"]["level"],
    shell:
        # n, k and seq_len against the model's own config, now that it is on disk (not a param: changing n must
        # not rerun the extraction, which does not depend on it)
        f"streamline --log {{log}} check-config {VALIDATED_CONFIG} --model-dir {{input.model}} && "
        + EXTRACT_CALIBRATION
