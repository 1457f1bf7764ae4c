"""Run the real Snakefile in a temp dir on a tiny model, and read which rules it plans."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEFILE = ROOT / "workflow" / "Snakefile"


def tiny_config(model_dir: Path, corpus: Path, **overrides) -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.update({
        "model_name": str(model_dir), "model_alias": "tiny", "layer_intervals": 2, "cosine_num_data": 8,
        "train_num_data": 16, "batch_size": 4, "gradient_accumulation_step": 1,
    })
    config["data"] = {"name": "corpus", "source": str(corpus), "text_fields": ["text"], "seq_len": 16,
                      "val_num_data": 4, "pack": True}
    config["extract"] = {"batch_size": 4, "device": "cpu", "writers": 2}
    for key, value in overrides.items():
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
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir), "--cores", "2",
           "--configfile", str(workdir / "config.yaml"), *args]
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
