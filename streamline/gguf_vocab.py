"""The tokenizer of an HF model dir as GGUF metadata, so that llama.cpp turns text, a chat prompt included, into
the token ids the HF tokenizer does.

Two kinds of BPE tokenizer.json are written:
- byte-level (GPT-2 style: SmolLM2, Llama-3): llama.cpp's "gpt2" model with the merges, and the name of the
  pre-tokenizer, which selects llama.cpp's rules for splitting text before the merges;
- sentencepiece-style with byte fallback (Llama-2): llama.cpp's "llama" (SPM) model. It merges the pair whose
  result has the highest score, where HF merges the pair of lowest rank; each token's score is therefore minus
  the rank of the first merge that makes it. The two orders agree when every pair of tokens whose concatenation
  is a token is a merge, as in every tokenizer.json that transformers converts from sentencepiece; otherwise
  text tokenised inside llama.cpp may differ, and the export says so.

Token types decide what llama.cpp does with a token found in text: every token the HF tokenizer marks special is
CONTROL (matched whole when special tokens are parsed, as in a chat prompt), the other added tokens USER_DEFINED.
Whether BOS and EOS are added is measured on the HF tokenizer itself and always written, since llama.cpp's
defaults differ by tokenizer model (SPM adds BOS, GPT-2 style does not).
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from pathlib import Path

from .errors import StreamlineError

log = logging.getLogger(__name__)

BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
# Llama-3's split rule (tokenizer.json's Split pre-tokenizer); llama.cpp calls it "llama-bpe".
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _merges(tokenizer_json: dict) -> list[tuple[str, str]]:
    """The merges in rank order; tokenizer.json stores them as "a b" strings or (since transformers 4.45) pairs."""
    merges = tokenizer_json["model"].get("merges", [])
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]


def _numbers_stand_alone(vocab: dict[str, int]) -> bool:
    """True when no byte-level token joins a number character (Unicode N*) to anything else: splitting digits off
    before the merges, as llama.cpp's 'smollm' rules do, then changes no token."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_byte = {c: b for b, c in bytes_to_unicode().items()}  # GPT-2 shows each byte as a printable character
    for token in vocab:
        text = bytes(to_byte[c] for c in token if c in to_byte).decode("utf-8", errors="replace")
        if len(text) > 1 and any(unicodedata.category(c).startswith("N") for c in text):
            return False
    return True


def pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the split rules of a byte-level tokenizer, for the shapes we recognise; 'default' else
    (text tokenised inside llama.cpp may then differ; token ids fed directly, as gguf-check does, are exact)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex")) for s in steps]
    if kinds == [("Digits", True, None), ("ByteLevel", None, True)]:
        return "smollm"  # SmolLM/SmolLM2 on the hub: digits one by one, then GPT-2's rules
    if (
        kinds == [("Split", None, None), ("ByteLevel", None, False)]
        and tokenizer_json["model"].get("ignore_merges")
        and steps[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT
        and steps[0].get("behavior") == "Isolated"
    ):
        return "llama-bpe"  # Llama-3 and 3.1: its split regex, and whole words in the vocab skip the merges
    if kinds == [("ByteLevel", None, True)]:
        # GPT-2's rules. transformers rebuilds a GGUF's tokenizer (SmolLM2's, as `streamline download` converts it)
        # without its digit step; for a vocabulary in which numbers always stand alone that step changes nothing,
        # and llama.cpp's converter names SmolLM2's such vocabulary 'smollm'.
        return "smollm" if _numbers_stand_alone(tokenizer_json["model"]["vocab"]) else "gpt-2"
    log.warning("pre-tokenizer %s not recognised; writing 'default' (feed token ids for exact results)", kinds)
    return "default"


def _merge_scores(tokenizer_json: dict, vocab: dict[str, int]) -> tuple[dict[int, float], bool]:
    """SPM scores: minus the rank of the first merge making each token; and whether scores reproduce the merges
    (every pair of tokens whose concatenation is a token is a merge)."""
    merges = _merges(tokenizer_json)
    scores: dict[int, float] = {}
    for rank, (a, b) in enumerate(merges):
        if a + b in vocab:
            scores.setdefault(vocab[a + b], -float(rank))
    pairs = set(merges)
    exact = all((t[:i], t[i:]) in pairs for t in vocab for i in range(1, len(t)) if t[:i] in vocab and t[i:] in vocab)
    return scores, exact


def _adds(tok) -> tuple[bool, bool]:
    """Whether the HF tokenizer adds BOS and EOS to a text (add_special_tokens=True)."""
    plain, full = tok("a", add_special_tokens=False)["input_ids"], tok("a")["input_ids"]
    bos = tok.bos_token_id is not None and len(full) > len(plain) and full[0] == tok.bos_token_id
    eos = tok.eos_token_id is not None and len(full) > len(plain) and full[-1] == tok.eos_token_id
    return bos, eos


def add_tokenizer(writer, model_dir: Path, vocab_size: int) -> None:
    """Token list, types (and scores or merges), special ids, add_bos/add_eos and the chat template. The list is
    padded to the model's vocab_size, as llama.cpp requires one entry per embedding row."""
    import gguf
    from transformers import AutoTokenizer

    from .pruned import read_config

    T = gguf.TokenType
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise StreamlineError(f"{model_dir}: no tokenizer.json the GGUF export can read")
    tokenizer_json = json.loads(path.read_text())
    model = tokenizer_json.get("model") or {}
    byte_fallback = bool(model.get("byte_fallback"))
    decoder = (tokenizer_json.get("decoder") or {}).get("type")
    if model.get("type") != "BPE" or (not byte_fallback and decoder != "ByteLevel"):
        raise StreamlineError(
            f"{model_dir}: a {model.get('type')} tokenizer with a {decoder} decoder; the GGUF export "
            f"writes byte-level BPE (GPT-2, Llama-3) and byte-fallback BPE (Llama-2) tokenizers"
        )
    try:
        tok = AutoTokenizer.from_pretrained(model_dir, config=read_config(model_dir))  # no remote-code prompt
    except (OSError, ValueError, KeyError) as e:
        raise StreamlineError(f"{model_dir}: the HF tokenizer does not load ({str(e).splitlines()[0]})") from None
    vocab = dict(model["vocab"])
    added = {t["id"]: t for t in tokenizer_json.get("added_tokens", [])}
    text_of = {i: t for t, i in vocab.items()} | {i: t["content"] for i, t in added.items()}
    if max(text_of) >= vocab_size:
        raise StreamlineError(
            f"{model_dir}: the tokenizer has token id {max(text_of)}, beyond the model's vocab_size {vocab_size}"
        )
    kind = "llama" if byte_fallback else "gpt2"
    scores, exact = _merge_scores(tokenizer_json, vocab) if kind == "llama" else ({}, True)
    tokens, types = [], []
    for i in range(vocab_size):
        text = text_of.get(i)
        if text is None:  # an embedding row no token uses
            tokens.append(f"[PAD{i}]".encode())
            types.append(T.UNUSED)
            continue
        tokens.append(text.encode())
        if i in added:
            types.append(T.CONTROL if added[i].get("special") else T.USER_DEFINED)
        elif kind == "llama" and BYTE_TOKEN.fullmatch(text):
            types.append(T.BYTE)
        else:
            types.append(T.NORMAL)
    writer.add_tokenizer_model(kind)
    writer.add_tokenizer_pre(pre_tokenizer(tokenizer_json) if kind == "gpt2" else "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if kind == "llama":
        writer.add_token_scores([scores.get(i, 0.0) for i in range(vocab_size)])
        if not exact:
            log.warning(
                "%s: some pairs of tokens join into a token without a merge saying so; llama.cpp's SPM "
                "tokenizer may split text differently from HF's (token ids fed directly are exact)",
                model_dir,
            )
    special = gguf.SpecialVocab(model_dir, load_merges=kind == "gpt2", n_vocab=vocab_size)
    special.add_special_token = dict(zip(("bos", "eos"), _adds(tok)))
    special.add_to_gguf(writer, quiet=True)
