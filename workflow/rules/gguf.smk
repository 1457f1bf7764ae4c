# GGUF for llama.cpp (export.gguf: f32 | f16 | q8_0; none adds nothing): model.gguf next to the original
# (results/{model}/baseline/) and next to each variant's model dir, and gguf.json beside it: the export's
# perplexity inside llama.cpp on the val blocks that evaluate's perplexity uses and, for a variant, its
# prefill/decode speedup over the original's export, measured in llama.cpp next to the ideal. The check
# needs the [gguf] extra (llama-cpp-python); without it that job stops in one line saying so.


rule export_gguf_baseline:
    input:
        model=lambda w: model_dir(w.model),
        code=code("gguf_export.py"),
    output:
        baseline_gguf("{model}"),
    params:
        outtype=config["export"]["gguf"],
    log:
        "logs/{model}/export_gguf_baseline.log",
    shell:
        "streamline --log {log} export-gguf --model {input.model} --out {output} --outtype {params.outtype}"


rule export_gguf_variant:
    input:
        model=lambda w: variant_model(w.n, w.variant, w.model),
        code=code("gguf_export.py"),
    output:
        variant_dir("{n}", "{variant}", "{model}") + "/model.gguf",
    params:
        outtype=config["export"]["gguf"],
    log:
        "logs/{model}/n{n}/export_gguf_{variant}.log",
    shell:
        "streamline --log {log} export-gguf --model {input.model} --out {output} --outtype {params.outtype}"


rule gguf_check_baseline:
    input:
        gguf=baseline_gguf("{model}"),
        data=lambda w: data_dir(w.model),
        code=code("gguf_check.py"),
    output:
        "results/{model}/baseline/gguf.json",
    threads: torch_threads()
    log:
        "logs/{model}/gguf_check_baseline.log",
    shell:
        "streamline --log {log} gguf-check --gguf {input.gguf} --data {input.data} --out {output} --threads {threads}"


rule gguf_check_variant:
    input:
        gguf=variant_dir("{n}", "{variant}", "{model}") + "/model.gguf",
        original=baseline_gguf("{model}"),
        data=lambda w: data_dir(w.model),
        code=code("gguf_check.py"),
    output:
        variant_dir("{n}", "{variant}", "{model}") + "/gguf.json",
    threads: torch_threads()
    log:
        "logs/{model}/n{n}/gguf_check_{variant}.log",
    shell:
        "streamline --log {log} gguf-check --gguf {input.gguf} --original-gguf {input.original} --data {input.data}"
        " --out {output} --threads {threads}"
