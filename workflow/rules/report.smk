# One table over the baseline and every variant (all n, nets and losses), plus plots. The outputs
# marked report() make up `snakemake --report report.html`. The report gets every file by name from
# here; it rebuilds no path and parses no variant name.
report: "../report/workflow.rst"


def report_rows():
    """(name, {kind: path}) per variant row. The logs are optional: the report reads the one that exists
    (train_log.json for trained variants, estimate_log.json for training-free estimates); a change to
    them comes with a new model, which reruns the evaluation, an input."""
    m = model()
    rows = []
    for n in layer_intervals():
        for v in variants():
            d = variant_dir(n, v, m)
            rows.append((v, {"eval": f"{d}/eval.json", "samples": f"{d}/samples.json.gz",
                             "stability": f"{d}/stability.json", "train_log": f"{d}/train_log.json",
                             "estimate_log": f"{d}/estimate_log.json"}))
    return rows


def report_scores():
    """The block-score files behind the variants (one per n and span), to plot."""
    m = model()
    return sorted({scores_for(net, m, n) for n in layer_intervals() for net in net_names()})


def report_inputs(wildcards):
    inputs = {"baseline_eval": baseline_eval(), "baseline_samples": baseline_samples(), "code": code("report.py",
              "stats.py", "plots.py")}
    for i, (_, files) in enumerate(report_rows()):
        inputs.update({f"row{i}_{kind}": files[kind] for kind in ("eval", "samples", "stability")})
    for i, path in enumerate(report_scores()):
        inputs[f"scores{i}"] = path
    return inputs


def report_args(wildcards, input):
    args = [f"--baseline name={model()} eval={input.baseline_eval} samples={input.baseline_samples}"]
    for name, files in report_rows():
        args.append("--variant " + " ".join([f"name={name}"] + [f"{k}={v}" for k, v in files.items()]))
    args.append("--scores " + " ".join(report_scores()))
    return " ".join(args)


rule report:
    input:
        unpack(report_inputs),
    output:
        json="results/summary.json",
        md="results/summary.md",
        html=report("results/summary.html", caption="../report/summary.rst", category="1. Summary"),
        pareto=report("results/plots/pareto.png", caption="../report/pareto.rst", category="2. Plots"),
        block_scores=report("results/plots/block_scores.png", caption="../report/block_scores.rst",
                            category="2. Plots"),
        training_loss=report("results/plots/training_loss.png", caption="../report/training_loss.rst",
                             category="2. Plots"),
        task_accuracy=report("results/plots/task_accuracy.png", caption="../report/task_accuracy.rst",
                             category="2. Plots"),
    params:
        args=report_args,
        plots_dir=lambda w, output: str(Path(output.pareto).parent),
    log:
        "logs/report.log",
    shell:
        "streamline --log {log} report {params.args} --json {output.json} --md {output.md} --html {output.html}"
        " --plots-dir {params.plots_dir}"
