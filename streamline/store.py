"""Hidden-state stores in Zarr v3: preallocated, one chunk per (layer, sample), bit-exact dtype.

zarr has no bfloat16, so bf16 is kept as its uint16 bits with the logical dtype in the attributes.
A chunk that exists is complete (LocalStore writes a temp file and renames it), which is what
makes resuming safe: skip the chunks that exist, delete leftover `*.partial` temp files.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from .errors import StreamlineError

log = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
STORAGE_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}


def compressors(codec: str, level: int = 3):
    if codec == "none":
        return None
    if codec == "zstd":
        return [ZstdCodec(level=level)]
    if codec == "blosc":  # byte-shuffled zstd: the better choice for bf16/fp16 bits
        return [BloscCodec(cname="zstd", clevel=level, shuffle="bitshuffle")]
    raise StreamlineError(f"zarr.codec: unknown codec '{codec}' (allowed: none, zstd, blosc)")


def to_storage(t: torch.Tensor) -> np.ndarray:
    """A tensor as the numpy array that stores it bit-exactly."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy()
    return t.numpy()


def from_storage(a: np.ndarray, logical_dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.view(torch.bfloat16) if logical_dtype == "bfloat16" else t


class HiddenStore:
    """A group with `hidden` [K, N, T, H] (K hidden states per sample) and `attention_mask` [N, T]."""

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path = Path(path)
        self.group = zarr.open_group(str(self.path), mode=mode)
        self.hidden = self.group["hidden"]
        self.mask = self.group["attention_mask"]
        self.attrs = dict(self.group.attrs)
        self.dtype = self.attrs["dtype"]

    @classmethod
    def create_or_resume(cls, path: str | Path, *, shape: tuple[int, int, int, int], dtype: str, codec: str,
                         level: int, attrs: dict) -> "HiddenStore":
        """Open a store written with the same `attrs`, or start a fresh one if anything differs."""
        path = Path(path)
        if path.exists():
            try:
                same = json.loads((path / "zarr.json").read_text())["attributes"].get("fingerprint") == attrs["fingerprint"]
            except (OSError, KeyError, ValueError):
                same = False
            if same:
                removed = sum(1 for p in path.rglob("*.partial") if p.unlink() is None)
                if removed:
                    log.info("removed %d partial chunk(s) left by an interrupted run", removed)
                return cls(path, mode="r+")
            log.info("%s was written with other inputs; starting it afresh", path)
            shutil.rmtree(path)
        k, n, t, h = shape
        group = zarr.open_group(str(path), mode="w")
        common = {"compressors": compressors(codec, level), "config": {"write_empty_chunks": True}, "fill_value": 0}
        group.create_array("hidden", shape=shape, chunks=(1, 1, t, h), dtype=STORAGE_DTYPES[dtype], **common)
        group.create_array("attention_mask", shape=(n, t), chunks=(1, t), dtype="uint8", **common)
        group.attrs.update({**attrs, "dtype": dtype, "codec": codec})
        return cls(path, mode="r+")

    @property
    def num_samples(self) -> int:
        return self.hidden.shape[1]

    def _chunk_file(self, array: zarr.Array, coords: tuple[int, ...]) -> Path:
        return self.path / array.path / array.metadata.encode_chunk_key(coords)

    def sample_complete(self, n: int) -> bool:
        if not self._chunk_file(self.mask, (n, 0)).exists():
            return False
        return all(self._chunk_file(self.hidden, (k, n, 0, 0)).exists() for k in range(self.hidden.shape[0]))

    def missing_samples(self) -> list[int]:
        return [n for n in range(self.num_samples) if not self.sample_complete(n)]

    def write(self, k: int, n: int, value: np.ndarray) -> None:
        self.hidden[k, n] = value

    def write_range(self, k: int, first: int, values: np.ndarray) -> None:
        """Hidden state k of samples first..first+len(values)-1, one chunk each."""
        self.hidden[k, first:first + len(values)] = values

    def write_mask(self, n: int, value: np.ndarray) -> None:
        # Written last for a sample, so a present mask chunk means every layer chunk was queued before it.
        self.mask[n] = value

    def read(self, k: int, n: int) -> torch.Tensor:
        return from_storage(self.hidden[k, n], self.dtype)

    def read_sample(self, n: int) -> torch.Tensor:
        """All K hidden states of one sample, [K, T, H], in the logical dtype."""
        return from_storage(self.hidden[:, n], self.dtype)

    def read_mask(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self.mask[n]).bool()
