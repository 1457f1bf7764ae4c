"""Pruning in rounds, as the report tells it: which layers of the ORIGINAL model each round removed.

Round i scores and replaces a block of the model round i-1 made, so its scores.json numbers that model's layers.
Walking the rounds in order with the list of original layers still alive maps each round's block back to the
original numbering: the report's rounds table. (The workflow side is workflow/rules/rounds.smk; the paths,
layout.RoundPaths.)
"""

from __future__ import annotations

from .artifacts import BlockScores, RoundFacts, TrainLog
from .errors import StreamlineError


def in_original(scores: list[BlockScores], train_logs: list[TrainLog | None]) -> list[RoundFacts]:
    """Each round's block and removed layers in the original numbering. A block spans n + k layers of the model
    it pruned and removes its last n (k kept layers stay: for plain removal k = 0)."""
    alive = list(range(scores[0].num_layers))
    facts = []
    for i, (s, tl) in enumerate(zip(scores, train_logs), 1):
        if s.num_layers != len(alive):
            raise StreamlineError(
                f"round {i} scored a {s.num_layers}-layer model, but the rounds before it leave {len(alive)} layers; "
                "run its rounds again"
            )
        gone = set(s.block[s.span - s.n :])
        facts.append(
            RoundFacts(
                round=i,
                n=s.n,
                block=[alive[j] for j in s.block],
                removed=[alive[j] for j in sorted(gone)],
                score=s.best_score,
                metric=s.metric,
                layers=len(alive) - len(gone),
                train_tokens=tl.train_tokens if tl else None,
            )
        )
        alive = [layer for j, layer in enumerate(alive) if j not in gone]
    return facts


def spans(layers: list[int]) -> str:
    """Layer numbers as runs: [10, 15, 16, 17] -> "10, 15..17"."""
    runs: list[list[int]] = []
    for x in layers:
        if runs and x == runs[-1][-1] + 1:
            runs[-1].append(x)
        else:
            runs.append([x])
    return ", ".join(f"{r[0]}..{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
