# Stability of each variant against the baseline, from both evaluations' per-question samples.
rule stability:
    input:
        before=baseline_samples("{model}"),
        after=variant_dir("{n}", "{variant}", "{model}") + "/samples.json.gz",
        code=code("stability.py"),
    output:
        variant_dir("{n}", "{variant}", "{model}") + "/stability.json",
    params:
        metric="acc",
    log:
        "logs/{model}/n{n}/stability_{variant}.log",
    shell:
        "streamline --log {log} stability --before {input.before} --after {input.after} --metric {params.metric}"
        " --out {output} > /dev/null"
