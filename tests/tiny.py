"""Tiny random models, a tiny tokenizer and prepared-data dirs, built in about a second: the tests' helpers
(conftest.py holds the fixtures that use them)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig, PreTrainedTokenizerFast

CORPUS = [
    "the quick brown fox jumps over the lazy dog . " * 3,
    "a stitch in time saves nine , and the early bird catches the worm .",
    "to be or not to be , that is the question , whether tis nobler in the mind .",
    "all that glitters is not gold ; often have you heard that told .",
] * 20


def build_tokenizer(
    special_tokens: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>"), chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style); the first four special tokens are unk, BOS, EOS and pad, ids 0..3."""
    tok = Tokenizer(models.BPE(unk_token=special_tokens[0]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=list(special_tokens), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.decoder = decoders.ByteLevel()
    unk, bos, eos, pad = special_tokens
    chat = {"chat_template": chat_template} if chat_template else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=unk, bos_token=bos, eos_token=eos, pad_token=pad, **chat
    )


# SmolLM2's chat format: ChatML, whose <|im_start|> is also the BOS token and <|im_end|> the EOS.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA2_CHAT = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + "
    "message['content'].strip() + ' [/INST]' }}{% else %}{{ ' ' + message['content'].strip() + ' ' + "
    "eos_token }}{% endif %}{% endfor %}"
)


def build_chat_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with ChatML's special tokens in the base vocab, as SmolLM2 has them."""
    return build_tokenizer(("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"), chat_template=CHATML)


def build_spm_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-2-style tokenizer.json: BPE with byte fallback over text whose spaces are '▁' (one prepended), BOS
    added, and the merges transformers writes when it converts a sentencepiece model: every pair of tokens that
    joins into a token, ordered by that token's id (sentencepiece's score order)."""
    from transformers.tokenization_utils_base import generate_merges

    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trained = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    trained.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials + byte_tokens))
    vocab = trained.get_vocab()
    merges = generate_merges(vocab, skip_tokens=specials + byte_tokens)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = trained.normalizer
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", chat_template=LLAMA2_CHAT
    )


def tiny_model_config(family: str, vocab_size: int, layers: int = 6, positions: int = 256):
    if family == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=positions,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
            tie_word_embeddings=False,
        )
    if family == "opt":
        return OPTConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=positions,
            word_embed_proj_dim=32,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
            dropout=0.0,
            attention_dropout=0.0,
        )
    raise ValueError(family)


def build_tiny_model(
    family: str,
    out: Path,
    layers: int = 6,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    positions: int = 256,
) -> Path:
    """`positions`: the context window (few-shot generation needs prompt + 256 generated tokens)."""
    tok = tokenizer or build_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_model_config(family, len(tok), layers, positions))
    # Random init gives near-identical layers; scale weights up so blocks differ measurably.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_data_dir(
    path: Path,
    num: int = 10,
    seq_len: int = 16,
    pad_every: int = 3,
    vocab: int = 300,
    seed: int = 0,
    pattern: str = "random",
) -> Path:
    """A prepared-data directory in the data stage's format, with some right-padded blocks.

    pattern "random": uniform token ids; "arithmetic": each block counts up from a random start by a
    random step of 1..3 (mod vocab), which a tiny model learns (see `trained_llama_dir`).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    from streamline.manifests import DataMeta

    meta = {
        "source": f"synthetic:{pattern}",
        "seq_len": seq_len,
        "pack": False,
        "seed": seed,
        "counts": {},
        "tokens": {},
        "documents": {},
        "vocab_size": vocab,
    }
    for split in ("calib", "train", "val"):
        ids = sequences(rng, num, seq_len, vocab, pattern)
        mask = np.ones_like(ids, dtype=np.uint8)
        for i in range(0, num, pad_every):
            cut = seq_len // 2 + i % (seq_len // 2)
            mask[i, cut:] = 0
            ids[i, cut:] = 3
        np.save(path / f"{split}_input_ids.npy", ids)
        np.save(path / f"{split}_attention_mask.npy", mask)
        meta["counts"][split], meta["tokens"][split], meta["documents"][split] = num, int(mask.sum()), num
    DataMeta(**meta).write(path / "meta.json")
    return path


def sequences(rng, num: int, seq_len: int, vocab: int, pattern: str):
    import numpy as np

    if pattern == "random":
        return rng.integers(4, vocab, size=(num, seq_len)).astype(np.int32)
    start, step = rng.integers(0, vocab - 4, num), rng.integers(1, 4, num)
    return (4 + (start[:, None] + step[:, None] * np.arange(seq_len)) % (vocab - 4)).astype(np.int32)


def holds_only_the_finished_state(checkpoint_dir: Path) -> bool:
    """A completed run's checkpoint dir: progress.json marked done and the kept weights, no resumable state."""
    names = sorted(p.name for p in Path(checkpoint_dir).iterdir() if p.name != ".streamline")  # the owner's marker
    progress = json.loads((Path(checkpoint_dir) / "progress.json").read_text())
    return (
        progress.get("done") is True
        and len(names) == 2
        and names[0].startswith("best-")
        and names[1] == "progress.json"
    )


def write_scores(path: Path, n: int, span: int, best: int, num_layers: int = 6) -> Path:
    """A scores.json as score writes it, whose best window of `span` layers starts at `best`."""
    from streamline.artifacts import BlockScores, WindowScore

    block = list(range(best, best + span))
    windows = [
        WindowScore(start=i, end=i + span - 1, score=0.9 if i == best else 0.5) for i in range(num_layers - span + 1)
    ]
    scores = BlockScores(
        metric="cosine",
        higher_is_more_redundant=True,
        n=n,
        span=span,
        num_layers=num_layers,
        samples=8,
        tokens=128,
        scores=windows,
        best_start=best,
        best_score=0.9,
        block=block,
        removed_layers=block[1:] if span == n + 1 else block,
        layers_after=num_layers - n,
    )
    scores.write(path)
    return path
