# Stability of each variant against the baseline, from both evaluations' per-question samples.
rule stability:
    input:
        before="results/{model}/baseline/samples.json.gz",
        after="results/{model}/n{n}/{variant}/samples.json.gz",
        code=code("stability.py"),
    output:
        "results/{model}/n{n}/{variant}/stability.json",
    params:
        metric="acc",
    wildcard_constraints:
        variant=r"none|(transformer|ffn|swiglu)-[a-z]+",
    log:
        "logs/{model}/n{n}/stability_{variant}.log",
    shell:
        "streamline --log {log} stability --before {input.before} --after {input.after} --metric {params.metric}"
        " --out {output} > /dev/null"
