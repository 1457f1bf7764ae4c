# Block scores from the one calibration store: spans of n+1 layers (scores.json, one replacement
# layer), n+k (scores_k{k}.json, k layers kept) and n (removal_scores.json, plain removal).
# A checkpoint, so that a rerun writing the same scores stops there (common.smk: scores_input).
checkpoint score:
    input:
        calibration=lambda w: paths(w.model).calibration,
    output:
        scores=paths("{model}").scores("{scores}"),
        plot=paths("{model}").scores_plot("{scores}"),
    log:
        paths("{model}").log("{scores}"),
    threads: torch_threads()
    resources:
        **planned("score"),
    params:
        version=VERSIONS["score"],
        span=lambda w: int(w.n) + kept_of(w.scores),  # n layers removed, k kept
        metric=config["metric"],
    shell:
        "streamline --log {log} score --store {input.calibration} --n {wildcards.n} --span {params.span}"
        " --metric {params.metric} --out {output.scores} --plot {output.plot}"
