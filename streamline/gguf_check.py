"""Measure a GGUF export inside llama.cpp (llama-cpp-python, the optional [gguf] extra).

- Perplexity on the prepared data's held-out blocks. Token ids are fed directly, so llama.cpp sees
  exactly the tokens streamline's own perplexity (evaluate.score_blocks) sees, and the two numbers are
  comparable: the same predicted positions (those whose target is unmasked), exp of the mean NLL.
- Speed of the pruned model against the original, both in llama.cpp, in one process, alternating, best
  of `repeats`, as streamline/speed.py does for PyTorch: prefill tokens/s (one block evaluated from an
  empty cache) and decode tokens/s (one token per step after a prompt), at batch 1, llama.cpp's shape.
- The ideal speedup next to it, by the project's definitions, counted from the GGUF files themselves:
  prefill, the ratio of FLOPs per token (2 per weight of every matrix product, plus the attention's
  score and value products over the block); decode, the ratio of the weight bytes a step reads (every
  stored tensor, as stored, except an untied token_embd: a lookup reads one row). Unlike a PyTorch
  forward, a llama.cpp prefill computes the output head for the last position only, so the head counts
  once per block there (with it at every position the ideal would be 1.272x instead of 1.363x for
  SmolLM2 30 -> 22 layers, and llama.cpp measurably beats it).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import timing
from .artifacts import LlamaCppCheck, LlamaCppSpeed
from .errors import StreamlineError

log = logging.getLogger(__name__)


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise StreamlineError(
            "llama_cpp is not installed: install the [gguf] extra (pip install -e '.[gguf]', compiles llama.cpp)"
        ) from None
    return llama_cpp


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def _model_params(**fields: Any) -> Iterator[None]:
    """Set llama_model_params fields that llama_cpp.Llama does not expose, while a Llama is constructed (it
    starts from llama_model_default_params())."""
    import llama_cpp.llama as high_level

    default = high_level.llama_cpp.llama_model_default_params

    def patched():
        params = default()
        for key, value in fields.items():
            setattr(params, key, value)
        return params

    high_level.llama_cpp.llama_model_default_params = patched
    try:
        yield
    finally:
        high_level.llama_cpp.llama_model_default_params = default


def load_gguf(path: str | Path, n_ctx: int, logits_all: bool, threads: int | None = None, extra_buffers: bool = False):
    """A llama.cpp model with a context of n_ctx tokens, evaluated in one batch of up to n_ctx tokens.

    extra_buffers=False turns off ggml's extra CPU buffer types (AMX and repacked weights): with them, every
    quantised model (our q8_0, and the Q4_1 SmolLM2 file llama.cpp's own tools wrote) segfaults in
    ggml_backend_amx_mul_mat on an AMX-reporting Xeon (llama-cpp-python 0.3.36). f16/f32 do not use them.
    """
    llama_cpp = _llama_cpp()
    if not Path(path).is_file():
        raise StreamlineError(f"{path}: no such GGUF file")
    threads = threads or default_threads()
    try:
        with _model_params(use_extra_bufts=extra_buffers):
            return llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=n_ctx,
                logits_all=logits_all,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
    except (ValueError, RuntimeError, OSError) as e:  # a truncated or foreign file: llama.cpp refuses to load it
        from .ownership import move_aside, shown

        aside = move_aside(path)  # so that the export that wrote it reruns
        raise StreamlineError(
            f"{path}: llama.cpp cannot load it ({str(e).splitlines()[0] if str(e) else type(e).__name__}"
            f"); moved it to {shown(aside, path)}; run the workflow again to export it again"
        ) from None


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def block_logits(llm, ids: np.ndarray) -> np.ndarray:
    """[len(ids), vocab] logits of one sequence, from an empty cache (the model needs logits_all=True)."""
    llm.reset()
    llm.eval([int(t) for t in ids])
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def gguf_perplexity(llm, input_ids: np.ndarray, attention_mask: np.ndarray, where: str = "the data") -> dict[str, Any]:
    """exp(mean next-token NLL) over the predicted tokens whose target is unmasked (blocks are right-padded,
    so that is the unmasked prefix of each block), with the NLL per block. `where`: the split, for errors."""
    nll, tokens = [], []
    for index, (ids, mask) in enumerate(zip(np.asarray(input_ids), np.asarray(attention_mask))):
        n = int(mask.sum())
        if n < 2:
            nll.append(0.0)
            tokens.append(0)
            continue
        if not mask[:n].all():
            raise StreamlineError(
                f"{where}: block {index}'s attention_mask is not right-padded (llama.cpp scores "
                f"a prefix of real tokens); prepare the data again with streamline prepare-data"
            )
        logp = _log_softmax(block_logits(llm, ids[:n])[:-1])
        nll.append(float(-logp[np.arange(n - 1), ids[1:n]].sum()))
        tokens.append(n - 1)
    count = sum(tokens)
    if count == 0:
        raise StreamlineError(
            f"{where}: no unmasked tokens to score; prepare the data again with streamline prepare-data"
        )
    ppl = math.exp(sum(nll) / count)
    if not math.isfinite(ppl):
        raise StreamlineError(f"llama.cpp perplexity is not finite ({ppl}); the export is broken")
    return {"perplexity": ppl, "tokens": count, "nll_per_block": nll, "tokens_per_block": tokens}


def _prefill_seconds(llm, ids: list[int]) -> float:
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    return time.perf_counter() - t0


def _decode_seconds(llm, prompt: list[int], steps: list[int]) -> float:
    """Seconds for len(steps) one-token evaluations after an untimed prompt. The tokens are the block's own
    next tokens: a step's cost does not depend on which token it is."""
    llm.reset()
    llm.eval(prompt)
    t0 = time.perf_counter()
    for token in steps:
        llm.eval([token])
    return time.perf_counter() - t0


def _hparam(reader, key: str, default: Any = None) -> Any:
    """`{architecture}.{key}` of a GGUF (llama or deci); a per-layer array comes back as a list."""
    field = reader.fields.get(f"{reader.fields['general.architecture'].contents()}.{key}")
    return default if field is None else field.contents()


def check_data_fits(reader, gguf_file: str | Path, ids: np.ndarray, where: str) -> None:
    """Token ids outside the GGUF's vocabulary make llama.cpp abort the process, and blocks longer than its
    context are positions it never trained on: either means the data was prepared for another model."""
    vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    context = _hparam(reader, "context_length")
    top = int(np.asarray(ids).max(initial=0))
    if top >= vocab:
        raise StreamlineError(
            f"{where}: token id {top} is outside {Path(gguf_file).name}'s vocabulary of {vocab}; "
            f"the data was tokenised for another model: prepare it with this model's tokenizer"
        )
    if context is not None and ids.shape[1] > int(context):
        raise StreamlineError(
            f"{where}: blocks of {ids.shape[1]} tokens exceed {Path(gguf_file).name}'s context of "
            f"{int(context)}; lower seq_len"
        )


def gguf_costs(path: str | Path, seq_len: int) -> dict[str, float]:
    """FLOPs per token of a seq_len prefill and weight bytes per decode step, from the file's tensors."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    layers = int(_hparam(reader, "block_count"))
    heads = _hparam(reader, "attention.head_count")
    heads = heads if isinstance(heads, list) else [heads] * layers  # deci: per layer, 0 for attention-free ones
    head_dim = _hparam(reader, "attention.key_length") or _hparam(reader, "embedding_length") // max(heads)
    tensors = {t.name: t for t in reader.tensors}
    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"  # tied: the embedding
    layer_weights = sum(
        int(t.n_elements) for name, t in tensors.items() if name.startswith("blk.") and len(t.shape) == 2
    )
    # the layers' matrices at every position, q.k and attn.v over the block, the head at the last position only
    flops = 2 * layer_weights + sum(heads) * 4 * seq_len * head_dim + 2 * int(tensors[head].n_elements) / seq_len
    tied = head == "token_embd.weight"
    read = sum(int(t.n_bytes) for name, t in tensors.items() if name != "token_embd.weight" or tied)
    return {"flops_per_token": float(flops), "decode_weight_bytes": read}


def measure_llamacpp_speedup(
    pruned,
    original,
    pruned_path: str | Path,
    original_path: str | Path,
    ids: np.ndarray,
    *,
    threads: int,
    decode_steps: int = timing.DECODE_STEPS,
    prompt_tokens: int = timing.PROMPT_TOKENS,
    repeats: int = timing.REPEATS,
) -> LlamaCppSpeed:
    """Prefill and decode tokens/s of both models in llama.cpp, their ratios, and the ideal ratios."""
    t_start = time.perf_counter()
    block = [int(t) for t in ids]
    # the block's own tokens, cycled when it is shorter than prompt + steps (the models' context holds both)
    stream = [block[i % len(block)] for i in range(prompt_tokens + decode_steps)]
    prompt, steps = stream[:prompt_tokens], stream[prompt_tokens:]
    models = {"pruned": pruned, "original": original}
    timed = timing.time_phases(
        {"prefill": lambda m: _prefill_seconds(m, block), "decode": lambda m: _decode_seconds(m, prompt, steps)},
        models,
        repeats,
        threads,
    )
    prefill, decode = timed.best["prefill"], timed.best["decode"]
    costs = {"pruned": gguf_costs(pruned_path, len(block)), "original": gguf_costs(original_path, len(block))}
    return LlamaCppSpeed(
        engine="llama.cpp",
        threads=threads,
        batch=1,
        prefill_tokens=len(block),
        decode_prompt_tokens=prompt_tokens,
        decode_steps=decode_steps,
        repeats=repeats,
        prefill_tokens_per_s={k: len(block) / s for k, s in prefill.items()},
        decode_tokens_per_s={k: decode_steps / s for k, s in decode.items()},
        flops_per_token={k: c["flops_per_token"] for k, c in costs.items()},
        decode_weight_bytes={k: c["decode_weight_bytes"] for k, c in costs.items()},
        speedup={"prefill": prefill["original"] / prefill["pruned"], "decode": decode["original"] / decode["pruned"]},
        ideal={
            "prefill": costs["original"]["flops_per_token"] / costs["pruned"]["flops_per_token"],
            "decode": costs["original"]["decode_weight_bytes"] / costs["pruned"]["decode_weight_bytes"],
        },
        wall_time_s=round(time.perf_counter() - t_start, 2),
        **timed.trust(),
    )


def gguf_check(
    gguf_file: str | Path,
    data_dir: str | Path,
    out: str | Path | None = None,
    *,
    original_gguf: str | Path | None = None,
    hf_model: str | Path | None = None,
    split: str = "val",
    threads: int | None = None,
    decode_steps: int = timing.DECODE_STEPS,
    prompt_tokens: int = timing.PROMPT_TOKENS,
    repeats: int = timing.REPEATS,
    extra_buffers: bool = False,
) -> LlamaCppCheck:
    """gguf.json: the GGUF's llama.cpp perplexity (`gguf_ppl`), with `original_gguf` the llama.cpp speedup over
    it (`speedup_llamacpp`, next to `speedup_llamacpp_ideal`), with `hf_model` streamline's own perplexity of
    that HF dir on the same blocks (`hf_ppl`) and the ratio."""
    import gguf

    from .data import load_split

    llama_cpp = _llama_cpp()
    ids, mask = load_split(Path(data_dir), split)
    seq_len = int(ids.shape[1])
    where = f"{data_dir} ({split})"
    t0 = time.perf_counter()
    # loaded first: a file llama.cpp cannot load is one line and set aside there (gguf's own reader would raise)
    scorer = load_gguf(gguf_file, seq_len, logits_all=True, threads=threads, extra_buffers=extra_buffers)
    try:
        reader = gguf.GGUFReader(str(gguf_file))
        check_data_fits(reader, gguf_file, ids, where)  # before any token reaches llama.cpp
        ppl = gguf_perplexity(scorer, ids, mask, where)
    finally:
        scorer.close()  # now, not in __del__ at interpreter exit, where llama-cpp-python's cleanup can raise
    facts: dict[str, Any] = dict(
        gguf=str(gguf_file),
        file_type=int(reader.fields["general.file_type"].contents()),
        layers=int(_hparam(reader, "block_count")),
        data_dir=str(data_dir),
        split=split,
        blocks=int(len(ids)),
        tokens=ppl["tokens"],
        gguf_ppl=ppl["perplexity"],
        gguf_nll_per_block=ppl["nll_per_block"],
        gguf_tokens_per_block=ppl["tokens_per_block"],
        llama_cpp_python=getattr(llama_cpp, "__version__", None),
        extra_buffers=extra_buffers,
        ppl_seconds=round(time.perf_counter() - t0, 2),
    )
    if hf_model is not None:
        from .evaluate import perplexity

        hf_ppl = perplexity(str(hf_model), np.asarray(ids), np.asarray(mask), batch_size=8, device="cpu")
        facts.update(hf_model=str(hf_model), hf_ppl=hf_ppl, gguf_ppl_ratio_to_hf=ppl["perplexity"] / hf_ppl)
    if original_gguf is not None:
        full = [i for i in range(len(ids)) if mask[i].all()]
        if not full:
            raise StreamlineError(f"{data_dir}: no full {split} block to time prefill on")
        n_ctx = max(seq_len, prompt_tokens + decode_steps)
        pruned = load_gguf(gguf_file, n_ctx, logits_all=False, threads=threads, extra_buffers=extra_buffers)
        original = load_gguf(original_gguf, n_ctx, logits_all=False, threads=threads, extra_buffers=extra_buffers)
        speed = measure_llamacpp_speedup(
            pruned,
            original,
            gguf_file,
            original_gguf,
            ids[full[0]],
            threads=threads or default_threads(),
            decode_steps=decode_steps,
            prompt_tokens=prompt_tokens,
            repeats=repeats,
        )
        pruned.close()
        original.close()
        facts.update(
            original_gguf=str(original_gguf),
            speed_llamacpp=speed,
            speedup_llamacpp=speed.speedup,
            speedup_llamacpp_ideal=speed.ideal,
        )
    result = LlamaCppCheck(**facts)
    if out is not None:
        result.write(out)
    speed = result.speed_llamacpp
    log.info(
        "%s: llama.cpp perplexity %.3f%s%s",
        gguf_file,
        result.gguf_ppl,
        f" (HF {result.hf_ppl:.3f})" if result.hf_ppl is not None else "",
        " speedup prefill %.3fx (ideal %.3fx), decode %.3fx (ideal %.3fx)"
        % (speed.speedup["prefill"], speed.ideal["prefill"], speed.speedup["decode"], speed.ideal["decode"])
        if speed
        else "",
    )
    return result


# --- the command: streamline gguf-check ---------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .arguments import SPLITS, positive_int

    p.add_argument("--gguf", required=True, help="the GGUF to check")
    p.add_argument("--data", required=True, help="prepared data dir (resources/data/...)")
    p.add_argument("--out", help="gguf.json")
    p.add_argument("--original-gguf", help="the original model's GGUF: adds prefill/decode speedup over it")
    p.add_argument("--hf-model", help="the HF dir the GGUF came from: adds streamline's own perplexity of it")
    p.add_argument("--split", default="val", choices=SPLITS, help="the split of --data")
    p.add_argument("--threads", type=positive_int, help="llama.cpp threads (default: every core this process may use)")
    p.add_argument("--decode-steps", type=positive_int, default=32, help="tokens timed one at a time")
    p.add_argument("--prompt-tokens", type=positive_int, default=32, help="the untimed prompt before them")
    p.add_argument("--repeats", type=positive_int, default=3, help="timings per model (the best counts)")
    p.add_argument(
        "--extra-buffers",
        action="store_true",
        help="use ggml's AMX/repacked CPU weights (off: quantised models segfault in its AMX kernel on some Xeons)",
    )


def run(a: argparse.Namespace) -> None:
    import json

    result = gguf_check(
        a.gguf,
        a.data,
        a.out,
        original_gguf=a.original_gguf,
        hf_model=a.hf_model,
        split=a.split,
        threads=a.threads,
        decode_steps=a.decode_steps,
        prompt_tokens=a.prompt_tokens,
        repeats=a.repeats,
        extra_buffers=a.extra_buffers,
    )
    print(json.dumps({k: v for k, v in result.to_json().items() if not k.startswith(("gguf_nll", "gguf_tokens"))}))
