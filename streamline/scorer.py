"""lm-eval's HF backend, scoring each multiple-choice question's options in one pass over their shared context.

lm-eval's HF backend (HFLM) scores every option as a sequence of its own, context included: HellaSwag's
and OpenBookQA's context runs 4 times, ARC's 4-5 times (its logits cache only merges options of one
token, as BoolQ's and RTE's). `PackedLM` is HFLM with `loglikelihood` replaced: the requests lm-eval
sends for one question (one `doc_id` of one task) are tokenised exactly as HFLM tokenises them, and
their model inputs (context + continuation, last token dropped) are packed into ONE sequence:

    [ P | R_1 | R_2 | ... ]     P = the tokens every option's input starts with, R_j = the rest of option j's

with a block mask (a token of R_j sees P and R_j before it, nothing of the other options) and position
ids that restart after P for every R_j. Every token so sees exactly the tokens, at exactly the
positions, it sees in HFLM's own sequence for that option; the options' log-likelihoods and greedy
flags are then read as HFLM reads them. Short questions share a row (each its own block of the mask), so
a batch holds little padding, and the output head runs only at the (row, position) pairs a continuation is read at. Tasks, prompts, metrics and results stay lm-eval's own: only
the arithmetic is shared. The shared part is found on tokens, so it covers shared contexts (ARC,
HellaSwag, OBQA, BoolQ, RTE, MMLU) and shared sentence starts (WinoGrande, whose options differ in
the context).

Registered with lm-eval as `streamline-packed`; `eval.scorer: hf` runs lm-eval's own HFLM instead.
Falls back to HFLM's own path, per question, where packing cannot be exact: an input longer than the
model's window (HFLM truncates each option on its own), a seq2seq model, or an attention kernel that
takes no arbitrary mask (flash-attention).
"""

from __future__ import annotations

from itertools import accumulate

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM


def encode_request(lm: HFLM, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) exactly as lm-eval's `TemplateLM.loglikelihood` splits them."""
    if context == "":  # lm-eval conditions an empty context on the prefix token (BOS or EOS)
        cont = lm.tok_encode(continuation, add_special_tokens=False)
        return ([lm.prefix_token_id], cont) if lm.prefix_token_id != cont[0] else (cont[:1], cont[1:])
    return lm._encode_pair(context, continuation)


def shared_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest token prefix every sequence starts with."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


class Packed:
    """One question's options as one packed sequence: tokens, position ids, segment ids (0: the shared prefix,
    j + 1: option j's rest), and the positions whose logits predict each option's continuation."""

    def __init__(self, inputs: list[list[int]], conts: list[list[int]], ids: list[int]):
        p = shared_prefix(inputs)
        rests = [x[p:] for x in inputs]
        self.ids, self.conts = ids, conts
        self.tokens = inputs[0][:p] + [t for r in rests for t in r]
        self.positions = list(range(p)) + [p + i for r in rests for i in range(len(r))]
        self.segments = [0] * p + [j + 1 for j, r in enumerate(rests) for _ in r]
        starts = list(accumulate([p] + [len(r) for r in rests]))
        # option j's own sequence, as positions of the packed one; its last len(cont) logits predict the continuation
        self.picks = [(list(range(p)) + list(range(s, s + len(r))))[-len(c) :] for s, r, c in zip(starts, rests, conts)]


def fill_rows(packs: list[Packed]) -> list[list[Packed]]:
    """Questions into rows as long as the longest question (first-fit decreasing: longest first, each joins the
    first row it fits in), so that rows hold little padding."""
    rows: list[list[Packed]] = []
    free: list[int] = []
    order = sorted(packs, key=lambda p: -len(p.tokens))
    for pack in order:
        n = len(pack.tokens)
        j = next((j for j, f in enumerate(free) if f >= n), None)
        if j is None:
            rows.append([pack])
            free.append(len(order[0].tokens) - n)
        else:
            rows[j].append(pack)
            free[j] -= n
    return rows


def block_mask(questions: torch.Tensor, segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, L, L] additive mask: query q sees key k <= q of its own question (same `questions` id) that is in
    the question's shared prefix (segment 0) or in q's own segment. Padding (question -1) sees only itself,
    so no row is empty (an all-masked row is NaN in sdpa)."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    same_question = questions[:, :, None] == questions[:, None, :]
    see = causal & same_question & ((segments[:, None, :] == 0) | (segments[:, :, None] == segments[:, None, :]))
    see &= (questions >= 0)[:, :, None]
    see |= torch.eye(length, dtype=torch.bool, device=segments.device) & (questions < 0)[:, :, None]
    mask = torch.zeros(see.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~see, torch.finfo(dtype).min)[:, None]


