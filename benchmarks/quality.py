"""Held-out quality of pruned variants next to the original: perplexity and mean per-token KL(original || pruned)
on the validation blocks, with what each variant cost (training tokens, wall time, peak RSS of its training).

Run after the workflow, from its working dir; variants are model dirs relative to results/{model}/n{n}/:
    python benchmarks/quality.py --variants none/init transformer-mse/model transformerx2-mse/model ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from streamline import data
from streamline.artifacts import EstimateLog, TrainLog
from streamline.evaluate import load_for_eval, score_blocks
from streamline.layout import Paths
from streamline.pruned import count_params


def cost(model_dir: Path) -> dict:
    """What the variant's training (or estimate) recorded: tokens, seconds, peak RSS."""
    train_log, estimate_log = model_dir.parent / "train_log.json", model_dir.parent / "estimate_log.json"
    if train_log.is_file():
        t = TrainLog.load(train_log, "train log")
        return {"tokens": t.train_tokens, "seconds": t.seconds, "rss": t.peak_rss_mb, "kept": t.kept}
    if estimate_log.is_file():
        e = EstimateLog.load(estimate_log, "estimate log")
        return {"tokens": e.tokens, "seconds": e.seconds, "rss": None, "kept": "-"}
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
        "| variant | layers | params | val perplexity | KL to original | train tokens | wall time | peak RSS | kept |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    print(
        f"| original | {original.config.num_hidden_layers} | {count_params(original) / 1e6:.1f}M | "
        f"{base['perplexity']:.2f} | 0 | – | – | – | – |"
    )
    for variant in args.variants:
        path = Path(paths.base) / variant
        if not path.exists():
            print(f"| {variant} | (missing) | | | | | | | |")
            continue
        model = load_for_eval(path, "cpu")
        r = score_blocks(model, ids, mask, args.batch_size, original=original)
        c = cost(path)
        fmt = lambda v, f: "–" if v is None else f.format(v)  # noqa: E731
        print(
            f"| {variant.split('/')[0]} | {model.config.num_hidden_layers} | {count_params(model) / 1e6:.1f}M | "
            f"{r['perplexity']:.2f} | {r['kl']:.3f} | {fmt(c['tokens'], '{:,}')} | {fmt(c['seconds'], '{:.0f} s')} | "
            f"{fmt(c['rss'], '{:.0f} MB')} | {c['kept']} |"
        )


if __name__ == "__main__":
    main()
