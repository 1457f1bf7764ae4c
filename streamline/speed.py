"""Measured inference speed of a pruned model against its original, next to the ideal.

Both models run in one process on the same device, threads, batch and tokens, alternating, and
each keeps its best of `repeats` timings, so a shared or throttled machine hurts both alike.

- prefill: one forward pass over `batch` full blocks; tokens/s = batch x block length / time.
- decode: greedy steps of one token with the KV cache, after an untimed prompt of `prompt_tokens`;
  tokens/s = batch x steps / time.

The ideal speedup is what the arithmetic allows: for prefill, the ratio of FLOPs per token (counted
by torch's FlopCounterMode on a forward of the same length, attention included); for decode, which streams every
weight once per step, the ratio of the weight bytes a step reads (every parameter, except an input
embedding table that is not also the output head: a lookup reads one row of it).
"""

from __future__ import annotations

import inspect
import time

import numpy as np
import torch

from . import timing
from .artifacts import Speed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _prefill_seconds(model, ids: torch.Tensor) -> float:
    _sync(ids.device)
    t0 = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    _sync(ids.device)
    return time.perf_counter() - t0


def _cache_arg(model) -> str:
    """The KV-cache keyword of the model's forward: `cache` (transformers 5.x), else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def _decode_seconds(model, prompt: torch.Tensor, steps: int) -> float:
    arg = _cache_arg(model)
    out = model(input_ids=prompt, use_cache=True)
    cache, tok = getattr(out, arg), out.logits[:, -1:].argmax(-1)
    _sync(prompt.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=tok, use_cache=True, **{arg: cache})
        cache, tok = getattr(out, arg), out.logits[:, -1:].argmax(-1)
    _sync(prompt.device)
    return time.perf_counter() - t0


@torch.inference_mode()
def flops_per_token(model, seq_len: int) -> float:
    """Forward FLOPs per token of a (1, seq_len) prefill, as torch's FlopCounterMode counts them.

    Counted with eager attention, whose score and value products are plain matmuls the counter sees
    (it has no formula for the fused CPU attention kernel, which would leave attention out).
    """
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.zeros(1, seq_len, dtype=torch.long, device=model.device)
    attn = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with FlopCounterMode(display=False) as counter:
            model(input_ids=ids, use_cache=False)
    finally:
        model.set_attn_implementation(attn)
    return counter.get_total_flops() / seq_len


def decode_weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: all of them but an untied input embedding table."""
    skip = set()
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if emb is not None and (head is None or head.weight is not emb.weight):
        skip.add(id(emb.weight))
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen and id(p) not in skip:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def measure_speedup(
    pruned,
    original,
    input_ids: np.ndarray,
    batch_size: int,
    *,
    decode_steps: int = timing.DECODE_STEPS,
    prompt_tokens: int = timing.PROMPT_TOKENS,
    repeats: int = timing.REPEATS,
) -> Speed:
    """Prefill and decode tokens/s of both models and their ratios, measured and ideal."""
    t_start = time.perf_counter()
    device = pruned.device
    batch = torch.from_numpy(np.array(input_ids[:batch_size], dtype=np.int64)).to(device)
    b, t = batch.shape
    prompt = batch[:, : min(prompt_tokens, t)]
    models = {"pruned": pruned, "original": original}
    threads = torch.get_num_threads() if device.type == "cpu" else None
    timed = timing.time_phases(
        {"prefill": lambda m: _prefill_seconds(m, batch), "decode": lambda m: _decode_seconds(m, prompt, decode_steps)},
        models,
        repeats,
        threads,
    )
    prefill, decode = timed.best["prefill"], timed.best["decode"]
    flops = {k: flops_per_token(m, t) for k, m in models.items()}
    weight_bytes = {k: decode_weight_bytes(m) for k, m in models.items()}
    return Speed(
        device=str(device),
        threads=threads,
        batch=b,
        prefill_tokens=t,
        decode_prompt_tokens=int(prompt.shape[1]),
        decode_steps=decode_steps,
        repeats=repeats,
        prefill_tokens_per_s={k: b * t / s for k, s in prefill.items()},
        decode_tokens_per_s={k: b * decode_steps / s for k, s in decode.items()},
        flops_per_token=flops,
        decode_weight_bytes=weight_bytes,
        speedup={"prefill": prefill["original"] / prefill["pruned"], "decode": decode["original"] / decode["pruned"]},
        ideal={
            "prefill": flops["original"] / flops["pruned"],
            "decode": weight_bytes["original"] / weight_bytes["pruned"],
        },
        wall_time_s=round(time.perf_counter() - t_start, 2),
        **timed.trust(),
    )
