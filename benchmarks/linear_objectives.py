"""network: linear, its objectives (lstsq, balanced, ReplaceMe's cosine), measured in one run on the same states.

From the workflow's working dir of a default run (its model, its data, its calibration store; read only), into a
scratch dir: the removal scores (windows of n), the estimate's states for the calibration blocks, then one folded
model per objective, each scored on the held-out val blocks (perplexity, KL to the original) and on the offline
lm-eval tasks at --limit questions each. The cosine rows are ReplaceMe's settings (Adam lr 1e-4, 10 epochs,
1024-token batches) from the least-squares map, and, with --extra, more steps at a larger lr; the balanced rows are
the least squares with the outlier tokens held to each --shares of the fit.

    python benchmarks/linear_objectives.py --workdir /path/to/run [--n 8] [--limit 20] [--extra 1e-3:50] \
        [--shares 0.5 0.3] [--start 4]      # --start: the block at that layer instead of the best window
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from streamline import data
from streamline.eval_tasks import PAPER_TASKS
from streamline.evaluate import load_for_eval, run_lm_eval, score_blocks
from streamline.layout import EVAL_DATA, Paths, scores_name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=".", help="a default run's working dir: its model, data, calibration store")
    p.add_argument("--scratch", help="where the scores, states and models go (default: a new temp dir)")
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--data", default="lambada")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--limit", type=int, default=20, help="questions per task")
    p.add_argument("--extra", nargs="*", default=["1e-3:50"], help="more cosine rows, as lr:epochs")
    p.add_argument("--shares", nargs="*", type=float, default=[0.5], help="balanced rows: the outliers' shares")
    p.add_argument("--start", type=int, help="the block's first layer (default: the scores' best window)")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    from streamline.linear import estimate_linear, extract_linear_states
    from streamline.score import score

    work = Path(args.workdir)
    paths = Paths(args.model, args.n)
    model, data_dir = work / paths.model_dir, work / paths.data_dir(args.data)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="linear-objectives-"))
    scratch.mkdir(parents=True, exist_ok=True)
    scores = scratch / f"{scores_name(0)}.json"
    if not scores.is_file():
        score(work / paths.calibration_store, args.n, scores, None, span=args.n)  # the store dir: read only
    if args.start is not None:
        from gpu_rehearsal import block_at

        moved = scratch / f"{scores_name(0)}_at{args.start}.json"
        block_at(scores, moved, args.start)
        scores = moved
    states = scratch / f"linear_states_{json.loads(scores.read_text())['best_start']}.json"
    if not states.is_file():
        extract_linear_states(model, data_dir, scores, states.with_suffix(".zarr"), manifest=states, device="cpu")
    rows = [("lstsq", {"objective": "lstsq"})]
    rows += [(f"balanced (outlier share {x:g})", {"objective": "balanced", "outlier_share": x}) for x in args.shares]
    rows.append(("cosine (ReplaceMe: lr 1e-4, 10 epochs)", {"objective": "cosine"}))
    for spec in args.extra:
        lr, epochs = spec.split(":")
        rows.append(
            (f"cosine (lr {lr}, {epochs} epochs)", {"objective": "cosine", "lr": float(lr), "epochs": int(epochs)})
        )

    ids, mask = (np.asarray(a) for a in data.load_split(data_dir, "val"))
    original = load_for_eval(model, "cpu")
    base = score_blocks(original, ids, mask, args.batch_size)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    offline = work / EVAL_DATA
    results = []
    for name, kwargs in rows:
        row = (
            "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
            + f"-at{json.loads(scores.read_text())['best_start']}"
        )
        out = scratch / f"model-{row}"  # a rerun with the same scratch reuses the rows it has
        log_json = scratch / f"estimate-{row}.json"
        if not log_json.is_file():
            estimate_linear(model, states, scores, out, log_json=log_json, **kwargs)
        est = json.loads(log_json.read_text())
        t0 = time.time()
        m = load_for_eval(out, "cpu")
        held = score_blocks(m, ids, mask, args.batch_size, original=original)
        tasks, _, _ = run_lm_eval(
            m, tokenizer, PAPER_TASKS, limit=args.limit, batch_size=args.batch_size, data_dir=offline, device="cpu"
        )
        acc = {t: r.headline if r.headline is not None else r.acc for t, r in tasks.items()}
        results.append(
            {
                "variant": name,
                **{
                    k: est[k]
                    for k in (
                        "objective",
                        "outlier_tokens",
                        "steps",
                        "relative_residual",
                        "relative_residual_of_identity",
                        "cosine_distance",
                        "cosine_distance_of_identity",
                        "estimate_seconds",
                    )
                },
                "ppl": held["perplexity"],
                "kl": held["kl"],
                "tasks": acc,
                "average": float(np.mean(list(acc.values()))),
                "eval_seconds": round(time.time() - t0, 1),
            }
        )
        print(json.dumps(results[-1]), flush=True)

    print(
        f"\nSmolLM2 n = {args.n}, {est['tokens']:,} calibration tokens, block {est['block'][0]}..{est['block'][-1]}; "
        f"held-out: {len(ids)} val blocks ({base['tokens']} predicted tokens, original ppl {base['perplexity']:.2f}); "
        f"{len(PAPER_TASKS)} tasks x {args.limit} questions\n"
    )
    print(
        "| objective | Adam steps | relative residual | cosine distance | val ppl | KL | 7-task acc | "
        + " | ".join(PAPER_TASKS)
        + " |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(PAPER_TASKS))
    first = results[0]
    print(
        f"| (identity map) | – | {first['relative_residual_of_identity']:.4f} | "
        f"{first['cosine_distance_of_identity']:.4f} | | | |" + " |" * len(PAPER_TASKS)
    )
    for r in results:
        print(
            f"| {r['variant']} | {r['steps']} | {r['relative_residual']:.4f} | {r['cosine_distance']:.4f} | "
            f"{r['ppl']:.1f} | {r['kl']:.3f} | {100 * r['average']:.1f} | "
            + " | ".join(f"{100 * r['tasks'][t]:.0f}" for t in PAPER_TASKS)
            + " |"
        )
    print(f"\nscratch: {scratch}")


if __name__ == "__main__":
    main()
