"""Where training samples come from, and in which order they are read.

Two sources: hidden-state pairs stored in a Zarr pair store (h_b, h_{b+n+k}), and token blocks of a
prepared data dir (for the LLM and distillation losses, and for MSE with pairs computed online).
The order is fixed by the seed and the epoch, and split across processes, so a resumed run reads
exactly the micro-batches the killed run had not consumed yet.
"""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..data import check_token_ids, load_split
from ..errors import StreamlineError
from ..store import open_store


class PairSamples:
    """Pairs (x = h_b, y = h_{b+n+k}) with their attention mask, from a pair store split."""

    def __init__(self, pairs: str | Path, split: str, limit: int = 0):
        """`pairs`: the pair store's manifest (pairs.json) or its directory (holding train/ and val/)."""
        self.store = open_store(pairs, split)
        if self.store.hidden.shape[0] != 2:
            raise StreamlineError(
                f"{self.store.path}: a pair store holds 2 hidden states per sample, "
                f"this one {self.store.hidden.shape[0]}"
            )
        n = self.store.num_samples
        self.n = min(limit, n) if limit else n
        self.fingerprint = self.store.attrs["fingerprint"]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.store.read(0, i), "y": self.store.read(1, i), "attention_mask": self.store.read_mask(i)}


class TokenSamples:
    """Token blocks (input_ids, attention_mask) of one split of a prepared data dir."""

    def __init__(self, data_dir: str | Path, split: str, limit: int = 0, vocab_size: int | None = None):
        self.ids, self.mask = load_split(Path(data_dir), split)
        self.n = min(limit, len(self.ids)) if limit else len(self.ids)
        if vocab_size is not None:
            check_token_ids(self.ids[: self.n], vocab_size, Path(data_dir) / f"{split}_input_ids.npy")
        meta = (Path(data_dir) / "meta.json").read_bytes()  # records source, seed, counts and token totals
        self.fingerprint = f"{hashlib.sha256(meta).hexdigest()[:16]}:{split}:{self.n}"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.from_numpy(np.asarray(self.ids[i], dtype=np.int64)),
            "attention_mask": torch.from_numpy(np.asarray(self.mask[i], dtype=np.int64)),
        }


def micro_batch_plan(
    n: int, batch_size: int, epochs: float, seed: int, world: int = 1, rank: int = 0
) -> list[list[int]]:
    """This process's micro-batches (sample indices), epoch after epoch: ceil(epochs x per-epoch) of them.

    Each epoch is a permutation seeded by seed + epoch, cut into global batches of batch_size x world
    samples, of which each process takes its share. The last global batch of an epoch is short; it is
    filled up (from the start of the permutation) to a multiple of `world`, so that every process gets
    the same, non-zero number of samples.
    """
    per_epoch = math.ceil(n / (batch_size * world))
    total = max(1, math.ceil(epochs * per_epoch))
    plan: list[list[int]] = []
    epoch = 0
    while len(plan) < total:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for start in range(0, n, batch_size * world):
            group = order[start : start + batch_size * world]
            if len(group) % world:
                group += order[: world - len(group) % world]
            share = len(group) // world
            plan.append(group[rank * share : (rank + 1) * share])
        epoch += 1
    return plan[:total]


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def read_ahead(samples, groups: list[list[int]], prefetch: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of `groups`, read by a thread `prefetch` batches ahead so that I/O overlaps compute."""

    def load(group):
        return collate([samples[i] for i in group])

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(load, g) for g in groups[:prefetch]]
        for i in range(len(groups)):
            batch = pending.pop(0).result()
            if i + prefetch < len(groups):
                pending.append(pool.submit(load, groups[i + prefetch]))
            yield batch
