"""Held-out perplexity of the original model and its pruned variants, on the validation blocks.

Run after `snakemake --config 'network=[transformer,none]'` (the default run trains transformer only):
    python benchmarks/quality.py [--n 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from streamline import data
from streamline.evaluate import perplexity
from streamline.io import read_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--data", default="lambada")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    ids, mask = data.load_split(f"resources/data/{args.model}/{args.data}", "val")
    ids, mask = np.asarray(ids), np.asarray(mask)
    base = f"results/{args.model}/n{args.n}"
    rows = [("original", f"resources/models/{args.model}"), ("none (plain removal)", f"{base}/none/init"),
            ("transformer, untrained", f"{base}/transformer/init"),
            ("transformer, trained (MSE)", f"{base}/transformer-mse/model")]
    print(f"| model | layers | params | val perplexity ({len(ids)} blocks of {ids.shape[1]} tokens) |")
    print("|---|---|---|---|")
    for name, path in rows:
        if not Path(path).exists():
            print(f"| {name} | (missing: {path}) | | |")
            continue
        meta = read_json(f"{path}/streamline.json") if Path(f"{path}/streamline.json").exists() else None
        ppl = perplexity(path, ids, mask, args.batch_size)
        layers = meta["num_hidden_layers"] if meta else read_json(f"{path}/config.json")["num_hidden_layers"]
        params = f"{meta['params'] / 1e6:.1f}M" if meta else ""
        print(f"| {name} | {layers} | {params} | {ppl:.2f} |", flush=True)


if __name__ == "__main__":
    main()
