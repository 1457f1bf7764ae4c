# The untrained replaced model: the best block of n+k layers keeps its first k (transformer, or
# transformerx{k}), or holds one ffn/swiglu network; none drops the best window of n layers.
rule replace:
    input:
        model=lambda w: model_dir(w.model),
        scores=lambda w: scores_for(w.net, w.model, w.n),
        code=code("replace.py", "networks.py", "pruned.py"),
    output:
        directory("results/{model}/n{n}/{net}/init"),
    params:
        net=lambda w: base_net(w.net),
        layers=lambda w: max(1, kept_layers(w.net)),
        dtype=config["dtype"],
        seed=config["seed"],
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/replace_{net}.log",
    shell:
        "streamline --log {log} replace --model {input.model} --scores {input.scores} --net {params.net}"
        " --layers {params.layers} --out {output} --dtype {params.dtype} --seed {params.seed}"
