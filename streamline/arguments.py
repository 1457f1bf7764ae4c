"""Argument types and argument groups that several stages' commands share (kept free of torch: building a
command's parser must stay cheap)."""

from __future__ import annotations

import argparse

from .layout import CACHE  # noqa: F401  (the default --cache of the commands that download)

DTYPES = ["float32", "float16", "bfloat16"]
SPLITS = ["val", "calib", "train"]


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def limit(value: str) -> int | float | None:
    """lm-eval's limit: none, a count (int) or a fraction of each task (0 < float < 1)."""
    if value.lower() in ("none", "null", ""):
        return None
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'none': {value!r}") from None
    if x <= 0 or (x >= 1 and not x.is_integer()):
        raise argparse.ArgumentTypeError(f"expected a count >= 1 or a fraction in (0, 1), got {value}")
    return int(x) if x >= 1 else x


def add_extraction_arguments(p: argparse.ArgumentParser) -> None:
    """What every extraction into a Zarr store takes (calibration, pairs, the linear estimate's states)."""
    p.add_argument("--model", required=True, help="HF model directory")
    p.add_argument("--data", required=True, help="prepared data directory (resources/data/...)")
    p.add_argument("--out", required=True, help="output .zarr store")
    p.add_argument("--manifest", help="JSON summary written last, when the store is complete")
    p.add_argument("--num-samples", type=positive_int, help="blocks to extract (default: every block of the split)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="compute and storage dtype")
    p.add_argument("--codec", default="none", choices=["none", "zstd", "blosc"], help="Zarr compression codec")
    p.add_argument("--level", type=positive_int, default=3, help="the codec's compression level")
    p.add_argument("--batch-size", type=positive_int, default=4, help="blocks per forward pass")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    p.add_argument("--writers", type=positive_int, default=2, help="threads writing chunks while the next batch runs")


def extraction_options(a: argparse.Namespace) -> dict:
    """The keyword arguments add_extraction_arguments gave every extraction (all but its paths and count)."""
    return {key: getattr(a, key) for key in ("dtype", "codec", "level", "batch_size", "device", "writers", "manifest")}
