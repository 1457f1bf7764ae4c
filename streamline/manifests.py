"""The records of the directories stages write: a hidden-state store's manifest and a data dir's meta.json.

    StoreManifest   calibration.json, linear_states.json   extraction -> score, linear
    PairsManifest   pairs.json (a StoreManifest per split)  extract-pairs -> train (mse)
    DataMeta        meta.json of a prepared data dir        prepare-data -> every stage that reads token blocks

Each is written signed and read back checked (records.py): a manifest that is torn, edited or unsigned is
moved aside with one line, so that its extraction reruns (it resumes from the store's verified chunks); a
meta.json moves its data dir aside, so that prepare-data reruns. Apart from artifacts.py: the extractions
and the data stage import these, and editing the other artifacts' records must not rerun them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .records import Count, Record


@dataclass(frozen=True)
class StoreManifest(Record):
    """A complete store: where it is, what it holds, and what extracting it cost."""

    store: str
    shape: list[Count]  # [K states, N samples, T tokens, H hidden]
    dtype: str
    codec: str
    layers: list[int | str]  # the K states: h_k, or "y{l}"/"m{l}" (linear)
    samples: Count
    computed_samples: Count  # by the run that finished it (0: nothing left to do)
    seconds: float
    compute_seconds: float
    gb: float
    device: str

    def __post_init__(self) -> None:
        if (
            not self.store
            or len(self.shape) != 4
            or self.shape[:2] != [len(self.layers), self.samples]
            or self.computed_samples > self.samples
            or min(self.seconds, self.compute_seconds, self.gb) < 0
        ):
            raise ValueError(
                f"a store of shape {self.shape} at {self.store!r} with {len(self.layers)} states and "
                f"{self.computed_samples} of {self.samples} samples computed"
            )


@dataclass(frozen=True)
class PairsManifest(Record):
    """pairs.json: the pair stores of the best block's (h_b, h_b+n+k), one per split."""

    block: list[Count]
    layers: list[Count]  # [b, b+n+k]
    train: StoreManifest
    val: StoreManifest

    def __post_init__(self) -> None:
        if self.layers != [self.block[0], self.block[-1] + 1] or any(
            s.layers != self.layers for s in (self.train, self.val)
        ):
            raise ValueError(f"pairs of layers {self.layers} for block {self.block}")


def read_store_manifest(path: str | Path, split: str | None = None) -> StoreManifest:
    """A store's manifest, checked (`split`: train or val of a pair store's)."""
    if split is None:
        return StoreManifest.load(path, "store manifest")
    return getattr(PairsManifest.load(path, "pair store manifest"), split)


SPLITS = ("calib", "train", "val")


@dataclass(frozen=True)
class DataMeta(Record):
    """meta.json of a prepared data dir: where its token blocks came from, and how many of each split."""

    source: str
    seq_len: Count
    pack: bool
    seed: int
    counts: dict[str, Count]  # blocks per split
    tokens: dict[str, Count]  # real (unmasked) tokens per split
    documents: dict[str, Count]  # documents per split
    text_fields: list[str] | None = None
    tokenizer: str | None = None
    tokenizer_name: str | None = None
    vocab_size: Count | None = None
    eos_token_id: Count | None = None
    pad_token_id: Count | None = None
    corpus_documents: Count | None = None
    domains: dict[str, dict[str, Count]] | None = None  # SlimPajama: documents per domain, per split

    def __post_init__(self) -> None:
        if (
            set(self.counts) != set(SPLITS)
            or set(self.tokens) != set(SPLITS)
            or self.seq_len < 1
            or any(self.tokens[s] > self.counts[s] * self.seq_len for s in SPLITS)
        ):
            raise ValueError(f"{self.counts} blocks of {self.seq_len} tokens holding {self.tokens} tokens")


def read_meta(data_dir: str | Path) -> DataMeta:
    """A data dir's meta.json, checked; a torn or edited one moves the data dir aside (prepare-data reruns)."""
    return DataMeta.load(Path(data_dir) / "meta.json", "data dir's meta.json", aside=data_dir)
