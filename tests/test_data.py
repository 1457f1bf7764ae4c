"""Prepare-data stage: shapes, determinism, disjoint splits, sources, errors, SlimPajama sampling."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from streamline.data import (
    SLIMPAJAMA_PROPORTIONS,
    domain_quotas,
    domain_rounds,
    load_split,
    prepare_data,
    read_local_documents,
    sample_by_domain,
)
from streamline.errors import StreamlineError
from streamline.manifests import DataMeta, read_meta

COUNTS = {"calib": 3, "train": 8, "val": 2}


def prep(source, tok_dir, out, **kw):
    args = dict(seq_len=32, counts=COUNTS, seed=0, text_fields=None, cache_dir=out.parent / "cache")
    return prepare_data(str(source), tok_dir, out, **{**args, **kw})


def blocks(out: Path) -> dict[str, np.ndarray]:
    return {s: np.asarray(load_split(out, s)[0]) for s in ("calib", "train", "val")}


def doc_ids(ids: np.ndarray, tok) -> set[str]:
    """The `document N` markers the conftest corpus puts at the start of each document."""
    import re

    return set(re.findall(r"document (\d+) :", tok.decode(ids.ravel())))


def test_shapes_dtypes_and_meta(tiny_llama_dir, text_corpus, tmp_path):
    meta = prep(text_corpus, tiny_llama_dir, tmp_path / "d")
    for s, n in COUNTS.items():
        ids, mask = load_split(tmp_path / "d", s)
        assert ids.shape == mask.shape == (n, 32) and ids.dtype == np.int32 and mask.dtype == np.uint8
        assert isinstance(ids, np.memmap) and mask.all()
        assert meta["tokens"][s] == n * 32
    saved = read_meta(tmp_path / "d")  # signed, and read back as written
    assert saved == DataMeta(**meta) and saved.corpus_documents == 400 and saved.seq_len == 32
    assert sum(saved.documents.values()) <= 400 and not (tmp_path / "d.partial").exists()


def test_deterministic_and_disjoint(tiny_llama_dir, tiny_tokenizer, text_corpus, tmp_path):
    def run(name, **kw):
        prep(text_corpus, tiny_llama_dir, tmp_path / name, **kw)
        return blocks(tmp_path / name)

    a, b, c = run("a"), run("b"), run("c", seed=1)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["train"], c["train"])
    docs = {s: doc_ids(a[s], tiny_tokenizer) for s in a}
    assert all(docs.values())
    assert not docs["val"] & docs["calib"] and not docs["val"] & docs["train"] and not docs["calib"] & docs["train"]
    # val is filled first, so a different train count leaves val and calib untouched.
    d = run("d", counts={**COUNTS, "train": 20})
    assert np.array_equal(a["val"], d["val"]) and np.array_equal(a["calib"], d["calib"])
    assert d["train"].shape == (20, 32)


def test_packing_joins_documents_with_eos(tiny_llama_dir, tiny_tokenizer, text_corpus, tmp_path):
    prep(text_corpus, tiny_llama_dir, tmp_path / "d")
    train = blocks(tmp_path / "d")["train"]
    assert (train == tiny_tokenizer.eos_token_id).sum() > 0  # documents are shorter than the blocks
    assert (train != tiny_tokenizer.pad_token_id).all()


def test_unpacked_pads_right(tiny_llama_dir, tiny_tokenizer, text_corpus, tmp_path):
    meta = prep(text_corpus, tiny_llama_dir, tmp_path / "d", pack=False, seq_len=256)
    ids, mask = load_split(tmp_path / "d", "train")
    assert ids.shape == (8, 256) and meta["documents"] == COUNTS
    for row, m in zip(ids, mask):
        n = int(m.sum())
        assert 0 < n < 256 and m[:n].all() and not m[n:].any()  # right padding only
        assert row[n - 1] == tiny_tokenizer.eos_token_id and (row[n:] == tiny_tokenizer.pad_token_id).all()
    # Truncation: a short seq_len cuts every document, and the mask is all ones.
    prep(text_corpus, tiny_llama_dir, tmp_path / "t", pack=False, seq_len=4)
    assert load_split(tmp_path / "t", "val")[1].all()


def test_too_small_corpus(tiny_llama_dir, text_corpus, tmp_path):
    with pytest.raises(
        StreamlineError,
        match=r"^cosine_num_data/train_num_data/data.val_num_data: .* gives only "
        r"\d+ blocks of 32 tokens, 100005 requested",
    ):
        prep(text_corpus, tiny_llama_dir, tmp_path / "d", counts={**COUNTS, "train": 100_000})
    assert not (tmp_path / "d").exists() and not (tmp_path / "d.partial").exists()


def test_bad_counts(tiny_llama_dir, text_corpus, tmp_path):
    with pytest.raises(StreamlineError, match="^data.val_num_data:"):
        prep(text_corpus, tiny_llama_dir, tmp_path / "d", counts={"calib": 1, "train": 1})
    with pytest.raises(StreamlineError, match="^cosine_num_data: must be a non-negative integer"):
        prep(text_corpus, tiny_llama_dir, tmp_path / "d", counts={**COUNTS, "calib": -1})
    with pytest.raises(StreamlineError, match="^data.source: path .*missing.jsonl does not exist"):
        prep(tmp_path / "missing.jsonl", tiny_llama_dir, tmp_path / "d")
    with pytest.raises(StreamlineError, match="^data.text_fields: .* has no field 'body'"):
        prep(text_corpus, tiny_llama_dir, tmp_path / "d", text_fields=["body"])
    with pytest.raises(StreamlineError, match="split: unknown split"):
        load_split(tmp_path, "test")


# ------------------------------------------------------------------------------------- sources


def test_txt_jsonl_gz_and_directory(tiny_llama_dir, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("\n\n".join(f"paragraph {i} of the text file ." for i in range(60)))
    with gzip.open(src / "sub" / "b.jsonl.gz", "wt") as f:
        for i in range(60):
            f.write(json.dumps({"request": {"context": f"context {i} ,", "continuation": " ending"}}) + "\n")
    (src / "ignored.csv").write_text("x,y")
    assert len(read_local_documents(src / "a.txt")) == 60
    docs = read_local_documents(src / "sub" / "b.jsonl.gz", ["request.context", "request.continuation"])
    assert docs[3] == "context 3 , ending"
    assert len(read_local_documents(src, ["request.context", "request.continuation"])) == 120
    for source, fields in [
        (src / "a.txt", None),
        (src / "sub" / "b.jsonl.gz", ["request.context"]),
        (src, ["request.context", "request.continuation"]),
    ]:
        out = tmp_path / f"out-{Path(source).name}"
        meta = prep(
            source, tiny_llama_dir, out, text_fields=fields, seq_len=16, counts={"calib": 2, "train": 4, "val": 1}
        )
        assert load_split(out, "train")[0].shape == (4, 16) and meta["text_fields"] == fields


def test_hub_dataset_source(tiny_llama_dir, tmp_path, monkeypatch):
    from streamline import data

    recs = [{"body": {"text": f"document {i} : hub text number {i} ."}} for i in range(300)]
    monkeypatch.setattr(data, "_hub_stream", lambda source, split, seed: iter(recs))
    meta = prep("someone/corpus", tiny_llama_dir, tmp_path / "d", text_fields=["body.text"], seq_len=16)
    assert meta["source"] == "someone/corpus" and load_split(tmp_path / "d", "train")[0].shape == (8, 16)


# ---------------------------------------------------------------------------------- SlimPajama


def fake_slimpajama(n: int, seed: int = 0) -> list[dict]:
    """Records with SlimPajama's schema; domains at roughly SlimPajama-6B's natural frequencies."""
    natural = {
        "RedPajamaC4": 0.55,
        "RedPajamaCommonCrawl": 0.32,
        "RedPajamaStackExchange": 0.05,
        "RedPajamaWikipedia": 0.046,
        "RedPajamaGithub": 0.03,
        "RedPajamaArXiv": 0.003,
        "RedPajamaBook": 0.001,
    }
    rng = np.random.default_rng(seed)
    names = rng.choice(list(natural), size=n, p=np.array(list(natural.values())) / sum(natural.values()))
    return [{"text": f"doc {i} from {d}", "meta": {"redpajama_set_name": str(d)}} for i, d in enumerate(names)]


def test_domain_quotas_follow_the_reference():
    q = domain_quotas(3000)
    assert q == {
        "RedPajamaC4": 1476,
        "RedPajamaStackExchange": 30,
        "RedPajamaCommonCrawl": 361,
        "RedPajamaGithub": 24,
        "RedPajamaWikipedia": 93,
        "RedPajamaArXiv": 1,
        "RedPajamaBook": 1,
    }
    assert set(q) == set(SLIMPAJAMA_PROPORTIONS)


def test_sample_by_domain_fills_quotas():
    recs = fake_slimpajama(20_000)
    quotas = domain_quotas(3000)
    taken, exhausted = sample_by_domain(iter(recs), quotas)
    got = Counter(r["meta"]["redpajama_set_name"] for r in taken)
    assert not exhausted and got == Counter(quotas)
    assert len({r["text"] for r in taken}) == len(taken)
    # A stream too short for the rare domains stops with what it has.
    taken, exhausted = sample_by_domain(iter(recs[:500]), quotas)
    assert exhausted and len(taken) < 500


def test_domain_rounds_mix_and_determinism():
    recs = fake_slimpajama(30_000)
    a = [r["text"] for _, r in zip(range(1500), domain_rounds(recs, 1000, seed=0))]
    b = [r["text"] for _, r in zip(range(1500), domain_rounds(recs, 1000, seed=0))]
    c = [r["text"] for _, r in zip(range(1500), domain_rounds(recs, 1000, seed=1))]
    assert a == b and a != c and len(set(a)) == 1500
    # The first round (scale 1000, 661 documents) is shuffled, so any prefix holds the paper's mix:
    # C4 is ~74% of it, far above its natural 55%, and CommonCrawl ~18%, below its natural 32%.
    first = Counter(t.split(" from ")[1] for t in a[:400])
    assert 0.65 < first["RedPajamaC4"] / 400 < 0.83 and 0.1 < first["RedPajamaCommonCrawl"] / 400 < 0.26
    # Past the first round, quotas double and sampling continues from the same stream.
    assert len(list(domain_rounds(recs[:5000], 1000, seed=0))) > 661


def test_slimpajama_source_uses_domain_mix(tiny_llama_dir, tmp_path, monkeypatch):
    from streamline import data

    splits = {"train": fake_slimpajama(4000, 1), "test": fake_slimpajama(4000, 2)}
    for s, recs in splits.items():
        for r in recs:
            r["text"] = f"{s} " + r["text"]
    monkeypatch.setattr(data, "_hub_stream", lambda source, split, seed: iter(splits[split]))
    meta = prep(data.SLIMPAJAMA, tiny_llama_dir, tmp_path / "d", seq_len=16, counts={"calib": 4, "train": 30, "val": 5})
    assert set(meta["domains"]) == {"calib", "train", "val"}
    assert sum(meta["domains"]["train"].values()) == meta["documents"]["train"]
    assert meta["domains"]["train"]["RedPajamaC4"] > meta["domains"]["train"].get("RedPajamaCommonCrawl", 0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    b = blocks(tmp_path / "d")
    assert "train" not in tok.decode(b["val"].ravel()) and "test" not in tok.decode(b["train"].ravel())
