# GGUF for llama.cpp (export.gguf: f32 | f16 | q8_0; none adds nothing): model.gguf next to the original
# (results/{model}/baseline/) and next to each variant's model dir, and gguf.json beside it: the export's
# perplexity inside llama.cpp on the val blocks that evaluate's perplexity uses and, for a variant, its
# prefill/decode speedup over the original's export, measured in llama.cpp next to the ideal. The check
# needs the [gguf] extra (llama-cpp-python); without it that job stops in one line saying so.


rule export_gguf_baseline:
    input:
        model=lambda w: model_dir(w.model),
    output:
        paths("{model}").baseline_gguf,
    log:
        Paths("{model}", None).log("export_gguf_baseline"),
    resources:
        **planned("export_gguf_baseline"),
    params:
        version=VERSIONS["export-gguf"],
        outtype=config["export"]["gguf"],
    shell:
        "streamline --log {log} export-gguf --model {input.model} --out {output} --outtype {params.outtype}"


rule export_gguf_variant:
    input:
        model=lambda w: paths(w.model, w.n).model_out(Variant.parse(w.variant)),
        block=block_of,
    output:
        paths("{model}").gguf("{variant}"),
    log:
        paths("{model}").log("export_gguf_{variant}"),
    resources:
        **planned("export_gguf_variant"),
    params:
        version=VERSIONS["export-gguf"],
        outtype=config["export"]["gguf"],
    shell:
        "streamline --log {log} export-gguf --model {input.model} --out {output} --outtype {params.outtype}"


rule gguf_check_baseline:
    input:
        gguf=paths("{model}").baseline_gguf,
        data=lambda w: data_dir(w.model),
    output:
        paths("{model}").baseline_gguf_check,
    log:
        Paths("{model}", None).log("gguf_check_baseline"),
    threads: torch_threads()
    resources:
        **planned("gguf_check_baseline"),
    params:
        version=VERSIONS["gguf-check"],
    shell:
        "streamline --log {log} gguf-check --gguf {input.gguf} --data {input.data} --out {output} --threads {threads}"


rule gguf_check_variant:
    input:
        gguf=paths("{model}").gguf("{variant}"),
        original=paths("{model}").baseline_gguf,
        block=block_of,
        data=lambda w: data_dir(w.model),
    output:
        paths("{model}").gguf_check("{variant}"),
    log:
        paths("{model}").log("gguf_check_{variant}"),
    threads: torch_threads()
    resources:
        **planned("gguf_check_variant"),
    params:
        version=VERSIONS["gguf-check"],
    shell:
        "streamline --log {log} gguf-check --gguf {input.gguf} --original-gguf {input.original} --data {input.data}"
        " --out {output} --threads {threads}"
