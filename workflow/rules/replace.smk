# The untrained replaced model: the best block of n+k layers keeps its first k (transformer, or
# transformerx{k}), or holds one ffn/swiglu network; none drops the best window of n layers.
REPLACE = (
    "streamline --log {log} replace --model {input.model} --scores {input.scores} --net {params.net}"
    " --layers {params.layers} --out {output} --dtype {params.dtype} --seed {params.seed}"
)


rule replace:
    input:
        model=lambda w: model_dir(w.model),
        scores=lambda w: scores_input(w.model, w.n, scores_name(parse_replacement(w.net)[1])),
    output:
        directory(paths("{model}").init("{net}")),
    log:
        paths("{model}").log("replace_{net}"),
    threads: torch_threads()
    resources:
        **planned("replace"),
    params:
        version=VERSIONS["replace"],
        net=lambda w: parse_replacement(w.net)[0],
        layers=lambda w: max(1, parse_replacement(w.net)[1]),
        dtype=config["dtype"],
        seed=config["seed"],
    shell:
        REPLACE
