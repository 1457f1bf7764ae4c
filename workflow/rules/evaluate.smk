# lm-eval before (baseline, once per model, shared by every variant) and after (each variant),
# plus perplexity on the held-out val blocks. tasks, limit, batch_size and dtype are params, so
# changing them reruns evaluation; the device is not (it does not change the numbers).
from streamline.evaluate import OFFLINE_DATA_SPEC


rule fetch_eval_data:
    output:
        directory("resources/eval_data/hf_datasets"),
    params:
        spec=OFFLINE_DATA_SPEC,
    log:
        "logs/fetch_eval_data.log",
    shell:
        "streamline --log {log} fetch-eval-data --spec '{params.spec}' --out {output} --cache resources/cache"


def eval_inputs(model_path, m):
    inputs = {"model": model_path, "data": data_dir(m), "code": code("evaluate.py")}
    if eval_data_dir():
        inputs["eval_data"] = eval_data_dir()
    return inputs


EVAL_PARAMS = dict(
    tasks=config["eval"]["tasks"],
    limit=config["eval"]["limit"],
    batch_size=config["eval"]["batch_size"],
    dtype=config["dtype"],
    data_arg=f"--data-dir {eval_data_dir()}" if eval_data_dir() else "",
)
EVAL_SHELL = (
    "streamline --log {log} evaluate --model {input.model} --out {output.eval} --samples {output.samples}"
    " --tasks {params.tasks} --limit {params.limit} --batch-size {params.batch_size} --dtype {params.dtype}"
    " {params.data_arg} --ppl-data {input.data} --ppl-split val --device {config[eval][device]}"
)


rule evaluate_baseline:
    input:
        unpack(lambda w: eval_inputs(model_dir(w.model), w.model)),
    output:
        eval="results/{model}/baseline/eval.json",
        samples="results/{model}/baseline/samples.json.gz",
    params:
        **EVAL_PARAMS,
    resources:
        gpu=1,
    threads: torch_threads()
    log:
        "logs/{model}/evaluate_baseline.log",
    shell:
        EVAL_SHELL


rule evaluate_variant:
    input:
        unpack(lambda w: eval_inputs(variant_model(w.n, w.variant, w.model), w.model)),
    output:
        eval="results/{model}/n{n}/{variant}/eval.json",
        samples="results/{model}/n{n}/{variant}/samples.json.gz",
    params:
        **EVAL_PARAMS,
    wildcard_constraints:
        variant=r"none|(transformer|ffn|swiglu)-[a-z]+",
    resources:
        gpu=1,
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/evaluate_{variant}.log",
    shell:
        EVAL_SHELL
