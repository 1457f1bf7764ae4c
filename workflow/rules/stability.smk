# Stability of each variant against the baseline, from both evaluations' per-question samples.
rule stability:
    input:
        before=paths("{model}").baseline_samples,
        after=paths("{model}").samples("{variant}"),
        block=block_of,
    output:
        paths("{model}").stability("{variant}"),
    params:
        version=VERSIONS["stability"],
        metric="acc",
    resources:
        **planned("stability"),
    log:
        paths("{model}").log("stability_{variant}"),
    shell:
        "streamline --log {log} stability --before {input.before} --after {input.after} --metric {params.metric}"
        " --out {output} > /dev/null"
