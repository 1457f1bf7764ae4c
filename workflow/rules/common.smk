# Paths and input helpers shared by the rules. Every path of the artifact contract is here.
import os
from pathlib import Path

import streamline
from streamline.download import model_slug

PACKAGE = Path(streamline.__file__).parent


def code(*modules):
    """A stage's own modules as inputs: editing one reruns that stage and what follows (mtime)."""
    return [str(PACKAGE / m) for m in modules]


def torch_threads():
    """Threads for a stage that runs torch (Snakemake exports them as OMP_NUM_THREADS; with no threads
    directive that is 1, and torch would compute on one core). Inside a Slurm job: the CPUs sbatch gave
    it (cpus_per_task in the profile). Elsewhere: every core Snakemake may use."""
    return int(os.environ.get("SLURM_CPUS_PER_TASK") or workflow.cores)


def model():
    return config.get("model_alias") or model_slug(config["model_name"])


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


def variants():
    """Variant names per n: 'none' (plain removal, untrained) or '{net}-{loss}'."""
    names = []
    for net in as_list(config["network"]):
        names += ["none"] if net == "none" else [f"{net}-{loss}" for loss in as_list(config["loss"])]
    return names


def variant_model(n, variant, m=None):
    base = f"results/{m or model()}/n{n}"
    return f"{base}/none/init" if variant == "none" else f"{base}/{variant}/model"


def scores_for(net, m, n):
    """Replacement scores blocks of n+1 layers; plain removal scores windows of n."""
    return f"results/{m}/n{n}/{'removal_scores' if net == 'none' else 'scores'}.json"


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


def summary_targets():
    return ["results/summary.json", "results/summary.md", "results/summary.html",
            "results/plots/block_scores.png", "results/plots/training_loss.png", "results/plots/task_accuracy.png"]


def all_targets():
    targets = expand("results/{model}/n{n}/scores.json", model=model(), n=layer_intervals())
    for n in layer_intervals():
        targets += [variant_model(n, v) for v in variants()]
    return targets + summary_targets()


wildcard_constraints:
    model=r"[A-Za-z0-9._-]+",
    n=r"\d+",
    net=r"transformer|ffn|swiglu|none",
