"""Losses: each one is a function of the ReplacedModel and a batch, returning {"loss", "count"}.

`loss` is the mean over the `count` terms it averages (tokens), so validation can weight batches by
their token counts. A batch holds either stored hidden-state pairs (x, y, attention_mask) or token
blocks (input_ids, attention_mask); the MSE loss takes pairs from either (online: the frozen prefix
and the original block compute them).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .model import ReplacedModel


def _mean(values: torch.Tensor, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    count = weight.sum()
    return {"loss": (values * weight).sum() / count.clamp(min=1), "count": count}


# --- hidden-state MSE ---------------------------------------------------------------------------------


def pairs(m: ReplacedModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h_b, h_{b+n+k}, mask): stored in the batch, or computed online by the frozen prefix and the original block."""
    if "x" in batch:
        return batch["x"], batch["y"], batch["attention_mask"]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    h = batch["h"] if "h" in batch else m.prefix(ids, mask)  # validation caches the frozen prefix's output
    return h, m.target(h, mask), mask


def outlier_positions(target: torch.Tensor, weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """Positions whose target norm exceeds `ratio` x the median norm of the batch's real tokens.

    These are the massive activations of attention sinks (Sun et al. 2024): the first token of a block,
    but also a BOS or a delimiter anywhere in unpacked data, so they are found by norm, not by index.
    """
    norms = target.float().norm(dim=-1)
    real = norms[weight > 0]
    if real.numel() == 0:
        return torch.zeros_like(norms, dtype=torch.bool)
    return norms > ratio * real.median()


def mse_per_token(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str = "plain", outlier_ratio: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token error [B, T], weight [B, T]) of one of the MSE options (train.mse_loss):

    plain       mean squared error (the paper): a few massive positions can be nearly all of it
    robust      plain, with outlier positions (target norm > outlier_ratio x median) left out
    normalized  ||pred - y||^2 / ||y||^2: every position counts by its relative error
    cosine      (1 - cos(pred, y)) + log(||pred|| / ||y||)^2: direction and magnitude, scale-free
    """
    pred, target = pred.float(), target.float()
    if kind == "plain":
        return (pred - target).pow(2).mean(-1), weight
    if kind == "robust":
        return (pred - target).pow(2).mean(-1), weight * ~outlier_positions(target, weight, outlier_ratio)
    if kind == "normalized":
        return (pred - target).pow(2).sum(-1) / target.pow(2).sum(-1).clamp(min=1e-12), weight
    if kind == "cosine":
        cos = F.cosine_similarity(pred, target, dim=-1)
        log_ratio = torch.log(pred.norm(dim=-1).clamp(min=1e-12) / target.norm(dim=-1).clamp(min=1e-12))
        return (1 - cos) + log_ratio.pow(2), weight
    raise ValueError(f"unknown mse loss {kind!r}")


def mse(
    m: ReplacedModel, batch: dict, kind: str = "plain", skip_first_tokens: int = 0, outlier_ratio: float = 10.0
) -> dict[str, torch.Tensor]:
    """The network's output against h_{b+n+k}, over real tokens, by one of the MSE options.

    The first position of a block is an attention sink whose hidden state is ~100x larger than the
    others; under plain MSE its squared error can be >95% of the loss. `skip_first_tokens` leaves the
    first k positions out by index; kind "robust" leaves out every such position by its norm.
    """
    x, y, mask = pairs(m, batch)
    pred = m.network(x.float(), mask.long())
    weight = mask.float()
    weight[:, :skip_first_tokens] = 0
    per_token, weight = mse_per_token(pred, y, weight, kind, outlier_ratio)
    return _mean(per_token, weight)


# --- next-token losses, over chunks of positions ----------------------------------------------------------
# Logits are a batch's largest tensors: 8 x 256 x 49,152 in fp32 is 400 MB for SmolLM2, 8 x 2048 x 128,256 is
# 8.4 GB for Llama-3, and a KD step would hold several (student, teacher, their log-softmaxes, the gradient).
# So the head and the loss run over chunks of positions, and each chunk's gradient with respect to its hidden
# states is taken at once: at most one chunk's logits exist at any time, and nothing is recomputed later.

CHUNK_LOGITS = 2**24  # logits alive at once (64 MB in fp32); positions per chunk = this // vocabulary size
# On a GPU a 128-row chunk (Llama-3's vocabulary) is too small a matmul to keep the tensor cores busy, and the
# per-chunk launches add up: chunks there hold 8x more (512 MB of fp32 logits, ~1,000 positions).
CHUNK_LOGITS_GPU = 2**27


class _SumOverChunks(torch.autograd.Function):
    """sum_c fn(hidden[c], c) over chunks c of rows, with d/d hidden computed chunk by chunk in the forward pass."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, fn: Callable, rows: int) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0]
        grad = torch.zeros_like(hidden) if need_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            part = hidden[start : start + rows].detach().requires_grad_(need_grad)
            with torch.set_grad_enabled(need_grad):
                value = fn(part, slice(start, start + rows))
            if need_grad:
                grad[start : start + rows] = torch.autograd.grad(value, part)[0]
            total += value.detach()
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None


def sum_over_chunks(
    head: Callable[[torch.Tensor], torch.Tensor],
    vocab_size: int,
    hidden: torch.Tensor,
    fn: Callable[[torch.Tensor, slice], torch.Tensor],
) -> torch.Tensor:
    """sum of fn(logits of a chunk of positions, the chunk's slice of the flattened positions) over a batch.

    `hidden` is the last layer's output [B, T, D] (or [B*T, D]) and `head` makes fp32 logits from it; `fn`
    returns a scalar. The backward pass only multiplies the gradients taken chunk by chunk.
    """
    flat = hidden.reshape(-1, hidden.shape[-1])
    rows = max(1, (CHUNK_LOGITS_GPU if flat.is_cuda else CHUNK_LOGITS) // vocab_size)
    return _SumOverChunks.apply(flat, lambda part, chunk: fn(head(part), chunk), rows)


def _student_hidden(m: ReplacedModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(the pruned model's last hidden states, h_b)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    h = batch["h"] if "h" in batch else m.prefix(ids, mask)  # validation caches the frozen prefix's output
    return m.suffix(m.network(h, mask), mask), h


def _next_tokens(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, weight) per flattened position: position t predicts token t+1, counted when that token is real."""
    target, weight = torch.zeros_like(ids, dtype=torch.long), torch.zeros(mask.shape, device=mask.device)
    target[:, :-1], weight[:, :-1] = ids[:, 1:], mask[:, 1:]
    return target.reshape(-1), weight.reshape(-1)


def _nll_sum(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (F.cross_entropy(logits, target, reduction="none") * weight).sum()


def ce(m: ReplacedModel, batch: dict) -> dict[str, torch.Tensor]:
    """The LLM loss: mean next-token cross-entropy of the pruned model over real target tokens."""
    student, _ = _student_hidden(m, batch)
    target, weight = _next_tokens(batch["input_ids"], batch["attention_mask"])

    def nll(logits: torch.Tensor, c: slice) -> torch.Tensor:
        return _nll_sum(logits, target[c], weight[c])

    total = sum_over_chunks(m.head, m.model.config.vocab_size, student, nll)
    count = weight.sum()
    return {"loss": total / count.clamp(min=1), "count": count}


def kl_per_token(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, top_k: int = 0
) -> torch.Tensor:
    """KL(p_teacher^T || p_student^T) at each position ([..., V] logits -> [...]).

    top_k > 0: the teacher's top-k probabilities, renormalised, against the student's full-vocabulary
    log-probabilities at those tokens (sparse KD as DistillKit does it); its minimum is not 0 but
    -log of the student's mass on those tokens, and it pulls that mass onto them.
    """
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = teacher.float() / temperature
    if top_k:
        t, idx = t.topk(top_k, dim=-1)
        s = s.gather(-1, idx)
    log_t = F.log_softmax(t, dim=-1)
    return (log_t.exp() * (log_t - s)).sum(-1)


def kd(
    m: ReplacedModel, batch: dict, temperature: float = 1.0, alpha: float = 1.0, top_k: int = 0
) -> dict[str, torch.Tensor]:
    """alpha * T^2 * KL(teacher^T || student^T) + (1 - alpha) * CE, each a mean over real tokens.

    The teacher is the original model sharing the student's frozen layers: the prefix runs once for
    both, then the original block, then the same suffix and head weights.
    """
    student, h = _student_hidden(m, batch)
    mask = batch["attention_mask"]
    with torch.no_grad():
        teacher = m.suffix(m.target(h, mask), mask).reshape(-1, student.shape[-1])
    kl_weight = mask.reshape(-1).float()
    target, ce_weight = _next_tokens(batch["input_ids"], mask)
    kl_scale = alpha * temperature**2 / kl_weight.sum().clamp(min=1)
    ce_scale = (1 - alpha) / ce_weight.sum().clamp(min=1)

    def chunk_loss(logits: torch.Tensor, c: slice) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = m.head(teacher[c])
        loss = kl_scale * (kl_per_token(logits, teacher_logits, temperature, top_k) * kl_weight[c]).sum()
        if alpha < 1:
            loss = loss + ce_scale * _nll_sum(logits, target[c], ce_weight[c])
        return loss

    return {"loss": sum_over_chunks(m.head, m.model.config.vocab_size, student, chunk_loss), "count": kl_weight.sum()}


def kl(m: ReplacedModel, batch: dict) -> dict[str, torch.Tensor]:
    """Validation: mean per-token KL(original || pruned) at temperature 1, full vocabulary."""
    return kd(m, batch)
