rule download_model:
    input:
        code=code("download.py", "fetch.py"),
    output:
        directory("resources/models/{model}"),
    params:
        model_name=config["model_name"],
    threads: torch_threads()
    log:
        "logs/{model}/download.log",
    shell:
        "streamline --log {log} download --model-name '{params.model_name}' --out {output} --cache resources/cache"
