"""Pair stores for MSE training: (h_b, h_{b+n+k}) of the best block, for the train and val splits.

Apart from extract.py, which it calls: the calibration extraction never reads block scores, so editing the
artifact records reruns the pairs, never the calibration store.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .artifacts import read_scores
from .extract import extract_hidden_states
from .manifests import PairsManifest


def extract_pairs(
    model_dir: str | Path,
    data_dir: str | Path,
    scores_json: str | Path,
    out_dir: str | Path,
    *,
    train_samples: int | None = None,
    manifest: str | Path | None = None,
    **kwargs,
) -> dict:
    """(h_b, h_{b+n+1}) of the best block for the train and val splits: pairs.zarr/{train,val}.

    Only layers 0..b+n run, never the whole model.
    """
    scores = read_scores(scores_json)
    keep = [scores.block[0], scores.block[-1] + 1]
    out_dir = Path(out_dir)
    summary = {"block": scores.block, "layers": keep}
    for split, count in (("train", train_samples), ("val", None)):
        summary[split] = extract_hidden_states(
            model_dir, data_dir, out_dir / split, split=split, num_samples=count, keep=keep, **kwargs
        )
    if manifest:
        PairsManifest.from_json(summary, manifest).write(manifest)
    return summary


# --- the command: streamline extract-pairs ------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .arguments import add_extraction_arguments

    add_extraction_arguments(p)
    p.add_argument("--scores", required=True, help="scores.json naming the best block")


def run(a: argparse.Namespace) -> None:
    from .arguments import extraction_options

    extract_pairs(
        a.model,
        a.data,
        a.scores,
        a.out,
        train_samples=a.num_samples,
        **extraction_options(a),
    )
