"""lm-eval's HF backend against streamline's packed scorer (streamline/scorer.py), side by side in one process.

For each task, both scorers run the same lm-eval task (same requests, prompts and metrics) on the same loaded
model, one after the other; the benchmark counts the token positions the model is fed (padding included:
what it computes) with a forward pre-hook, times each run (wall time, and the process's CPU time, which
other jobs on shared cores disturb less), and checks that the packed scorer gives every
option the same log-likelihood (to --tol) and every question the same acc and acc_norm. Exits 1 if not.

Run from the workflow's working dir after `streamline download` and `streamline fetch-eval-data`:
    python benchmarks/eval_scorer.py                      # the default run's seven tasks, limit 20, SmolLM2
    python benchmarks/eval_scorer.py --tasks mmlu --limit 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from streamline.eval_tasks import PAPER_TASKS, TASK_LABELS
from streamline.evaluate import load_for_eval, run_lm_eval
from streamline.layout import EVAL_DATA, Paths


def count_tokens(model) -> list[int]:
    """A one-element counter of the token positions every forward pass of `model` is fed."""
    seen = [0]

    def hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen[0] += int(ids.numel())

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def run(model, tokenizer, task: str, scorer: str, args, seen: list[int]) -> dict:
    start_tokens, t0, c0 = seen[0], time.perf_counter(), time.process_time()
    results, samples, _ = run_lm_eval(
        model,
        tokenizer,
        [task],
        limit=args.limit,
        batch_size=args.batch_size,
        data_dir=Path(args.data),
        device=str(model.device),
        scorer=scorer,
    )
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "tokens": seen[0] - start_tokens,
        "result": results[task],
        "samples": samples[task],
    }


def compare(hf: dict, packed: dict) -> dict:
    """Largest |Δ log-likelihood| over every option of every question, and the questions whose flags differ."""
    diff, flags = 0.0, []
    for q, a in hf["samples"].items():
        b = packed["samples"][q]
        diff = max([diff] + [abs(x - y) for x, y in zip(a.ll, b.ll)])
        if (a.acc, a.acc_norm) != (b.acc, b.acc_norm) or len(a.ll) != len(b.ll):
            flags.append(q)
    same_results = (hf["result"].acc, hf["result"].acc_norm) == (packed["result"].acc, packed["result"].acc_norm)
    return {
        "max_abs_ll_diff": diff,
        "questions_differing": flags,
        "same_acc": same_results and not flags,
        "acc": hf["result"].acc,
        "acc_norm": hf["result"].acc_norm,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=Paths("SmolLM2-135M-Instruct").model_dir, help="HF model dir")
    p.add_argument("--data", default=EVAL_DATA, help="offline eval data (fetch-eval-data)")
    p.add_argument("--tasks", nargs="+", default=PAPER_TASKS)
    p.add_argument("--limit", type=float, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); 1 keeps timings steady on cores other jobs share",
    )
    p.add_argument("--tol", type=float, default=1e-4, help="largest |Δ log-likelihood| accepted")
    p.add_argument("--json", help="also write every figure here")
    args = p.parse_args()
    args.limit = int(args.limit) if args.limit >= 1 else args.limit
    import torch
    from transformers import AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_for_eval(Path(args.model), args.device, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    seen = count_tokens(model)
    for scorer in ("hf", "packed"):  # warm-up: each scorer's one-time costs stay out of the first task's figures
        run(model, tokenizer, args.tasks[0], scorer, argparse.Namespace(**{**vars(args), "limit": 2}), seen)

    rows, ok = {}, True
    for task in args.tasks:
        hf = run(model, tokenizer, task, "hf", args, seen)
        packed = run(model, tokenizer, task, "packed", args, seen)
        check = compare(hf, packed)
        ok &= check["same_acc"] and check["max_abs_ll_diff"] <= args.tol
        rows[task] = {
            "questions": hf["result"].n,
            **{
                f"{k}_{name}": r[k]
                for name, r in (("hf", hf), ("packed", packed))
                for k in ("tokens", "seconds", "cpu_seconds")
            },
            **check,
        }
    total = {
        f"{k}_{s}": sum(r[f"{k}_{s}"] for r in rows.values())
        for k in ("tokens", "seconds", "cpu_seconds")
        for s in ("hf", "packed")
    }

    print(
        f"{args.model} ({args.dtype}, {args.device}, {torch.get_num_threads()} threads), limit {args.limit}, "
        f"batch {args.batch_size}\n"
    )
    print(
        "| task | questions | tokens, hf | tokens, packed | fewer tokens | wall s, hf | wall s, packed | faster "
        "| CPU s, hf | CPU s, packed | less CPU | max abs Δll | acc, acc_norm same |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for task, r in list(rows.items()) + [
        (
            "all",
            {
                **total,
                "questions": sum(r["questions"] for r in rows.values()),
                "max_abs_ll_diff": max(r["max_abs_ll_diff"] for r in rows.values()),
                "same_acc": all(r["same_acc"] for r in rows.values()),
            },
        )
    ]:
        print(
            f"| {TASK_LABELS.get(task, task)} | {r['questions']} | {r['tokens_hf']:,} | {r['tokens_packed']:,} | "
            f"{r['tokens_hf'] / r['tokens_packed']:.2f}x | {r['seconds_hf']:.1f} | {r['seconds_packed']:.1f} | "
            f"{r['seconds_hf'] / r['seconds_packed']:.2f}x | {r['cpu_seconds_hf']:.1f} | {r['cpu_seconds_packed']:.1f} | "
            f"{r['cpu_seconds_hf'] / r['cpu_seconds_packed']:.2f}x | {r['max_abs_ll_diff']:.1e} | "
            f"{'yes' if r['same_acc'] else 'NO'} |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"args": vars(args), "tasks": rows, "total": total},
                indent=1,
                default=lambda o: o.__dict__ if hasattr(o, "__dict__") else str(o),
            )
        )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
