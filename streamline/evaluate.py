"""Zero-shot evaluation with lm-evaluation-harness, plus held-out perplexity, KL to the original and speed.

Offline (the default) the tasks are stock lm-eval tasks read from local files (see eval_tasks.py:
same prompts, choices, targets, metrics and splits as stock lm-eval). Given the original model
(`original_dir`), a pruned model's evaluation also records, on the held-out validation blocks, the
mean per-token KL(original || pruned), and the measured prefill and decode speedup over the original
next to the ideal (speed.py).

Headline metric: plain `acc` for every task. The paper's lm-eval numbers (Llama-3.1-8B averaging
64.0) match the mean of `acc` over the seven tasks; mixing in `acc_norm` for ARC, HellaSwag and
OpenBookQA gives about 69 instead. `acc_norm` is recorded too wherever lm-eval reports it.

The samples file keeps, per question, each option's summed log-likelihood (`ll`, as lm-eval scores
it), its number of continuation tokens (`ntok`, tokenised by lm-eval's own model wrapper), so
stability can put the options on a per-token scale, and its length in characters (`nchar`, lm-eval's
acc_norm divisor), so that every flag can be recomputed from the log-likelihoods (artifacts.Question); for a
generative task (GSM8K), the answer lm-eval's first filter extracted and its exact match (the headline:
`exact_match` under that filter). MMLU's 57 subject tasks are one task here (lm-eval's size-weighted group
mean, its questions numbered across the subjects). lm-eval's model is `scorer.PackedLM` (`scorer="packed"`,
the default) or its own HFLM.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from . import timing
from .artifacts import KL, SAMPLES_FORMAT, Evaluation, Perplexity, Question, Samples, TaskScores
from .errors import StreamlineError
from .model_info import read_info

HEADLINE_METRIC = "acc"


def load_for_eval(model_dir: Path, device: str = "auto", dtype: str = "auto"):
    """Any model dir streamline writes, custom replacement nets included, ready for inference.

    `load_pruned` builds ffn/swiglu variants in-process: plain AutoModelForCausalLM would fall back
    to the base family and leave the replacement slot randomly initialised.
    """
    import torch

    from .loading import resolve_device
    from .pruned import load_pruned

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise StreamlineError(f"{model_dir}: not an HF model dir (missing config.json)")
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    return load_pruned(model_dir, dtype=torch_dtype).to(resolve_device(device)).eval()


# ---------------------------------------------------------------- samples


def _gold_index(task, doc: dict, choices: list[str], where: str) -> int | list[int]:
    """The gold option index (a list of them for multiple-target tasks) exactly as lm-eval's multiple-choice
    process_results derives it; a gold that is not among the choices (lm-eval's -100) is one line."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    golds = [
        choices.index(g) if g in choices else -100 if isinstance(g, str) else int(g)
        for g in (gold if isinstance(gold, list) else [gold])
    ]
    if not all(0 <= g < len(choices) for g in golds):
        raise StreamlineError(
            f"tasks: {where}: lm-eval finds no gold answer among its {len(choices)} choices "
            f"(gold {gold!r}); check the task's data"
        )
    return golds if isinstance(gold, list) else golds[0]


def continuation_tokens(lm, context: str, continuation: str) -> int:
    """How many tokens lm-eval scores for `continuation` after `context` (its loglikelihood's split)."""
    from .scorer import encode_request

    return len(encode_request(lm, context, continuation)[1])


def _question(lm, task, name: str, s: dict) -> Question:
    """One lm-eval sample as a Question: for multiple choice, per option (the conditional ones only, as lm-eval's
    acc takes them) its summed log-likelihood, tokens and characters; for a generative task, the answer its
    filter extracted, or its fallback."""
    if task.OUTPUT_TYPE == "generate_until":
        return Question(
            ll=[], ntok=None, gold=None, acc=bool(s["exact_match"]), acc_norm=None, answer=str(s["filtered_resps"][0])
        )
    choices = task.doc_to_choice(s["doc"])
    options = len(choices)
    return Question(
        ll=[float(r[0]) for r in s["filtered_resps"][:options]],
        ntok=[continuation_tokens(lm, *args) for args in s["arguments"][:options]],
        nchar=[len(c) for c in choices],
        gold=_gold_index(task, s["doc"], choices, f"{name} question {s['doc_id']}"),
        acc=bool(s["acc"]),
        acc_norm=bool(s["acc_norm"]) if "acc_norm" in s else None,
    )


