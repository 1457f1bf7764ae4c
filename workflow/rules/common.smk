# Paths and input helpers shared by the rules. Every path of the artifact contract is here.
import os
from pathlib import Path

import streamline
from streamline.download import model_slug
from streamline.imports import stage_files
from streamline.schema import schema_enum
from streamline.training.settings import workflow_flags

PACKAGE = Path(streamline.__file__).parent


def code(*modules):
    """Every package file a stage runs (the import closure of its modules, and the CLI) as inputs: editing
    any of them reruns that stage onward, and nothing else (Snakemake compares their checksums)."""
    return stage_files(*(m.removesuffix(".py").replace("/", ".") for m in modules))


def torch_threads():
    """Threads for a stage that runs torch (Snakemake exports them as OMP_NUM_THREADS; with no threads
    directive that is 1, and torch would compute on one core). Inside a Slurm job: the CPUs sbatch gave
    it (cpus_per_task in the profile). Elsewhere: every core Snakemake may use."""
    return int(os.environ.get("SLURM_CPUS_PER_TASK") or workflow.cores)


def model():
    return config.get("model_alias") or model_slug(config["model_name"])


def model_source_files():
    """A local model_name's files, as inputs of the download: a checkpoint changed in place reruns it."""
    path = Path(config["model_name"]).expanduser()
    if not path.exists():
        return []
    return [str(path)] if path.is_file() else [str(f) for f in sorted(path.iterdir())
                                               if f.is_file() and not f.name.startswith(".")]


def model_dir(m=None):
    return f"resources/models/{m or model()}"


def data_dir(m=None):
    return f"resources/data/{m or model()}/{config['data']['name']}"


def calibration_manifest(m=None):
    return f"results/{m or model()}/calibration.json"


def layer_intervals():
    n = config["layer_intervals"]
    return sorted(set(n)) if isinstance(n, list) else [n]


def as_list(value):
    return value if isinstance(value, list) else [value]


UNTRAINED = ("none", "linear")  # training-free: the init dir is the model


def net_names():
    """The replacement's directory names: transformer (k = 1), transformerx{k}, ffn, swiglu, none."""
    names = []
    for net in as_list(config["network"]):
        if net == "transformer":
            names += [net if k == 1 else f"{net}x{k}" for k in as_list(config["replacement_layers"])]
        else:
            names.append(net)
    return names


def kept_layers(net_name):
    """k of a net name (transformerx2 -> 2); 1 for the other trainable nets, 0 for none and linear."""
    if net_name in UNTRAINED:
        return 0
    return int(net_name.rpartition("x")[2]) if net_name.startswith("transformerx") else 1


def base_net(net_name):
    return "transformer" if net_name.startswith("transformerx") else net_name


def variants():
    """Variant names per n: the untrained nets as they are ('none'), else '{net}-{loss}', and with
    train.init_from: mse the staged '{net}-mse+{loss}' (llm or kd started from the MSE-trained network)."""
    names = []
    for net in net_names():
        if net in UNTRAINED:
            names.append(net)
            continue
        for loss in as_list(config["loss"]):
            for start in as_list(config["train"]["init_from"]):
                if start == "inherit":
                    names.append(f"{net}-{loss}")
                elif loss != "mse":
                    names.append(f"{net}-mse+{loss}")
    return list(dict.fromkeys(names))


def variant_model(n, variant, m=None):
    base = f"results/{m or model()}/n{n}"
    return f"{base}/{variant}/init" if variant in UNTRAINED else f"{base}/{variant}/model"


def scores_name(k):
    """Block scores by span: n+1 layers (k = 1) in scores.json, n+k in scores_k{k}.json, n (plain removal)
    in removal_scores.json."""
    return "removal_scores" if k == 0 else "scores" if k == 1 else f"scores_k{k}"


def span_of(name, n):
    return n if name == "removal_scores" else n + 1 if name == "scores" else n + int(name.rpartition("_k")[2])


def scores_for(net, m, n):
    return f"results/{m}/n{n}/{scores_name(kept_layers(net))}.json"


def pairs_name(net):
    """Pair stores by k: pairs.zarr (k = 1), pairs_k{k}.zarr."""
    k = kept_layers(net)
    return "pairs" if k == 1 else f"pairs_k{k}"


def accelerate_config():
    """llm.accelerate_config as given if it exists (absolute, or relative to the working dir), else relative
    to the repository (configs/accelerate/... works from any working dir)."""
    path = Path(config["llm"]["accelerate_config"]).expanduser()
    return str(path if path.is_absolute() or path.exists() else Path(workflow.basedir).parent / path)


def eval_data_dir():
    """Offline eval data: eval.data if set, else the folder the fetch_eval_data rule writes; None online."""
    ev = config["eval"]
    if not ev["offline"]:
        return None
    return ev.get("data") or "resources/eval_data/offline"


def baseline_eval(m=None):
    return f"results/{m or model()}/baseline/eval.json"


def baseline_samples(m=None):
    return f"results/{m or model()}/baseline/samples.json.gz"


def variant_dir(n, variant, m=None):
    return f"results/{m or model()}/n{n}/{variant}"


def baseline_gguf(m=None):
    return f"results/{m or model()}/baseline/model.gguf"


def gguf_targets():
    """export.gguf != none: model.gguf (the export) and gguf.json (its llama.cpp perplexity and, for a
    variant, its llama.cpp speedup over the original's export) for the original and every variant."""
    if config["export"]["gguf"] == "none":
        return []
    m = model()
    dirs = [f"results/{m}/baseline"] + [variant_dir(n, v, m) for n in layer_intervals() for v in variants()]
    return [f"{d}/{name}" for d in dirs for name in ("model.gguf", "gguf.json")]


def summary_targets():
    return ["results/summary.json", "results/summary.md", "results/summary.html",
            "results/plots/block_scores.png", "results/plots/training_loss.png", "results/plots/task_accuracy.png",
            "results/plots/pareto.png"]


def all_targets():
    targets = []
    for n in layer_intervals():
        targets += [variant_model(n, v) for v in variants()]
    return targets + gguf_targets() + summary_targets()


# Net and loss names come from the schema's enums (the package's tuples equal them: test_schema_agrees).
TRAINED_NETS = "|".join(r"transformer(x[1-9]\d*)?" if n == "transformer" else n
                        for n in schema_enum("network") if n not in UNTRAINED)
WHOLE_MODEL_LOSSES = "|".join(loss for loss in schema_enum("loss") if loss != "mse")


wildcard_constraints:
    model=r"[A-Za-z0-9._-]+",
    n=r"\d+",
    net=rf"{TRAINED_NETS}|none",
    variant=rf"none|linear|({TRAINED_NETS})-(mse|(mse\+)?({WHOLE_MODEL_LOSSES}))",
