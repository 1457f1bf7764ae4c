"""Losses: each one is a function of the ReplacedModel and a batch, returning {"loss", "count"}.

`loss` is the mean over the `count` terms it averages (tokens), so validation can weight batches by
their token counts. A batch holds either stored hidden-state pairs (x, y, attention_mask) or token
blocks (input_ids, attention_mask); the MSE loss takes pairs from either (online: the frozen prefix
and the original block compute them).
"""

from __future__ import annotations

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


def mse_per_token(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str = "plain",
                  outlier_ratio: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
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


def mse(m: ReplacedModel, batch: dict, kind: str = "plain", skip_first_tokens: int = 0,
        outlier_ratio: float = 10.0) -> dict[str, torch.Tensor]:
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


# --- next-token losses ----------------------------------------------------------------------------------

def _student_logits(m: ReplacedModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    h = batch["h"] if "h" in batch else m.prefix(ids, mask)  # validation caches the frozen prefix's output
    return m.logits(m.network(h, mask), mask), h, mask


def _next_token_ce(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean next-token cross-entropy over positions whose target token is real (not padding)."""
    keep = mask[:, 1:].bool()
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:].long(), reduction="none")
    return _mean(nll, keep.float())


def ce(m: ReplacedModel, batch: dict) -> dict[str, torch.Tensor]:
    """The LLM loss: next-token cross-entropy of the pruned model."""
    logits, _, mask = _student_logits(m, batch)
    return _next_token_ce(logits, batch["input_ids"], mask)


def _teacher_logits(m: ReplacedModel, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m.logits(m.target(h, mask), mask)


def kl_per_token(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                 top_k: int = 0) -> torch.Tensor:
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


def kd(m: ReplacedModel, batch: dict, temperature: float = 1.0, alpha: float = 1.0,
       top_k: int = 0) -> dict[str, torch.Tensor]:
    """alpha * T^2 * KL(teacher^T || student^T) + (1 - alpha) * CE, over real tokens.

    The teacher is the original model; it shares the prefix and the suffix with the student, which
    are run once for both (prefix) or with the frozen weights held once (suffix).
    """
    student, h, mask = _student_logits(m, batch)
    teacher = _teacher_logits(m, h, mask)
    out = _mean(kl_per_token(student, teacher, temperature, top_k), mask.float())
    out["loss"] = alpha * temperature ** 2 * out["loss"]
    if alpha < 1:
        out["loss"] = out["loss"] + (1 - alpha) * _next_token_ce(student, batch["input_ids"], mask)["loss"]
    return out


def kl(m: ReplacedModel, batch: dict) -> dict[str, torch.Tensor]:
    """Validation: mean per-token KL(original || pruned) at temperature 1, full vocabulary."""
    student, h, mask = _student_logits(m, batch)
    return _mean(kl_per_token(student, _teacher_logits(m, h, mask)), mask.float())
