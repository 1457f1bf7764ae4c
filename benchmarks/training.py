"""MSE training and pair extraction, as ratios measured in one run (after `snakemake`).

1. training throughput streaming pairs from pairs.zarr vs. the same pairs held in RAM (target >= 0.85);
2. peak RSS of a whole training run at N train blocks vs. 8N, each in a fresh process (target <= 1.2);
3. pair-extraction time (layers 0..b+n only) vs. a full forward pass over the same blocks
   (target close to (b+n+1)/L).

    python benchmarks/training.py [--n 8] [--samples 64]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from fresh import run_fresh  # benchmarks/fresh.py

from streamline import data
from streamline.artifacts import read_scores
from streamline.layout import Paths
from streamline.loading import load_model
from streamline.pairs import extract_pairs
from streamline.training.core import fit
from streamline.training.recipes import build_recipe
from streamline.training.settings import TrainSettings

CHILD = """
import json, resource, sys
from streamline.training.recipes import build_recipe
from streamline.training.core import fit
from streamline.training.settings import TrainSettings
a = json.loads(sys.argv[1])
s = TrainSettings(**a["settings"])
fit(build_recipe("mse", a["init"], s, data_dir=a["data"], pairs_dir=a["pairs"]), s, lambda result, state: None)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


class InRam:
    """The same pair samples, read once into memory."""

    def __init__(self, samples, n: int):
        self.items = [samples[i] for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def settings(args, n: int) -> TrainSettings:
    return TrainSettings(
        batch_size=args.batch_size,
        gradient_accumulation_step=1,
        epochs=1,
        val_every=10**9,
        device=args.device,
        train_samples=n,
    )


def timed_train(args, in_ram: bool = False) -> float:
    """Training samples/s (validation excluded), from pairs.zarr or from RAM."""
    s = settings(args, args.samples)
    recipe = build_recipe("mse", args.init, s, data_dir=args.data, pairs_dir=args.pairs)
    if in_ram:
        recipe.train = InRam(recipe.train, len(recipe.train))
    return fit(recipe, s, lambda result, state: None).samples_per_second


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    paths = Paths("SmolLM2-135M-Instruct")
    p.add_argument("--results", default=str(Path(paths.calibration).parent))
    p.add_argument("--model", default=paths.model_dir)
    p.add_argument("--data", default=paths.data_dir("lambada"))
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--samples", type=int, default=64, help="train blocks for the throughput ratio")
    p.add_argument("--rss-samples", type=int, default=32, help="N for the RSS ratio (needs 8N pairs)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    args.init = f"{args.results}/n{args.n}/transformer/init"
    args.pairs = f"{args.results}/n{args.n}/pairs.zarr"
    tmp = Path(tempfile.mkdtemp())
    try:
        # 1. streaming vs in-RAM: same samples, same order, same network.
        # Alternate and keep the best of two, so warm-up (allocator, caches) favours neither side.
        runs = [(timed_train(args, in_ram=True), timed_train(args)) for _ in range(2)]
        ram, zarr_ = max(r for r, _ in runs), max(z for _, z in runs)
        print(
            f"training throughput: {zarr_:.2f} samples/s from pairs.zarr, {ram:.2f} samples/s from RAM; "
            f"ratio {zarr_ / ram:.3f}  (target >= 0.85)"
        )

        # 2. RSS flat in train_num_data.
        rss = []
        for n in (args.rss_samples, 8 * args.rss_samples):
            payload = {
                "init": args.init,
                "pairs": args.pairs,
                "data": args.data,
                "settings": settings(args, n).as_dict(),
            }
            rss.append(run_fresh(CHILD, payload)["peak_rss_mb"])
        print(
            f"training peak RSS: {rss[0]:.0f} MB at N={args.rss_samples}, {rss[1]:.0f} MB at "
            f"8N={8 * args.rss_samples}; ratio {rss[1] / rss[0]:.3f}  (target <= 1.2)"
        )

        # 3. pair extraction runs layers 0..b+n only.
        scores = read_scores(f"{args.results}/n{args.n}/scores.json")
        ids, mask = data.load_split(args.data, "train")
        ids, mask = np.asarray(ids[: args.samples]), np.asarray(mask[: args.samples])
        model, _ = load_model(args.model, device=args.device)
        dev = next(model.parameters()).device
        start = time.perf_counter()
        with torch.inference_mode():
            for b in range(0, len(ids), args.batch_size):
                model.base_model(
                    input_ids=torch.from_numpy(ids[b : b + args.batch_size].astype(np.int64)).to(dev),
                    attention_mask=torch.from_numpy(mask[b : b + args.batch_size].astype(np.int64)).to(dev),
                )
        full = time.perf_counter() - start
        layers = model.config.num_hidden_layers
        del model
        summary = extract_pairs(
            args.model,
            args.data,
            f"{args.results}/n{args.n}/scores.json",
            tmp / "pairs",
            train_samples=args.samples,
            batch_size=args.batch_size,
            device=args.device,
        )
        ratio = summary["train"]["compute_seconds"] / full  # forward + Zarr writes, model loading excluded
        target = (scores.block[-1] + 1) / layers
        print(
            f"pair extraction vs full forward: {ratio:.3f} (layers 0..{scores.block[-1]} of {layers}: "
            f"target close to {target:.3f})"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
