"""The version of each stage's results: what makes the workflow rerun a stage besides its params and inputs.

A rule reruns when its stage's version, its params or its inputs change, never because a file its code
imports changed: a refactor, a help text, or a `pip install -U` of a release that only refactored reruns
nothing (at the presets' scale, hours of extraction and training). The other side of that bargain:

    Bump a stage's number whenever a change to its code, or to anything it calls, changes what it writes.

tests/test_stage_versions.py holds you to it: it runs every stage on the tiny models and compares what each
wrote with what that stage wrote at its current version (tests/stage_outputs.json); an output that changed
while the number did not fails the test, which names the stage to bump.

The version also identifies what a stage resumes from: a store or a training checkpoint made at another
version of its stage is started afresh, never continued. Kept free of imports: the Snakefile reads it at
every parse.
"""

VERSIONS: dict[str, int] = {
    "download": 1,  # the HF dir written from model_name (GGUF dequantisation, hub snapshot, copy)
    "prepare-data": 2,  # token blocks of calib/train/val (2: data.json signed, names its domains)
    "extract": 1,  # hidden states into Zarr: calibration, pairs and the linear estimate's states
    "score": 1,  # block scores
    "replace": 1,  # the untrained replaced model
    "linear": 3,  # the folded map (2: the estimate log records objective, steps and cosine distances; 3: its outlier tokens)
    "train": 1,  # every loss, and the export of the trained model
    "fetch-eval-data": 1,  # the offline tasks' rows
    "evaluate": 2,  # lm-eval, perplexity, KL, speed (2: samples carry nchar for the acc_norm check)
    "stability": 1,
    "report": 1,
    "export-gguf": 2,  # 2: special tokens as CONTROL, BOS/EOS adding, the pre-tokenizer's name (#29)
    "gguf-check": 1,
}


def version(stage: str) -> int:
    return VERSIONS[stage]
