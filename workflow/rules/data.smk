rule prepare_data:
    input:
        model=lambda w: model_dir(w.model),
        code=code("data.py"),
    output:
        directory("resources/data/{model}/{corpus}"),
    params:
        source=config["data"]["source"],
        text_fields=config["data"].get("text_fields", []),
        seq_len=config["data"]["seq_len"],
        pack="--pack" if config["data"]["pack"] else "--no-pack",
        calib=config["cosine_num_data"],
        train=config["train_num_data"],
        val=config["data"]["val_num_data"],
        seed=config["seed"],
    threads: torch_threads()
    log:
        "logs/{model}/data_{corpus}.log",
    shell:
        "streamline --log {log} prepare-data --source {params.source:q} --tokenizer {input.model} --out {output}"
        " --seq-len {params.seq_len} --calib {params.calib} --train {params.train} --val {params.val}"
        " --seed {params.seed} {params.pack} --cache resources/cache"
        + (" --text-fields {params.text_fields:q}" if config["data"].get("text_fields") else "")