def _task_samples(lm, leaves: dict, samples: dict[str, list[dict]], rows_of: dict[str, int]) -> dict[str, Question]:
    """A task's questions by doc id; a task made of subjects numbers its questions across the subjects (each
    subject's whole split takes the ids after the previous one's), so ids do not depend on the limit.
    `rows_of`: a subject's whole split, where lm-eval was handed only its first rows."""
    out, offset = {}, 0
    for leaf, task in leaves.items():
        rows = samples[leaf]
        headline = rows[0].get("filter", "none")  # a generative task's first filter: stock's strict match
        out.update(
            {
                str(offset + int(s["doc_id"])): _question(lm, task, leaf, s)
                for s in rows
                if s.get("filter", "none") == headline
            }
        )
        offset += rows_of.get(leaf, len(task.eval_docs))
    return out


def _scores(r: dict, n: int, generative: bool) -> TaskScores:
    """lm-eval's numbers for one task (or a group): acc and acc_norm, or exact match under each answer filter."""
    if generative:
        filters = [k.split(",", 1)[1] for k in r if k.startswith("exact_match,")]
        em = {f: _num(r[f"exact_match,{f}"]) for f in filters}
        return TaskScores(
            n=n,
            exact_match=em[filters[0]],
            exact_match_stderr=_num(r.get(f"exact_match_stderr,{filters[0]}")),
            answer_filter=filters[0],
            exact_match_filters=em,
            headline_metric="exact_match",
            headline=em[filters[0]],
        )
    metrics = {}
    for m in ("acc", "acc_norm"):
        if f"{m},none" in r:
            metrics[m], metrics[f"{m}_stderr"] = _num(r[f"{m},none"]), _num(r.get(f"{m}_stderr,none"))
    return TaskScores(n=n, **metrics, headline_metric=HEADLINE_METRIC, headline=metrics.get(HEADLINE_METRIC))


# ---------------------------------------------------------------- lm-eval


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not math.isnan(x) else None


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


SCORERS = ("packed", "hf")


def make_lm(model, tokenizer, batch_size: int, scorer: str = "packed"):
    """lm-eval's model wrapper around a loaded model: `packed` (scorer.PackedLM, one pass per question) or
    `hf` (lm-eval's own HFLM, one pass per option); same requests, same results."""
    from lm_eval.models.huggingface import HFLM

    from .scorer import PackedLM

    if scorer not in SCORERS:
        raise StreamlineError(f"scorer: {scorer!r} is not one of {', '.join(SCORERS)}")
    return (PackedLM if scorer == "packed" else HFLM)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


@contextmanager
def versions_only_env_info():
    """lm-eval's `simple_evaluate` ends by probing the machine (torch's collect_env: pip, conda and nvidia-smi
    subprocesses; ~1 s a call here, more on a cluster node) for a `pretty_env_info` text nothing here reads.
    Within this block it records the library versions only."""
    import lm_eval.evaluator

    probe = lm_eval.evaluator.add_env_info

    def versions(storage: dict) -> None:
        storage.update(lm_eval_version=version("lm_eval"), transformers_version=version("transformers"))

    lm_eval.evaluator.add_env_info = versions
    try:
        yield
    finally:
        lm_eval.evaluator.add_env_info = probe


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    limit,
    batch_size: int,
    data_dir: Path | None,
    device: str,
    scorer: str = "packed",
) -> tuple[dict[str, TaskScores], dict, str | None]:
    """lm-eval on a loaded model: (per-task results, per-question samples, lm-eval version)."""
    import lm_eval

    from .eval_tasks import load_tasks, split_rows

    with tempfile.TemporaryDirectory(prefix="streamline-tasks-") as scratch:
        tm, top, leaves = load_tasks(tasks, data_dir, Path(scratch), limit)
        rows_of = split_rows(tasks, data_dir) if data_dir is not None else {}
        lm = make_lm(model, tokenizer, batch_size, scorer)
        with versions_only_env_info():
            res = lm_eval.simple_evaluate(
                model=lm, tasks=top, task_manager=tm, limit=limit, device=device, log_samples=True
            )
    results, samples = {}, {}
    for name, tasks_of in leaves.items():
        samples[name] = _task_samples(lm, tasks_of, res["samples"], rows_of)
        generative = any(t.OUTPUT_TYPE == "generate_until" for t in tasks_of.values())
        r = res.get("groups", {}).get(name) or res["results"][name]  # a group's size-weighted mean, as stock
        results[name] = _scores(r, len(samples[name]), generative)
    return results, samples, getattr(lm_eval, "__version__", None) or res.get("lm_eval_version")


