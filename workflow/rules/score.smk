rule score:
    input:
        calibration="results/{model}/calibration.json",
        code=code("score.py"),
    output:
        scores="results/{model}/n{n}/scores.json",
        plot="results/{model}/n{n}/scores.png",
    params:
        store="results/{model}/calibration.zarr",
        metric=config["metric"],
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/score.log",
    shell:
        "streamline --log {log} score --store {params.store} --n {wildcards.n} --metric {params.metric}"
        " --out {output.scores} --plot {output.plot}"


rule score_removal:
    input:
        calibration="results/{model}/calibration.json",
        code=code("score.py"),
    output:
        scores="results/{model}/n{n}/removal_scores.json",
        plot="results/{model}/n{n}/removal_scores.png",
    params:
        store="results/{model}/calibration.zarr",
        metric=config["metric"],
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/score_removal.log",
    shell:
        "streamline --log {log} score --store {params.store} --n {wildcards.n} --span {wildcards.n}"
        " --metric {params.metric} --out {output.scores} --plot {output.plot}"
