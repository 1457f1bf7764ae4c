# One table over the baseline and every variant (all n, nets and losses), plus plots. The outputs
# marked report() make up `snakemake --report report.html`. The report gets every file by name from
# here, in one JSON manifest; it rebuilds no path and parses no variant name.
import json


report: "../report/workflow.rst"


rule report:
    input:
        unpack(report_inputs),
    output:
        json=SUMMARY["json"],
        md=SUMMARY["md"],
        html=report(SUMMARY["html"], caption="../report/summary.rst", category="1. Summary"),
        pareto=report(f"{PLOTS_DIR}/{PLOTS['pareto']}", caption="../report/pareto.rst", category="2. Plots"),
        block_scores=report(
            f"{PLOTS_DIR}/{PLOTS['block_scores']}", caption="../report/block_scores.rst", category="2. Plots"
        ),
        training_loss=report(
            f"{PLOTS_DIR}/{PLOTS['training_loss']}", caption="../report/training_loss.rst", category="2. Plots"
        ),
        task_accuracy=report(
            f"{PLOTS_DIR}/{PLOTS['task_accuracy']}", caption="../report/task_accuracy.rst", category="2. Plots"
        ),
    log:
        REPORT_LOG,
    resources:
        **planned("report"),
    params:
        version=VERSIONS["report"],
        manifest=json.dumps(report_manifest()),
        plots_dir=lambda w, output: Path(output.block_scores).parent,
    shell:
        "streamline --log {log} report --manifest {params.manifest:q} --json {output.json} --md {output.md}"
        " --html {output.html} --plots-dir {params.plots_dir}"
