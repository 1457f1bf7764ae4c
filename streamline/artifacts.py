"""Readers of the JSON artifacts stages hand to each other, each checked before it is used.

A stage never trusts a file another stage wrote: a torn, incomplete or edited artifact is one line that
names it (and is moved aside, so the stage that writes it reruns), never a KeyError deep in a stage.
Kept free of torch: every stage that reads an artifact imports this module.
"""

from __future__ import annotations

from pathlib import Path

from .atomic import read_artifact


def read_scores(path: str | Path, *extra: str) -> dict:
    """A scores.json, checked: n, span, metric and a block of consecutive layers (plus `extra` fields if named)."""
    def check(s: dict) -> str | None:
        block = s["block"]
        ok = block and all(isinstance(i, int) for i in block) and block == list(range(block[0], block[0] + len(block)))
        return None if ok and len(block) == s["span"] else f"naming no valid block ({block})"

    keys = {"n": int, "span": int, "block": list, "metric": str, **{k: (list, int, float, str) for k in extra}}
    return read_artifact(path, "block scores", keys, check=check)
