# Paths and input helpers shared by the rules. Every path of the artifact contract is here.
import os
import sys
from functools import lru_cache
from pathlib import Path

from streamline.config import resolve_accelerate_config
from streamline.download import model_slug
from streamline.layout import PAIRS_RE, PLOTS, PLOTS_DIR, REPLACED_RE, SCORES_RE, SUMMARY, Paths, Variant, kept_of
from streamline.layout import CHAIN_RE, K_RE, RoundPaths, round_sizes
from streamline.layout import CACHE, EVAL_DATA, FETCH_EVAL_LOG, REPORT_LOG, SOURCE_IDENTITY, VALIDATED_CONFIG
from streamline.layout import (
    WHOLE_MODEL_LOSSES,
    NETWORK_ALONE_LOSSES,
    pairs_name,
    parse_replacement,
    scores_name,
    variant_pattern,
)
from streamline.layout import variants as layout_variants
from streamline.errors import StreamlineError
from streamline.plan import check_jobs, model_fields, planner_for
from streamline.training.settings import train_budget, workflow_flags
from streamline.versions import VERSIONS
from streamline.weights import source_identity


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
    return (
        [str(path)]
        if path.is_file()
        else [str(f) for f in sorted(path.iterdir()) if f.is_file() and not f.name.startswith(".")]
    )


def model_source_identity():
    """The content of a local model_name (hashed only when a file's stat changed): a param of the download, so a
    checkpoint swapped in place by `cp -a` (old mtimes kept) still reruns it."""
    files = model_source_files()
    return source_identity(files, SOURCE_IDENTITY) if files else ""


def model_dir(m=None):
    return paths(m).model_dir


def paths(m=None, n="{n}"):
    """Every artifact's path (streamline/layout.py): the one place paths are spelled."""
    return Paths(m or model(), n)


def data_dir(m=None):
    return paths(m).data_dir(config["data"]["name"])


def scores_input(m, n, name):
    """A block-scores file as the input of what depends on it (early cutoff). `score` is a checkpoint: when a
    rerun of it (its version bumped, its store rebuilt) writes the very bytes that were there, Snakemake
    re-evaluates the jobs behind it after it finishes, finds the file's checksum equal to the one they recorded,
    and does not rerun them. (A dry run cannot know the bytes in advance, so it lists them.) A file not written
    yet is a plain input, so a dry run of a fresh workflow still shows every job."""
    path = paths(m, n).scores(name)
    if not os.path.exists(path):
        return path
    return checkpoints.score.get(model=m, n=str(n), scores=name).output.scores


def block_of(w):
    """The scores that picked a variant's block, as an input of each job working on the variant; each is
    then a direct dependent of the `score` checkpoint, and Snakemake's re-evaluation after it (which reaches
    direct dependents only) cuts off the whole chain, not just its first rule. (For a variant pruned in rounds:
    its last round's scores.)"""
    v = Variant.parse(w.variant)
    if v.rounds > 1:
        return paths(w.model, w.n).last_round(v).scores
    return scores_input(w.model, w.n, scores_name(v.k))


def layer_intervals():
    n = config["layer_intervals"]
    return sorted(set(n)) if isinstance(n, list) else [n]


def as_list(value):
    return value if isinstance(value, list) else [value]


def variants():
    """The config's variants (layout.variants): each net x k x loss x start x rounds, in config order."""
    return layout_variants(
        as_list(config["network"]),
        as_list(config["replacement_layers"]),
        as_list(config["loss"]),
        as_list(config["train"]["init_from"]),
        as_list(config["prune"]["rounds"]),
    )


def accelerate_config():
    """llm.accelerate_config (config.resolve_accelerate_config), relative to the working dir unless given absolute."""
    value = config["llm"]["accelerate_config"]
    path = resolve_accelerate_config(value, Path(workflow.basedir).parent)
    return str(path) if Path(value).expanduser().is_absolute() else os.path.relpath(path)


def user_eval_files():
    """What the user saved for the offline tasks that no wheel holds (gsm8k's train split), where eval.tasks
    needs it: a change to it refetches the eval data."""
    from streamline.eval_tasks import user_files

    return [str(f) for f in user_files(config["eval"]["tasks"])] if config["eval"]["offline"] else []


