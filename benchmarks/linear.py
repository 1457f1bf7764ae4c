"""network: linear, measured in one run (after `snakemake`, default config): peak RSS of the estimate at N vs 8N
calibration blocks (target <= 1.2: the normal equations are H x H, whatever the token count), each in a fresh
process, and the time of the extraction and the estimate.

    python benchmarks/linear.py [--n 8] [--samples 8]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from fresh import run_fresh  # benchmarks/fresh.py

from streamline.layout import Paths, scores_name

CHILD = """
import json, resource, sys
from streamline.linear import estimate_linear
a = json.loads(sys.argv[1])
stats = estimate_linear(a["model"], a["store"], a["scores"], a["out"], log_json=a["log"])
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **stats.to_json()}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--data", default="lambada")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--samples", type=int, default=8, help="N; the calib split must hold 8N blocks")
    args = p.parse_args()
    from streamline.linear import extract_linear_states

    paths = Paths(args.model, args.n)
    model, data, scores = paths.model_dir, paths.data_dir(args.data), paths.scores(scores_name(0))
    tmp = Path(tempfile.mkdtemp())
    try:
        runs = {}
        for count in (args.samples, 8 * args.samples):
            store = tmp / f"states{count}.zarr"
            summary = extract_linear_states(model, data, scores, store, num_samples=count, device="cpu")
            payload = {
                "model": model,
                "store": str(store),
                "scores": scores,
                "out": str(tmp / f"out{count}"),
                "log": str(tmp / f"log{count}.json"),
            }
            runs[count] = {**run_fresh(CHILD, payload), "extract": summary["seconds"]}
        small, big = runs[args.samples], runs[8 * args.samples]
        print(
            f"linear estimate peak RSS: {small['peak_rss_mb']:.0f} MB at N={args.samples} blocks "
            f"({small['tokens']:,} tokens), {big['peak_rss_mb']:.0f} MB at 8N ({big['tokens']:,} tokens); ratio "
            f"{big['peak_rss_mb'] / small['peak_rss_mb']:.3f}  (target <= 1.2)"
        )
        print(
            f"at 8N: extraction {big['extract']:.1f} s, estimate + fold {big['estimate_seconds']:.1f} s, relative "
            f"residual {big['relative_residual']:.4f} (identity map: {big['relative_residual_of_identity']:.4f})"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
