"""Held-out quality of pruned variants next to the original: perplexity and mean per-token KL(original || pruned)
on the validation blocks, with what each variant cost (training tokens, wall time, peak RSS of its training).

Run after the workflow, from its working dir; variants are model dirs relative to results/{model}/n{n}/, or
variant names (a variant pruned in rounds, transformer-mse-r3, is its last round's model, its cost the rounds' sum):
    python benchmarks/quality.py --variants none/init transformer-mse/model transformerx2-mse/model ...
    python benchmarks/quality.py --n 12 --variants transformer-mse transformer-mse-r3
The intervals are 95%, a bootstrap over the held-out blocks (as the report's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from streamline import data
from streamline.artifacts import EstimateLog, TrainLog
from streamline.evaluate import load_for_eval, score_blocks
from streamline.layout import Paths, Variant
from streamline.pruned import count_params
from streamline.stats import block_ratio_interval


def cost(model_dir: Path, rounds: list[Path] = ()) -> dict:
    """What the variant's training (or estimate) recorded: tokens, seconds, peak RSS; for a variant pruned in
    rounds (`rounds`: their dirs), the rounds' seconds summed, and their training tokens summed (a linear map's
    calibration tokens are the same blocks in every round: counted once)."""
    dirs = rounds or [model_dir.parent]
    logs = [TrainLog.load(d / "train_log.json", "train log") for d in dirs if (d / "train_log.json").is_file()]
    if logs:
        return {
            "tokens": sum(t.train_tokens for t in logs),
            "seconds": sum(t.seconds for t in logs),
            "rss": max(t.peak_rss_mb for t in logs),
            "kept": "/".join(t.kept for t in logs),
        }
    estimate_logs = [d / "estimate_log.json" for d in dirs]
    if all(f.is_file() for f in estimate_logs):
        estimates = [EstimateLog.load(f, "estimate log") for f in estimate_logs]
        return {"tokens": estimates[0].tokens, "seconds": sum(e.seconds for e in estimates), "rss": None, "kept": "-"}
    return {"tokens": None, "seconds": None, "rss": None, "kept": "-"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--data", default="lambada")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--variants", nargs="+", default=["none/init", "transformer/init", "transformer-mse/model"])
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    paths = Paths(args.model, args.n)
    ids, mask = (np.asarray(a) for a in data.load_split(paths.data_dir(args.data), "val"))
    original = load_for_eval(Path(paths.model_dir), "cpu")
    base = score_blocks(original, ids, mask, args.batch_size)
    print(f"held-out: {len(ids)} blocks of {ids.shape[1]} tokens ({base['tokens']} predicted tokens)\n")
    print(
        "| variant | layers | params | val perplexity [95%] | KL to original [95%] | train tokens | wall time "
        "| peak RSS | kept |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    print(
        f"| original | {original.config.num_hidden_layers} | {count_params(original) / 1e6:.1f}M | "
        f"{base['perplexity']:.2f} | 0 | – | – | – | – |"
    )
    for variant in args.variants:
        path, rounds = Path(paths.base) / variant, []
        if "/" not in variant:  # a variant's name
            v = Variant.parse(variant)
            path = Path(paths.model_out(v))
            rounds = [Path(r.base) for r in paths.rounds(v)] if v.rounds > 1 else []
        if not path.exists():
            print(f"| {variant} | (missing) | | | | | | | |")
            continue
        model = load_for_eval(path, "cpu")
        r = score_blocks(model, ids, mask, args.batch_size, original=original)
        c = cost(path, rounds)
        ppl = block_ratio_interval(r["nll_per_block"], r["tokens_per_block"], transform=np.exp)
        kl = block_ratio_interval(r["kl_per_block"], r["tokens_per_block"])
        fmt = lambda v, f: "–" if v is None else f.format(v)  # noqa: E731
        print(
            f"| {variant.split('/')[0]} | {model.config.num_hidden_layers} | {count_params(model) / 1e6:.1f}M | "
            f"{r['perplexity']:.2f} [{ppl[0]:.1f}, {ppl[1]:.1f}] | {r['kl']:.3f} [{kl[0]:.3f}, {kl[1]:.3f}] | "
            f"{fmt(c['tokens'], '{:,}')} | {fmt(c['seconds'], '{:.0f} s')} | {fmt(c['rss'], '{:.0f} MB')} | "
            f"{c['kept']} |"
        )


if __name__ == "__main__":
    main()
