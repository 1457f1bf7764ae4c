"""The MSE options (train.mse_loss) at the paper's settings, on the default run's pairs: which one heals?

For each option, the untrained replacement is trained on the same 256 pair blocks, lr 2e-4 -> 5e-5, wd 1e-3,
one epoch, every position in the loss (skip_first_tokens 0), validating at the start and at the end only, so
the final state is the trained one. Printed per option: the held-out perplexity of that final state and
what the run kept, and the exported model's perplexity and KL(original || pruned) on the validation
blocks; `none` and the untrained replacement for reference. Run after `snakemake` (default config):

    python benchmarks/mse_losses.py [--n 8] [--train-samples 256]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from streamline import data
from streamline.evaluate import load_for_eval, score_blocks
from streamline.layout import Paths, pairs_name
from streamline.training.recipes import train
from streamline.training.settings import MSE_LOSSES, TrainSettings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--data", default="lambada")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--train-samples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--accumulation", type=int, default=2)
    p.add_argument("--losses", nargs="+", default=list(MSE_LOSSES))
    args = p.parse_args()
    paths = Paths(args.model, args.n)
    base, data_dir = Path(paths.base), Path(paths.data_dir(args.data))
    ids, mask = (np.asarray(a) for a in data.load_split(data_dir, "val"))
    original = load_for_eval(Path(paths.model_dir), "cpu")

    def held_out(model_dir: Path) -> dict:
        return score_blocks(load_for_eval(model_dir, "cpu"), ids, mask, args.batch_size, original=original)

    print("| model | final-state val ppl | kept | exported val ppl | KL to original | train s |")
    print("|---|---:|---|---:|---:|---:|")
    print(f"| original | | | {score_blocks(original, ids, mask, args.batch_size)['perplexity']:.1f} | 0 | |")
    for name in ("none/init", "transformer/init"):
        r = held_out(base / name)
        print(
            f"| {name.split('/')[0] + (' (untrained)' if 'transformer' in name else '')} | | | "
            f"{r['perplexity']:.1f} | {r['kl']:.3f} | |"
        )
    steps = math.ceil(args.train_samples / args.batch_size / args.accumulation)
    for kind in args.losses:
        s = TrainSettings(
            batch_size=args.batch_size,
            gradient_accumulation_step=args.accumulation,
            epochs=1,
            lr=2e-4,
            min_lr=5e-5,
            wd=1e-3,
            val_every=steps,
            train_samples=args.train_samples,
            mse_loss=kind,
            skip_first_tokens=0,
            seed=42,
        )
        with tempfile.TemporaryDirectory() as tmp:
            start = time.time()
            result = train(
                "mse",
                paths.init("transformer"),
                Path(tmp) / "m",
                Path(tmp) / "log.json",
                s,
                data_dir=data_dir,
                pairs_dir=paths.pairs(pairs_name(1)),
            )
            seconds = time.time() - start
            r = held_out(Path(tmp) / "m")
        final = math.exp(result.val[-1]["ce"])
        print(
            f"| transformer-mse, {kind} | {final:.1f} | {result.kept} | {r['perplexity']:.1f} | {r['kl']:.3f} | "
            f"{seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
