# Stability of each variant against the baseline, from both evaluations' per-question samples.
rule stability:
    input:
        before=paths("{model}").baseline_samples,
        after=paths("{model}").samples("{variant}"),
        block=block_of,
    output:
        paths("{model}").stability("{variant}"),
    log:
        paths("{model}").log("stability_{variant}"),
    resources:
        **planned("stability"),
    params:
        version=VERSIONS["stability"],
        metric="acc",
    shell:
        "streamline --log {log} stability --before {input.before} --after {input.after} --metric {params.metric}"
        " --out {output} > /dev/null"