def evaluate(
    model_dir: Path,
    out_json: Path,
    samples_path: Path,
    *,
    tasks: list[str],
    limit: int | float | None,
    batch_size: int,
    offline_data_dir: Path | None,
    device: str = "auto",
    dtype: str = "auto",
    ppl_data_dir: Path | None = None,
    ppl_split: str = "val",
    original_dir: Path | None = None,
    scorer: str = "packed",
) -> Evaluation:
    """Run lm-eval on an HF model dir; write eval.json and the per-question samples file.

    With `ppl_data_dir`, eval.json also records perplexity on that prepared data dir's `ppl_split`
    blocks; with `original_dir` as well, the KL to the original on those blocks and the speedup.
    """
    from transformers import AutoTokenizer

    from .pruned import count_params

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise StreamlineError(f"{model_dir}: not an HF model dir (missing config.json)")
    if not tasks:
        raise StreamlineError("tasks: empty task list")
    if offline_data_dir is not None:
        from .eval_tasks import check_task_names

        check_task_names(tasks, data_dir=offline_data_dir)  # before any model is loaded
        if not Path(offline_data_dir).is_dir():
            raise StreamlineError(
                f"{offline_data_dir}: offline eval data dir not found (run `streamline fetch-eval-data`)"
            )
    blocks = None
    if ppl_data_dir is not None:
        from .data import load_split

        blocks = [np.asarray(a) for a in load_split(Path(ppl_data_dir), ppl_split)]

    t0 = time.time()
    model = load_for_eval(model_dir, device, dtype)
    results, samples, version = run_lm_eval(
        model,
        AutoTokenizer.from_pretrained(model_dir),
        tasks,
        limit=limit,
        batch_size=batch_size,
        data_dir=offline_data_dir,
        device=str(model.device),
        scorer=scorer,
    )
    Samples(
        format=SAMPLES_FORMAT,
        model_dir=str(model_dir),
        tasks=samples,
        headline_metric={t: r.headline_metric for t, r in results.items()},
    ).write(samples_path)
    held_out = {}
    if blocks is not None:
        original = None
        if original_dir is not None and Path(original_dir).resolve() != model_dir.resolve():
            original = load_for_eval(Path(original_dir), device, dtype)
        held_out = _held_out(model, original, blocks, batch_size, ppl_data_dir, ppl_split, original_dir)
    out = Evaluation(
        model_dir=str(model_dir),
        tasks=list(results),
        limit=limit,
        offline_data_dir=str(offline_data_dir) if offline_data_dir is not None else None,
        splits=_splits(list(results), offline_data_dir),
        device=str(model.device),
        dtype=dtype,
        batch_size=batch_size,
        lm_eval_version=version,
        results=results,
        scorer=scorer,
        average=_mean([r.headline for r in results.values()]),
        average_acc_norm_where_available=_mean(
            [r.headline if r.acc_norm is None else r.acc_norm for r in results.values()]
        ),
        samples_path=str(samples_path),
        num_hidden_layers=int(model.config.num_hidden_layers),
        params=count_params(model),
        streamline=read_info(model_dir) if (model_dir / "streamline.json").is_file() else None,
        **held_out,
        wall_time_s=round(time.time() - t0, 2),
    )
    out.write(out_json)
    return out


def _splits(tasks: list[str], data_dir: Path | None) -> dict[str, str]:
    from .eval_tasks import OFFLINE_TASKS

    if data_dir is None:
        return {t: "lm-eval default" for t in tasks}
    return {t: OFFLINE_TASKS[t].split for t in tasks}


