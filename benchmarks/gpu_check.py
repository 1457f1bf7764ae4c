"""The one check that needs a GPU: bf16 extraction throughput on SmolLM2 and one 1-GPU `loss: llm` run.

Run after the default `snakemake` (it reuses its model, data and init dirs), on a machine with a GPU:
    python benchmarks/gpu_check.py [--samples 64] [--device cuda]
Prints tokens/s of bf16 extraction (forward + Zarr write) against a bare bf16 forward, the store's
bit-exactness for bf16, and the time of a short LLM-loss run (seconds per optimizer step).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from streamline import data
from streamline.extract import extract_hidden_states
from streamline.layout import Paths
from streamline.loading import load_model
from streamline.store import HiddenStore
from streamline.training.recipes import train
from streamline.training.settings import TrainSettings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    paths = Paths("SmolLM2-135M-Instruct", 8)
    p.add_argument("--model", default=paths.model_dir)
    p.add_argument("--data", default=paths.data_dir("lambada"))
    p.add_argument("--init", default=paths.init("transformer"))
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        ids, mask = (np.asarray(a[: args.samples]) for a in data.load_split(args.data, "calib"))
        tokens = ids.size
        model, _ = load_model(args.model, dtype="bfloat16", device=args.device)
        dev = next(model.parameters()).device
        with torch.inference_mode():
            for rep in range(2):  # first pass warms up kernels
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for b in range(0, len(ids), args.batch_size):
                    model.base_model(
                        input_ids=torch.from_numpy(ids[b : b + args.batch_size].astype(np.int64)).to(dev),
                        attention_mask=torch.from_numpy(mask[b : b + args.batch_size].astype(np.int64)).to(dev),
                    )
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                bare = time.perf_counter() - start
        del model
        summary = extract_hidden_states(
            args.model,
            args.data,
            tmp / "bf16.zarr",
            num_samples=args.samples,
            dtype="bfloat16",
            batch_size=args.batch_size,
            device=args.device,
            codec="blosc",
            writers=4,
        )
        extract = summary["compute_seconds"]
        store = HiddenStore(tmp / "bf16.zarr")
        assert store.read(5, 0).dtype == torch.bfloat16
        print(
            f"bf16 bare forward: {tokens / bare:,.0f} tokens/s; extraction (forward + Zarr write of "
            f"{summary['gb']:.2f} GB, blosc): {tokens / extract:,.0f} tokens/s; ratio {bare / extract:.3f}"
        )

        settings = TrainSettings(
            batch_size=4,
            gradient_accumulation_step=1,
            epochs=1,
            lr=2e-4,
            min_lr=5e-5,
            val_every=10**6,
            checkpoint_every=10**6,
            train_samples=32,
        )
        start = time.perf_counter()
        result = train("llm", args.init, tmp / "llm", tmp / "llm.json", settings, data_dir=args.data)
        total = time.perf_counter() - start
        print(
            f"loss: llm, 1 process on {args.device}: {result.total_steps} optimizer steps of 4 x "
            f"{ids.shape[1]} tokens in {total:.1f} s including loading and validation "
            f"({result.seconds / max(result.total_steps, 1):.2f} s/step of training)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
