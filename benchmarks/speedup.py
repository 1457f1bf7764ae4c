"""Measured prefill and decode speedup of a pruned model over the original, next to the ideal.

The evaluate stage measures the same thing once per variant (eval.json `speed`); this re-measures with
more repeats, on the held-out blocks, the two models alternating in one process (streamline/speed.py).
Run after `snakemake`:
    python benchmarks/speedup.py [--variant transformer-mse] [--n 8] [--repeats 5]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from streamline import data
from streamline.evaluate import load_for_eval
from streamline.layout import Paths, Variant
from streamline.speed import measure_speedup


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--data", default="lambada")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--variant", default="transformer-mse")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    paths = Paths(args.model, args.n)
    ids, _ = data.load_split(paths.data_dir(args.data), "val")
    original = load_for_eval(paths.model_dir)
    pruned = load_for_eval(paths.model_out(Variant.parse(args.variant)))
    s = measure_speedup(
        pruned, original, np.asarray(ids), args.batch_size, decode_steps=args.decode_steps, repeats=args.repeats
    )
    print(
        f"{args.variant} (n={args.n}) vs original, {s.device}, {torch.get_num_threads()} threads, batch {s.batch}, "
        f"prefill {s.prefill_tokens} tokens, decode {s.decode_steps} steps after {s.decode_prompt_tokens}"
    )
    print("| phase | original tok/s | pruned tok/s | measured speedup | ideal | measured / ideal |")
    print("|---|---:|---:|---:|---:|---:|")
    for phase in ("prefill", "decode"):
        tps = s.prefill_tokens_per_s if phase == "prefill" else s.decode_tokens_per_s
        print(
            f"| {phase} | {tps['original']:.0f} | {tps['pruned']:.0f} | {s.speedup[phase]:.3f}x | "
            f"{s.ideal[phase]:.3f}x | {s.speedup[phase] / s.ideal[phase]:.3f} |"
        )


if __name__ == "__main__":
    main()
