# One table over the baseline and every variant (all n, nets and losses), plus plots. The outputs
# marked report() make up `snakemake --report report.html`.
report: "../report/workflow.rst"


def report_inputs(wildcards):
    m = model()
    inputs = {"baseline": baseline_eval(m), "code": code("report.py")}
    for n in layer_intervals():
        inputs[f"scores_n{n}"] = f"results/{m}/n{n}/scores.json"
        if "none" in variants():
            inputs[f"removal_scores_n{n}"] = f"results/{m}/n{n}/removal_scores.json"
        for v in variants():
            d = variant_dir(n, v, m)
            inputs[f"eval_n{n}_{v}"] = f"{d}/eval.json"
            inputs[f"stability_n{n}_{v}"] = f"{d}/stability.json"
            if v != "none":
                inputs[f"train_log_n{n}_{v}"] = f"{d}/train_log.json"
    return inputs


rule report:
    input:
        unpack(report_inputs),
    output:
        json="results/summary.json",
        md="results/summary.md",
        html=report("results/summary.html", caption="../report/summary.rst", category="1. Summary"),
        block_scores=report("results/plots/block_scores.png", caption="../report/block_scores.rst",
                            category="2. Plots"),
        training_loss=report("results/plots/training_loss.png", caption="../report/training_loss.rst",
                             category="2. Plots"),
        task_accuracy=report("results/plots/task_accuracy.png", caption="../report/task_accuracy.rst",
                             category="2. Plots"),
    params:
        models=model(),
        ns=layer_intervals(),
        variants=variants(),
    log:
        "logs/report.log",
    shell:
        "streamline --log {log} report --results results --model {params.models} --n {params.ns}"
        " --variants {params.variants} --json {output.json} --md {output.md} --html {output.html}"
        " --plots-dir results/plots"
