"""Speed figures that say when they are noise (timing.py), and the report that shows it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_report import artifacts  # noqa: F401  (the fixture: the files report.smk names)

from streamline import timing
from streamline.artifacts import Evaluation


def test_repeats_that_scatter_or_a_busy_machine_make_the_figure_noise():
    assert timing.noise({"prefill": 0.05, "decode": 0.10}, load=2.1, threads=2, cores=2) is None  # its own 2 threads
    assert (
        timing.noise({"prefill": 0.40, "decode": 0.02}, load=None, threads=None, cores=2)
        == "prefill repeats spread by 40%"
    )
    busy = timing.noise({"prefill": 0.05, "decode": 0.05}, load=8.5, threads=2, cores=2)
    assert busy == "load average 8.5 on 2 cores while 2 threads measured"
    assert (
        timing.noise({"prefill": 0.05}, load=8.5, threads=None, cores=2) is None
    )  # on a GPU the host's load is not it


def test_the_spread_is_of_each_models_own_repeats():
    clock = iter([9.0, 9.0, 1.0, 2.0, 1.5, 2.0, 1.2, 2.0])  # warm-ups, then a, b taking turns
    best, spread = timing.best_alternating(lambda m: next(clock), {"a": 0, "b": 1}, repeats=3)
    assert best == {"a": 1.0, "b": 2.0}
    assert spread["a"] == pytest.approx(0.5) and spread["b"] == pytest.approx(0.0)


def test_a_noisy_speedup_is_marked_in_the_summary_and_its_json(artifacts):
    from test_report import _run, _write

    spec = artifacts["variants"][0]
    ev = Evaluation.load(spec["eval"], "eval")
    reason = "load average 8.5 on 2 cores while 2 threads measured"
    _write(
        Path(spec["eval"]),
        replace(
            ev, speed=replace(ev.speed, spread={"prefill": 0.05, "decode": 0.1}, load=8.5, cores=2, noise=reason)
        ).to_json(),
    )
    _run(artifacts)
    md = (artifacts["out"] / "summary.md").read_text()
    table = md[md.index("## Summary") :]
    assert "1.20x (1.25x) noise" in table and f"{spec['name']}: {reason}" in table
    assert "measure on an idle machine" in table
    rows = {r["variant"]: r for r in json.loads((artifacts["out"] / "summary.json").read_text())["rows"]}
    assert rows[spec["name"]]["speed_noise"] == reason and rows[spec["name"]]["speed"]["load"] == 8.5
    others = [r for name, r in rows.items() if name not in (spec["name"], "baseline")]
    assert others and all(r["speed_noise"] is None for r in others)


@pytest.mark.parametrize(
    "noise, spread, load",
    [
        (None, {"prefill": 0.05, "decode": 0.1}, 8.5),  # a verdict removed
        (None, {"prefill": 1.6, "decode": 0.1}, 1.0),
        ("made up", {"prefill": 0.05, "decode": 0.1}, 1.0),
    ],
)
def test_a_noise_verdict_its_spread_and_load_do_not_give_is_one_line_and_set_aside(artifacts, noise, spread, load):
    """The verdict is recomputed from the record's own spread, load, cores and threads: an eval.json edited (digest
    rewritten) to drop it would show a noisy speedup as a fact."""
    from test_report import _run, _write

    from streamline.errors import StreamlineError

    spec = artifacts["variants"][0]
    ev = Evaluation.load(spec["eval"], "eval")
    trust = {"spread": spread, "load": load, "cores": 2, "noise": noise}
    _write(Path(spec["eval"]), {**ev.to_json(), "speed": {**ev.speed.to_json(), **trust}})
    with pytest.raises(StreamlineError, match=r"eval.json: .*noise .* is not what its spread and load give"):
        _run(artifacts)
    assert not Path(spec["eval"]).exists()
