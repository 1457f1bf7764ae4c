"""Fixtures shared by every test: tiny models (built with the helpers in tiny.py), data dirs, one workflow run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from tiny import CORPUS, build_tiny_model, build_tokenizer, make_data_dir, sequences
from transformers import AutoModelForCausalLM


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A command run in-process (streamline.cli.main) sets the root logger up on the stderr pytest captured
    for that test; put the handlers back after it, so no later test logs into a closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:], root.level = handlers, level


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory) -> Path:
    return build_tiny_model("opt", tmp_path_factory.mktemp("tiny") / "tiny-opt")


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A local jsonl corpus large enough for calibration, train and validation blocks."""
    import json

    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w") as f:
        for i in range(400):
            f.write(json.dumps({"text": f"document {i} : " + CORPUS[i % len(CORPUS)]}) + "\n")
    return path


@pytest.fixture(scope="session")
def trained_llama_dir(tmp_path_factory) -> Path:
    """The tiny Llama after 120 steps on arithmetic sequences (next-token loss 6.4 -> ~0.6): a model that
    knows something, so that removing layers hurts it and healing can measurably help."""
    import numpy as np

    out = build_tiny_model("llama", tmp_path_factory.mktemp("trained") / "trained-llama")
    model = AutoModelForCausalLM.from_pretrained(out)
    torch.manual_seed(0)
    x = torch.from_numpy(sequences(np.random.default_rng(123), 2000, 16, 300, "arithmetic").astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(120):
        batch = x[torch.randint(0, len(x), (32,))]
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    return out


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return make_data_dir(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory, tiny_llama_dir, text_corpus):
    """The whole DAG run once on the tiny Llama (variants: plain removal and an ffn net), shared by the
    workflow tests; tests that change config.yaml must restore it (see workflow_utils). Each job records the
    files it opens (streamline/audit.py) into the third element, for the declared-inputs test."""
    from workflow_utils import make_eval_data, snakemake, tiny_config, write_config

    eval_data = make_eval_data(tmp_path_factory.mktemp("eval_data"))
    config = tiny_config(tiny_llama_dir, text_corpus, eval_data=eval_data, network=["none", "ffn"])
    workdir, audit = tmp_path_factory.mktemp("workflow"), tmp_path_factory.mktemp("audit")
    write_config(workdir, config)
    snakemake(workdir, env={"STREAMLINE_AUDIT": str(audit)})
    return workdir, config, audit