def eval_data_dir():
    """Offline eval data: eval.data if set, else the folder the fetch_eval_data rule writes; None online."""
    ev = config["eval"]
    if not ev["offline"]:
        return None
    return ev.get("data") or EVAL_DATA


def gguf_targets():
    """export.gguf != none: model.gguf (the export) and gguf.json (its llama.cpp perplexity and, for a
    variant, its llama.cpp speedup over the original's export) for the original and every variant."""
    if config["export"]["gguf"] == "none":
        return []
    p0 = paths()
    targets = [p0.baseline_gguf, p0.baseline_gguf_check]
    for n in layer_intervals():
        targets += [f(v.name) for v in variants() for f in (paths(n=n).gguf, paths(n=n).gguf_check)]
    return targets


def summary_targets():
    return list(SUMMARY.values()) + [f"{PLOTS_DIR}/{name}" for name in PLOTS.values()]


def all_targets():
    return [paths(n=n).model_out(v) for n in layer_intervals() for v in variants()] + gguf_targets() + summary_targets()


# --- the resource plan (streamline/plan.py; `streamline plan` prints it) -----------------------------------------


@lru_cache(maxsize=1)
def planner():
    """This config's resource plan, made when the first job's resources are asked for (by then Snakemake knows
    its executor: on a cluster the GPU stages are planned on GPUs); None while the model's shapes are unknown."""
    return planner_for(config, model_dir(), device=None if workflow.local_exec else "cuda")


@lru_cache(maxsize=1)
def shapes_known():
    return model_fields(config["model_name"], model_dir()) is not None


ROUND_RULES = {  # a round's job is planned as its one-block counterpart's (on the original's shapes: an upper bound)
    "round_calibration": "extract_calibration",
    "round_score": "score",
    "round_replace": "replace",
    "round_pairs": "extract_pairs",
    "round_train_mse": "train_mse",
    "round_train_end_to_end": "train_end_to_end",
}


def job_need(rule, wildcards):
    if "chain" in wildcards.keys():
        stage, v = ROUND_RULES.get(rule, rule), Variant.parse(wildcards.variant)
        name = {"score": scores_name(v.k), "replace": v.replacement, "extract_pairs": pairs_name(v.k)}
        return planner().need(stage, round_of(wildcards).sizes[-1], name.get(stage, v.name))
    n = int(wildcards.n) if "n" in wildcards.keys() else None
    name = next((wildcards[k] for k in ("variant", "net", "scores", "pairs") if k in wildcards.keys()), None)
    return planner().need(rule, n, name)


def planned(rule, **unplanned):
    """A rule's resources, per job, from the resource plan: mem_mb, disk_mb, runtime (minutes) and gpu (GPUs:
    processes for train_end_to_end). While the model's shapes are unknown: `unplanned` and the profile's sizes."""
    if not shapes_known():
        return unplanned
    return {
        key: (lambda wildcards, key=key: job_need(rule, wildcards).resources()[key])
        for key in ("mem_mb", "disk_mb", "runtime", "gpu")
    }


def check_plan_fits():
    """Before any job runs (the Snakefile's onstart): every job still to run must fit this machine's RAM (or
    --resources mem_mb) and the jobs together the free disk; else one line naming the job and the key to change."""
    if planner() is None:
        return
    limit = workflow.global_resources.get("mem_mb")
    try:
        check_jobs(
            [
                (" ".join([job.rule.name, *job.wildcards]), job_need(job.rule.name, job.wildcards))
                for job in workflow.dag.needrun_jobs()
                if job.rule.name != "all"
            ],
            ram=limit.value * 1e6 if limit is not None and limit.value is not None else None,
            check_ram=workflow.local_exec,
        )
    except StreamlineError as e:
        sys.stderr.write(f"plan error: {e}\n")
        sys.exit(1)


# --- the inputs of the training, evaluation and report rules ----------------------------------------------


def train_inputs(w):
    """The init dir (the untrained replacement, or for a staged run the MSE-trained model), the data, the
    original model (the teacher, or the online pairs' prefix) and, for MSE on stored pairs, the pair store (not
    for a linear patch: its pairs are computed online)."""
    v, p = Variant.parse(w.variant), paths(w.model, w.n)
    inputs = {
        "init": p.model_out(v.upstream) if v.upstream else p.init(v.replacement),
        "data": data_dir(w.model),
        "model": model_dir(w.model),
    }
    if v.stored_pairs and config["pairs"]["mode"] == "store":
        inputs["pairs"] = p.pairs(pairs_name(v.k))
    return inputs