def _held_out(
    model, original, blocks: list[np.ndarray], batch_size: int, data_dir, split: str, original_dir
) -> dict[str, Any]:
    """eval.json's perplexity, kl_to_original and speed entries (the last two need the original)."""
    ids, mask = blocks
    t1 = time.time()
    r = score_blocks(model, ids, mask, batch_size, original=original)
    out: dict[str, Any] = {
        "perplexity": Perplexity(
            value=r["perplexity"],
            data_dir=str(data_dir),
            split=split,
            blocks=int(len(ids)),
            tokens=r["tokens"],
            nll_per_block=r["nll_per_block"],
            tokens_per_block=r["tokens_per_block"],
            wall_time_s=round(time.time() - t1, 2),
        )
    }
    if original is not None:
        from .speed import measure_speedup

        out["kl_to_original"] = KL(value=r["kl"], original=str(original_dir), kl_per_block=r["kl_per_block"])
        out["speed"] = measure_speedup(model, original, ids, min(batch_size, timing.SPEED_BATCH))
    return out


# ---------------------------------------------------------------- perplexity and KL


def perplexity(
    model, input_ids: np.ndarray, attention_mask: np.ndarray, batch_size: int, device: str = "auto", dtype: str = "auto"
) -> float:
    """exp(mean next-token NLL) over all predicted tokens whose target position is unmasked.

    `model` is a loaded model or a model dir (loaded with `load_pruned`, so custom nets work).
    """
    if isinstance(model, (str, os.PathLike)):
        model = load_for_eval(Path(model), device, dtype)
    return score_blocks(model, input_ids, attention_mask, batch_size)["perplexity"]


CHUNK_LOGITS = 2**24  # logits alive at once (64 MB in fp32): 8 x 2048 x 128,256 of them whole would be 8.4 GB


