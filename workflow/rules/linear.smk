# network: linear (training-free, ReplaceMe): Y and M of layer i-1 and h_{i+n} for the calibration blocks go
# to a store (resumable, like every store), then the map is estimated (linear.objective: lstsq, balanced or cosine), folded
# into layer i-1's MLP output projection, and the block removed. The block: the best window of n that starts after layer 0.
EXTRACT_LINEAR = (
    "streamline --log {log} extract-linear --model {input.model} --data {input.data} --scores {input.scores}"
    + EXTRACT_OPTIONS
)
LINEAR = (
    "streamline --log {log} linear --model {input.model} --store {input.states} --scores {input.scores}"
    " --out {output.model} --log-json {output.log} --ridge {params.ridge} --dtype {params.dtype}"
    " --objective {params.objective} {params.options}"
)
LINEAR_PARAMS = dict(  # the estimate's settings, for one block (rule linear) and a round (round_linear)
    ridge=config["linear"]["ridge"],
    objective=config["linear"]["objective"],
    # only the objective's own options: a change of another's reruns nothing
    options={
        "cosine": ["--epochs", config["linear"]["epochs"], "--lr", config["linear"]["lr"], "--seed", config["seed"]],
        "balanced": ["--outlier-share", config["linear"]["outlier_share"]],
    }.get(config["linear"]["objective"], []),
    dtype=config["dtype"],
)


rule extract_linear:
    input:
        model=lambda w: model_dir(w.model),
        data=lambda w: data_dir(w.model),
        scores=lambda w: scores_input(w.model, w.n, scores_name(0)),
    output:
        manifest=paths("{model}").linear_states,
    log:
        paths("{model}").log("extract_linear"),
    threads: torch_threads()
    resources:
        **planned("extract_linear", gpu=1),
    params:
        version=VERSIONS["extract"],
        store=paths("{model}").linear_states_store,
        num_samples=config["cosine_num_data"],
        dtype=config["dtype"],
        codec=config["zarr"]["codec"],
        level=config["zarr"]["level"],
    shell:
        EXTRACT_LINEAR


rule linear:
    input:
        model=lambda w: model_dir(w.model),
        states=paths("{model}").linear_states,
        scores=lambda w: scores_input(w.model, w.n, scores_name(0)),
    output:
        model=directory(paths("{model}").init("linear")),
        log=paths("{model}").estimate_log("linear"),
    log:
        paths("{model}").log("linear"),
    threads: torch_threads()
    resources:
        **planned("linear"),
    params:
        **LINEAR_PARAMS,
        version=VERSIONS["linear"],
    shell:
        LINEAR
