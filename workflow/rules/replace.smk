rule replace:
    input:
        model=lambda w: model_dir(w.model),
        scores=lambda w: scores_for(w.net, w.model, w.n),
        code=code("replace.py", "networks.py", "pruned.py"),
    output:
        directory("results/{model}/n{n}/{net}/init"),
    params:
        dtype=config["dtype"],
        seed=config["seed"],
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/replace_{net}.log",
    shell:
        "streamline --log {log} replace --model {input.model} --scores {input.scores} --net {wildcards.net}"
        " --out {output} --dtype {params.dtype} --seed {params.seed}"