def _log_probs(model, original, ids, mask):
    """((row, positions), fp32 log-probabilities of the next token, the original's or None) for chunks of at most
    CHUNK_LOGITS logits: the base models run once per batch, the LM heads one chunk of positions at a time."""
    import torch

    hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    ref_hidden = (
        None
        if original is None
        else original.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    )
    rows = max(1, CHUNK_LOGITS // model.config.vocab_size)
    for row in range(ids.shape[0]):
        for start in range(0, ids.shape[1] - 1, rows):
            pos = slice(start, min(start + rows, ids.shape[1] - 1))
            logp = torch.log_softmax(model.get_output_embeddings()(hidden[row, pos]).float(), -1)
            ref = (
                None
                if original is None
                else torch.log_softmax(original.get_output_embeddings()(ref_hidden[row, pos]).float(), -1)
            )
            yield (row, pos), logp, ref


def score_blocks(
    model, input_ids: np.ndarray, attention_mask: np.ndarray, batch_size: int, original=None
) -> dict[str, Any]:
    """Next-token NLL per block, perplexity, and (with `original`) per-token KL(original || model).

    Both are taken over the predicted positions whose target is unmasked; the KL is the full-vocabulary
    sum_v p_orig(v) (log p_orig(v) - log p_model(v)) at each such position, in nats.
    """
    import torch

    from .data import check_token_ids

    if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
        raise StreamlineError(
            f"input_ids: shape {input_ids.shape} does not match attention_mask {attention_mask.shape}"
        )
    check_token_ids(input_ids, model.config.vocab_size, "the held-out blocks")
    from . import progress

    nll, kl, tokens = [], [], []
    what = "held-out perplexity and KL" if original is not None else "held-out perplexity"
    with torch.no_grad(), progress.bar(total=len(input_ids), desc=what, unit="block") as bar:
        for i in range(0, len(input_ids), batch_size):
            # np.array copies: the blocks may be read-only memory maps.
            ids = torch.from_numpy(np.array(input_ids[i : i + batch_size], dtype=np.int64)).to(model.device)
            mask = torch.from_numpy(np.array(attention_mask[i : i + batch_size], dtype=np.int64)).to(model.device)
            keep = mask[:, 1:].bool()
            tokens += keep.sum(1).tolist()
            block_nll = torch.zeros(len(ids), dtype=torch.float64, device=model.device)
            block_kl = torch.zeros_like(block_nll)
            for (row, pos), logp, ref in _log_probs(model, original, ids, mask):
                block_nll[row] -= (logp.gather(-1, ids[row, 1:][pos, None])[:, 0] * keep[row, pos]).double().sum()
                if ref is not None:
                    per_pos = torch.nn.functional.kl_div(logp, ref, log_target=True, reduction="none").sum(-1)
                    block_kl[row] += (per_pos * keep[row, pos]).double().sum()
            nll += block_nll.tolist()
            if original is not None:
                kl += block_kl.tolist()
            bar.update(len(ids))
    count = int(sum(tokens))
    if count == 0:
        raise StreamlineError("attention_mask: no unmasked tokens to score")
    bad = [i for i, x in enumerate(nll) if not (math.isfinite(x) and math.isfinite(kl[i] if kl else 0.0))]
    if bad:  # an overflow (fp16 activations) or broken weights: a NaN perplexity must not reach the table
        raise StreamlineError(
            f"perplexity: the model's log-likelihood is not finite on {len(bad)} of "
            f"{len(input_ids)} blocks (NaN/inf logits); evaluate in float32 or bfloat16"
        )
    return {
        "perplexity": math.exp(sum(nll) / count),
        "tokens": count,
        "nll_per_block": nll,
        "tokens_per_block": [int(t) for t in tokens],
        "kl": sum(kl) / count if original is not None else None,
        "kl_per_block": kl if original is not None else None,
    }


# --- the commands: streamline evaluate, streamline perplexity -----------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .arguments import DTYPES, SPLITS, limit
    from .eval_tasks import PAPER_TASKS

    p.add_argument("--model", required=True, help="HF model dir (any variant streamline writes)")
    p.add_argument("--out", required=True, help="eval.json")
    p.add_argument("--samples", required=True, help="per-question samples (.json or .json.gz), for stability")
    p.add_argument("--tasks", nargs="+", default=PAPER_TASKS, help="lm-eval tasks (offline: the seven, mmlu, gsm8k)")
    p.add_argument("--limit", type=limit, default=None, help="questions per task: a count, a fraction, or none")
    p.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size (packed: rows of packed questions)")
    p.add_argument(
        "--scorer",
        choices=["packed", "hf"],
        default="packed",
        help="packed: each question's options in one pass (same results); hf: lm-eval's HF backend",
    )
    p.add_argument("--data-dir", help="offline eval data (from fetch-eval-data); omit to let lm-eval fetch data")
    p.add_argument("--ppl-data", help="prepared data dir whose blocks give the perplexity")
    p.add_argument("--ppl-split", default="val", choices=SPLITS, help="the split of --ppl-data")
    p.add_argument("--original", help="the original model dir: adds KL to it and the measured speedup over it")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: the model's own")


def run(a: argparse.Namespace) -> None:
    evaluate(
        Path(a.model),
        Path(a.out),
        Path(a.samples),
        tasks=a.tasks,
        limit=a.limit,
        batch_size=a.batch_size,
        offline_data_dir=Path(a.data_dir) if a.data_dir else None,
        device=a.device,
        dtype=a.dtype,
        scorer=a.scorer,
        ppl_data_dir=Path(a.ppl_data) if a.ppl_data else None,
        ppl_split=a.ppl_split,
        original_dir=Path(a.original) if a.original else None,
    )


def add_perplexity_arguments(p: argparse.ArgumentParser) -> None:
    from .arguments import DTYPES, SPLITS

    p.add_argument("--model", required=True, help="HF model dir")
    p.add_argument("--data", required=True, help="prepared data dir (resources/data/...)")
    p.add_argument("--split", default="val", choices=SPLITS, help="the split of --data")
    p.add_argument("--batch-size", type=int, default=8, help="blocks per forward pass")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: the model's own")
    p.add_argument("--out", help="also write the result as JSON")


def run_perplexity(a: argparse.Namespace) -> None:
    import json

    from .atomic import atomic_write_json
    from .data import load_split

    ids, mask = load_split(Path(a.data), a.split)
    ppl = perplexity(a.model, np.asarray(ids), np.asarray(mask), a.batch_size, device=a.device, dtype=a.dtype)
    result = {"model_dir": a.model, "data_dir": a.data, "split": a.split, "blocks": int(len(ids)), "perplexity": ppl}
    if a.out:
        atomic_write_json(a.out, result)
    print(json.dumps(result))
