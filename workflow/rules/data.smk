rule prepare_data:
    input:
        model=lambda w: model_dir(w.model),
    output:
        directory(paths("{model}").data_dir("{corpus}")),
    log:
        Paths("{model}", None).log("data_{corpus}"),
    threads: torch_threads()
    resources:
        **planned("prepare_data"),
    params:
        version=VERSIONS["prepare-data"],
        source=config["data"]["source"],
        text_fields=config["data"].get("text_fields", []),
        seq_len=config["data"]["seq_len"],
        pack="--pack" if config["data"]["pack"] else "--no-pack",
        cache=CACHE,
        calib=config["cosine_num_data"],
        train=config["train_num_data"],
        val=config["data"]["val_num_data"],
        seed=config["seed"],
    shell:
        "streamline --log {log} prepare-data --source {params.source:q} --tokenizer {input.model} --out {output}"
        " --seq-len {params.seq_len} --calib {params.calib} --train {params.train} --val {params.val}"
        " --seed {params.seed} {params.pack} --cache {params.cache}"
        + (" --text-fields {params.text_fields:q}" if config["data"].get("text_fields") else "")
