# Pair stores for MSE training: (h_b, h_b+n+k) of the best block of n+k layers (pairs.zarr for k = 1,
# pairs_k{k}.zarr otherwise). Like calibration, the store is not a declared output (a killed job keeps
# its chunks); the manifest is written last.
EXTRACT_PAIRS = (
    "streamline --log {log} extract-pairs --model {input.model} --data {input.data} --scores {input.scores}"
    + EXTRACT_OPTIONS
)


rule extract_pairs:
    input:
        model=lambda w: model_dir(w.model),
        data=lambda w: data_dir(w.model),
        scores=lambda w: scores_input(w.model, w.n, scores_name(kept_of(w.pairs))),
    output:
        manifest=paths("{model}").pairs("{pairs}"),
    log:
        paths("{model}").log("extract_{pairs}"),
    threads: torch_threads()
    resources:
        **planned("extract_pairs", gpu=1),
    params:
        version=VERSIONS["extract"],
        store=paths("{model}").pairs_store("{pairs}"),
        num_samples=config["train_num_data"],
        dtype=config["dtype"],
        codec=config["zarr"]["codec"],
        level=config["zarr"]["level"],
    shell:
        EXTRACT_PAIRS
