"""Timing two models against each other, and saying when the timing is noise.

Both models take turns, after one untimed warm-up each, and each keeps its best of `repeats`: a machine that
is busy hurts both alike. Not always: a busy machine (another job, the test suite) can make one model's repeats
scatter, and a speedup of 0.9x against an ideal of 1.3x is then the machine, not the model. So each
measurement records the spread of its repeats and the machine's load average, and says in `noise` why its
figure cannot be trusted (None when neither points to it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

SPREAD_LIMIT = 0.15  # one model's repeats differ by more than 15%: the timing is not repeatable


# The speed protocol of both engines (speed.py, gguf_check.py), which the plan (plan.py) times too: per model, a
# prefill of SPEED_BATCH blocks (llama.cpp: one) and DECODE_STEPS greedy steps after a PROMPT_TOKENS prompt, each
# a warm-up and then REPEATS timed runs.
SPEED_BATCH = 4
DECODE_STEPS = 32
PROMPT_TOKENS = 32
REPEATS = 3


def best_alternating(fn: Callable, models: dict, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """(min over `repeats` of fn(model), max/min - 1 of those repeats) per model, the models taking turns."""
    for m in models.values():
        fn(m)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for k, m in models.items():
            times[k].append(fn(m))
    return {k: min(t) for k, t in times.items()}, {k: max(t) / min(t) - 1 for k, t in times.items()}


@dataclass(frozen=True)
class Timed:
    best: dict[str, dict[str, float]]  # phase -> model -> best seconds
    spread: dict[str, float]  # phase -> the larger of the models' spreads
    load: float | None  # the larger of the load averages before and after
    cores: int
    noise: str | None

    def trust(self) -> dict:
        """The fields a Throughput record carries about it."""
        return {"spread": self.spread, "load": self.load, "cores": self.cores, "noise": self.noise}


def time_phases(phases: dict[str, Callable], models: dict, repeats: int, threads: int | None) -> Timed:
    """Each phase (a function of a model returning seconds) timed by best_alternating, with the trust in it."""
    before = load_average()
    best, spread = {}, {}
    for phase, fn in phases.items():
        best[phase], spreads = best_alternating(fn, models, repeats)
        spread[phase] = max(spreads.values())
    load = max((x for x in (before, load_average()) if x is not None), default=None)
    n = cores()
    return Timed(best, spread, load, n, noise(spread, load, threads, n))


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def noise(spread: dict[str, float], load: float | None, threads: int | None, cores: int | None) -> str | None:
    """Why a speedup measured with this spread (per phase, the larger of the two models') and load cannot be
    trusted, or None. `threads`: the CPU threads the measurement ran (None on a GPU, where the load of the
    host matters little). The load counts the measurement's own threads: beyond them, half the machine's
    `cores` busy with other work means the models were timed on a shared machine. A function of the record's
    own fields, so a reader recomputes it (artifacts.Throughput)."""
    reasons = [f"{phase} repeats spread by {100 * s:.0f}%" for phase, s in spread.items() if s > SPREAD_LIMIT]
    if threads is not None and load is not None and cores and load > threads + 0.5 * cores:
        reasons.append(f"load average {load:.1f} on {cores} cores while {threads} threads measured")
    return "; ".join(reasons) or None