# --- pruning in rounds (rounds.smk): round i starts from round i-1's model, round 1 from the original -----------


def round_of(w):
    return RoundPaths(w.model, w.r, w.variant, w.chain)


def round_start(w):
    """The model a round prunes: the previous round's, or the original for round 1."""
    previous = round_of(w).previous
    return previous.model_dir if previous else model_dir(w.model)


def round_start_calibration(w):
    """The calibration store of the model a round prunes (its block scores are computed from it)."""
    previous = round_of(w).previous
    return previous.calibration if previous else paths(w.model).calibration


def round_blocks(w):
    """The round's share of the training blocks: the rounds together train on what one block's run would."""
    v = Variant.parse(w.variant)
    return round_sizes(train_budget(config, v.loss or "mse"), int(w.r))[round_of(w).index - 1]


def round_train_inputs(w):
    """As train_inputs, for a round: its replacement, the model it prunes (the teacher), and its pairs."""
    v, rp = Variant.parse(w.variant), round_of(w)
    inputs = {"init": rp.init, "data": data_dir(w.model), "model": round_start(w)}
    if v.stored_pairs and config["pairs"]["mode"] == "store":
        inputs["pairs"] = rp.pairs
    return inputs


def eval_inputs(model_path, m):
    inputs = {"model": model_path, "data": data_dir(m)}
    if eval_data_dir():
        inputs["eval_data"] = eval_data_dir()
    return inputs


def report_manifest():
    """The baseline's files, one row per variant (its files, with its log: train_log.json for trained variants,
    estimate_log.json for the linear estimate, none for plain removal) and the block-score files behind the
    variants, to plot. Every file named here is an input of the rule: an edit of any reruns the report."""
    p0, gguf = paths(), config["export"]["gguf"] != "none"
    rows = []
    for n in layer_intervals():
        p = paths(n=n)
        for v in variants():
            rows.append(
                {
                    "name": v.name,
                    "eval": p.eval(v.name),
                    "samples": p.samples(v.name),
                    "stability": p.stability(v.name),
                    "train_log": (
                        (p.last_round(v).train_log if v.rounds > 1 else p.train_log(v.name)) if v.trained else None
                    ),
                    # (a linear variant in rounds: each round's estimate is in its round's dir; none sums them)
                    "estimate_log": (
                        p.estimate_log(v.name) if v.net == "linear" and not v.trained and v.rounds == 1 else None
                    ),
                    "gguf": p.gguf_check(v.name) if gguf else None,
                }
            )
            if v.rounds > 1:  # each round's block scores and training, for the report's rounds table
                rows[-1]["rounds"] = [
                    {"scores": rp.scores, "train_log": rp.train_log if v.trained else None} for rp in p.rounds(v)
                ]
    scores = sorted(
        {paths(n=n).scores(scores_name(v.k)) for n in layer_intervals() for v in variants() if v.rounds == 1}
    )
    return {
        "baseline": {
            "name": model(),
            "eval": p0.baseline_eval,
            "samples": p0.baseline_samples,
            "gguf": p0.baseline_gguf_check if gguf else None,
        },
        "rows": rows,
        "scores": scores,
    }


def report_inputs(wildcards):
    m = report_manifest()
    inputs = {"baseline_eval": m["baseline"]["eval"], "baseline_samples": m["baseline"]["samples"]}
    for i, row in enumerate([m["baseline"], *m["rows"]]):
        inputs.update(
            {
                f"row{i}_{kind}": row[kind]
                for kind in ("eval", "samples", "stability", "train_log", "estimate_log", "gguf")
                if row.get(kind)
            }
        )
        for j, rnd in enumerate(row.get("rounds", [])):
            inputs.update({f"row{i}_round{j}_{kind}": path for kind, path in rnd.items() if path})
    names = sorted({(n, scores_name(v.k)) for n in layer_intervals() for v in variants() if v.rounds == 1})
    for i, (n, name) in enumerate(names):
        inputs[f"scores{i}"] = scores_input(model(), n, name)
    return inputs