@register_model("streamline-packed")
class PackedLM(HFLM):
    """HFLM whose `loglikelihood` runs each question's options as one packed sequence (see the module doc)."""

    def packable(self) -> bool:
        impl = getattr(self.model.config, "_attn_implementation", "eager") or "eager"
        return self.backend == "causal" and "flash" not in impl

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if not self.packable():
            return super().loglikelihood(requests, disable_tqdm)
        encoded = [encode_request(self, *r.args) for r in requests]
        questions: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            questions.setdefault((r.task_name, r.doc_id), []).append(i)
        fits, alone = [], []
        for ids in questions.values():
            too_long = any(len(encoded[i][0]) + len(encoded[i][1]) > self.max_length + 1 for i in ids)
            (alone if too_long else fits).append(ids)
        results: dict[int, tuple[float, bool]] = {}
        if alone:  # HFLM truncates each option from the left on its own: score those as HFLM does
            ids = [i for q in alone for i in q]
            reqs = [(requests[i].args, *encoded[i]) for i in ids]
            results.update(zip(ids, self._loglikelihood_tokens(reqs, disable_tqdm=True)))
        packs = [
            Packed([encoded[i][0] + encoded[i][1][:-1] for i in ids], [encoded[i][1] for i in ids], ids) for ids in fits
        ]
        step = self.batch_size if isinstance(self.batch_size, int) and self.batch_size > 0 else 1
        rows = fill_rows(packs)
        for b in range(0, len(rows), step):
            for pack, scored in self._score(rows[b : b + step]):
                results.update(zip(pack.ids, scored))
        for i, r in enumerate(requests):
            self.cache_hook.add_partial("loglikelihood", r.args, results[i])
        return [results[i] for i in range(len(requests))]

    @torch.no_grad()
    def _score(self, rows: list[list[Packed]]) -> list[tuple[Packed, list[tuple[float, bool]]]]:
        """One forward pass over a batch of rows of packed questions (right-padded): per question, per option,
        (summed log-likelihood, greedy?) as HFLM computes them."""
        length = max(sum(len(p.tokens) for p in row) for row in rows)
        tokens, positions, segments, questions, placed = [], [], [], [], []  # placed: (row, question, its start)
        for b, row in enumerate(rows):
            t, pos, seg, q = [], [], [], []
            for i, pack in enumerate(row):
                placed.append((b, pack, len(t)))
                t += pack.tokens
                pos += pack.positions
                seg += pack.segments
                q += [i] * len(pack.tokens)
            pad = length - len(t)
            tokens.append(t + [self.tokenizer.pad_token_id or 0] * pad)
            positions.append(pos + [0] * pad)
            segments.append(seg + [0] * pad)
            questions.append(q + [-1] * pad)

        def tensor(x: list[list[int]]) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.long, device=self.device)

        dtype = next(self.model.parameters()).dtype
        mask = block_mask(tensor(questions), tensor(segments), dtype if dtype.is_floating_point else torch.float32)
        # The body hands the head the positions some row's continuation is read at (`logits_to_keep`, the
        # same ones in every row); a pre-hook on the head then keeps only each row's own (row, position)
        # pairs, so the head (vocabulary-wide: a fifth of a small model's FLOPs) runs once per token scored.
        keep = sorted({start + i for _, pack, start in placed for pick in pack.picks for i in pick})
        column = {pos: k for k, pos in enumerate(keep)}
        wanted = [(b, start + i) for b, pack, start in placed for pick in pack.picks for i in pick]
        rows_at = tensor([[b for b, _ in wanted]])[0]
        at_kept, at_all = tensor([[column[p] for _, p in wanted], [p for _, p in wanted]])

        def own_positions(_head, args):  # hidden: [rows, kept positions (or all, if the body ignored them), D]
            (hidden,) = args
            return (hidden[rows_at, at_kept if hidden.shape[1] == len(keep) else at_all][None],)

        hook = self.model.get_output_embeddings().register_forward_pre_hook(own_positions)
        try:
            logits = self.model(
                input_ids=tensor(tokens),
                attention_mask=mask,
                position_ids=tensor(positions),
                logits_to_keep=torch.tensor(keep, device=self.device),
            ).logits
        finally:
            hook.remove()
        if logits.shape[:2] != (1, len(wanted)):
            raise RuntimeError(f"{type(self.model).__name__} does not run its output head on the positions asked")
        out, at = [], 0
        for _, pack, _ in placed:
            scored = []
            for cont in pack.conts:
                logp = F.log_softmax(logits[0, at : at + len(cont)], dim=-1, dtype=self.softmax_dtype)
                at += len(cont)
                target = torch.tensor(cont, dtype=torch.long, device=logp.device)
                scored.append((float(logp.gather(-1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())))
            out.append((pack, scored))
        return out
