# Block scores from the one calibration store: spans of n+1 layers (scores.json, one replacement
# layer), n+k (scores_k{k}.json, k layers kept) and n (removal_scores.json, plain removal).
rule score:
    input:
        calibration=lambda w: calibration_manifest(w.model),
        code=code("score.py"),
    output:
        scores="results/{model}/n{n}/{scores}.json",
        plot="results/{model}/n{n}/{scores}.png",
    params:
        span=lambda w: span_of(w.scores, int(w.n)),
        metric=config["metric"],
    wildcard_constraints:
        scores=r"scores|scores_k[2-9]|scores_k[1-9]\d+|removal_scores",
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/{scores}.log",
    shell:
        "streamline --log {log} score --store {input.calibration} --n {wildcards.n} --span {params.span}"
        " --metric {params.metric} --out {output.scores} --plot {output.plot}"
