# One table over the baseline and every variant (all n, nets and losses), plus plots. The outputs
# marked report() make up `snakemake --report report.html`. The report gets every file by name from
# here, in one JSON manifest; it rebuilds no path and parses no variant name.
import json

report: "../report/workflow.rst"


def report_manifest():
    """The baseline's files, one row per variant (its files, with its log: train_log.json for trained variants,
    estimate_log.json for the linear estimate, none for plain removal) and the block-score files behind the
    variants, to plot. Every file named here is an input of the rule: an edit of any reruns the report."""
    p0, gguf = paths(), config["export"]["gguf"] != "none"
    rows = []
    for n in layer_intervals():
        p = paths(n=n)
        for v in variants():
            rows.append({"name": v.name, "eval": p.eval(v.name), "samples": p.samples(v.name),
                         "stability": p.stability(v.name),
                         "train_log": p.train_log(v.name) if v.trained else None,
                         "estimate_log": p.estimate_log(v.name) if v.net == "linear" and not v.trained else None,
                         "gguf": p.gguf_check(v.name) if gguf else None})
    scores = sorted({paths(n=n).scores(scores_name(v.k)) for n in layer_intervals() for v in variants()})
    return {"baseline": {"name": model(), "eval": p0.baseline_eval, "samples": p0.baseline_samples,
                         "gguf": p0.baseline_gguf_check if gguf else None}, "rows": rows, "scores": scores}


def report_inputs(wildcards):
    m = report_manifest()
    inputs = {"baseline_eval": m["baseline"]["eval"], "baseline_samples": m["baseline"]["samples"]}
    for i, row in enumerate([m["baseline"], *m["rows"]]):
        inputs.update({f"row{i}_{kind}": row[kind] for kind in ("eval", "samples", "stability", "train_log",
                                                                 "estimate_log", "gguf") if row.get(kind)})
    names = sorted({(n, scores_name(v.k)) for n in layer_intervals() for v in variants()})
    for i, (n, name) in enumerate(names):
        inputs[f"scores{i}"] = scores_input(model(), n, name)
    return inputs


rule report:
    input:
        unpack(report_inputs),
    output:
        json=SUMMARY["json"],
        md=SUMMARY["md"],
        html=report(SUMMARY["html"], caption="../report/summary.rst", category="1. Summary"),
        pareto=report(f"{PLOTS_DIR}/{PLOTS['pareto']}", caption="../report/pareto.rst", category="2. Plots"),
        block_scores=report(f"{PLOTS_DIR}/{PLOTS['block_scores']}", caption="../report/block_scores.rst",
                            category="2. Plots"),
        training_loss=report(f"{PLOTS_DIR}/{PLOTS['training_loss']}", caption="../report/training_loss.rst",
                             category="2. Plots"),
        task_accuracy=report(f"{PLOTS_DIR}/{PLOTS['task_accuracy']}", caption="../report/task_accuracy.rst",
                             category="2. Plots"),
    params:
        version=VERSIONS["report"],
        manifest=json.dumps(report_manifest()),
        plots_dir=PLOTS_DIR,
    resources:
        **planned("report"),
    log:
        REPORT_LOG,
    shell:
        "streamline --log {log} report --manifest {params.manifest:q} --json {output.json} --md {output.md}"
        " --html {output.html} --plots-dir {params.plots_dir}"
