# Pruning in rounds (prune.rounds = r > 1): n layers removed as r smaller blocks (layout.round_sizes). Each round
# is the one-block pipeline run on the model the previous round made (round 1: the original): its block scores
# from that model's calibration store, its replacement (linear: its folded map), its pairs (MSE), and its training on its share of the
# training blocks, healing toward that model (the teacher of kd, the source of the MSE pairs). Every round is a
# directory of its own (layout.RoundPaths: results/{model}/rounds{r}/{variant}/n{chain}/); the last round's model
# is the variant {variant}-r{r}, which evaluate, stability, report and the GGUF export read like any other.
ROUND = RoundPaths("{model}", "{r}", "{variant}", "{chain}")
ONE_ROUND = dict(variant=variant_pattern(trained=False))  # what each round makes: no -r{r} inside a round
REPLACED_ROUND = dict(variant=rf"(?!linear\b)(?:{variant_pattern(trained=False)})")  # init/ by replace, not by linear


# The hidden states of a round's model, for the next round's scores (never asked for after the last round).
rule round_calibration:
    input:
        model=lambda w: round_of(w).model_dir,
        data=lambda w: data_dir(w.model),
    output:
        manifest=ROUND.calibration,
    log:
        ROUND.log("extract_calibration"),
    wildcard_constraints:
        **ONE_ROUND,
    threads: torch_threads()
    resources:
        **planned("extract_calibration", gpu=1),
    params:
        version=VERSIONS["extract"],
        store=ROUND.calibration_store,
        num_samples=config["cosine_num_data"],
        dtype=config["dtype"],
        codec=config["zarr"]["codec"],
        level=config["zarr"]["level"],
    shell:
        EXTRACT_CALIBRATION


rule round_score:
    input:
        calibration=round_start_calibration,
    output:
        scores=ROUND.scores,
        plot=ROUND.scores_plot,
    log:
        ROUND.log("scores"),
    wildcard_constraints:
        **ONE_ROUND,
    threads: torch_threads()
    resources:
        **planned("score"),
    params:
        version=VERSIONS["score"],
        n=lambda w: round_of(w).sizes[-1],
        span=lambda w: round_of(w).sizes[-1] + Variant.parse(w.variant).k,  # n_i removed, k kept
        metric=config["metric"],
    shell:
        "streamline --log {log} score --store {input.calibration} --n {params.n} --span {params.span}"
        " --metric {params.metric} --out {output.scores} --plot {output.plot}"


rule round_replace:
    input:
        model=round_start,
        scores=ROUND.scores,
    output:
        directory(ROUND.init),
    log:
        ROUND.log("replace"),
    wildcard_constraints:
        **REPLACED_ROUND,
    threads: torch_threads()
    resources:
        **planned("replace"),
    params:
        version=VERSIONS["replace"],
        net=lambda w: Variant.parse(w.variant).net,
        layers=lambda w: max(1, Variant.parse(w.variant).k),
        dtype=config["dtype"],
        seed=config["seed"],
    shell:
        REPLACE


rule round_pairs:
    input:
        model=round_start,
        data=lambda w: data_dir(w.model),
        scores=ROUND.scores,
    output:
        manifest=ROUND.pairs,
    log:
        ROUND.log("extract_pairs"),
    wildcard_constraints:
        **ONE_ROUND,
    threads: torch_threads()
    resources:
        **planned("extract_pairs", gpu=1),
    params:
        version=VERSIONS["extract"],
        store=ROUND.pairs_store,
        num_samples=round_blocks,
        dtype=config["dtype"],
        codec=config["zarr"]["codec"],
        level=config["zarr"]["level"],
    shell:
        EXTRACT_PAIRS


# network: linear, a round of it: the estimate's states from the model the round prunes, then the map folded into it.
rule round_extract_linear:
    input:
        model=round_start,
        data=lambda w: data_dir(w.model),
        scores=ROUND.scores,
    output:
        manifest=ROUND.linear_states,
    log:
        ROUND.log("extract_linear"),
    wildcard_constraints:
        variant="linear",
    threads: torch_threads()
    resources:
        **planned("extract_linear", gpu=1),
    params:
        version=VERSIONS["extract"],
        store=ROUND.linear_states_store,
        num_samples=config["cosine_num_data"],
        dtype=config["dtype"],
        codec=config["zarr"]["codec"],
        level=config["zarr"]["level"],
    shell:
        EXTRACT_LINEAR


rule round_linear:
    input:
        model=round_start,
        states=ROUND.linear_states,
        scores=ROUND.scores,
    output:
        model=directory(ROUND.init),
        log=ROUND.estimate_log,
    log:
        ROUND.log("linear"),
    wildcard_constraints:
        variant="linear",
    threads: torch_threads()
    resources:
        **planned("linear"),
    params:
        **LINEAR_PARAMS,
        version=VERSIONS["linear"],
    shell:
        LINEAR


ROUND_TRAINED = dict(model=directory(f"{ROUND.base}/model"), log=ROUND.train_log)


rule round_train_mse:
    input:
        unpack(round_train_inputs),
    output:
        **ROUND_TRAINED,
    log:
        ROUND.log("train"),
    wildcard_constraints:
        variant=variant_pattern(NETWORK_ALONE_LOSSES, staged=False),
    threads: torch_threads()
    resources:
        **planned("train_mse", gpu=1),
    params:
        version=VERSIONS["train"],
        pairs=lambda w, input: ["--pairs", input.pairs] if "pairs" in input.keys() else [],
        checkpoint=ROUND.checkpoint,
        flags=lambda w: workflow_flags(config, "mse", train_samples=round_blocks(w)),
    shell:
        TRAIN_MSE


rule round_train_end_to_end:
    input:
        unpack(round_train_inputs),
    output:
        **ROUND_TRAINED,
    log:
        ROUND.log("train"),
    wildcard_constraints:
        variant=variant_pattern(WHOLE_MODEL_LOSSES, staged=False),
    threads: torch_threads()
    resources:
        **planned("train_end_to_end", gpu=config["llm"]["num_processes"]),
    params:
        version=VERSIONS["train"],
        accelerate_config=accelerate_config(),
        mixed_precision={"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[config["dtype"]],
        checkpoint=ROUND.checkpoint,
        loss=lambda w: Variant.parse(w.variant).loss,
        flags=lambda w: workflow_flags(config, Variant.parse(w.variant).loss, train_samples=round_blocks(w)),
    shell:
        TRAIN_END_TO_END
