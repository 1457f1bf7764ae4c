"""Stability on hand-made fixtures; expected values are worked out by hand in each test."""

from __future__ import annotations

import json
import math

import pytest

from streamline.artifacts import SAMPLES_FORMAT, Samples
from streamline.cli import main as cli
from streamline.errors import StreamlineError
from streamline.stability import effective_questions, stability_from_opencompass, stability_from_samples


def main(argv: list[str]) -> dict:
    """`streamline stability ...`, returning what it wrote to --out."""
    out = next((argv[i + 1] for i, a in enumerate(argv) if a == "--out"), None)
    assert cli(["stability", *argv]) == 0
    return json.loads(open(out).read()) if out else None


E = math.e

# Original per-option log-likelihoods of one-token options, so that sigma = std(NLL) = [1, 0, 1, 2]
# on either scale.
LL = [[0.0, -2.0], [0.0, 0.0], [-1.0, -3.0], [0.0, -4.0]]
Z = 2 * E + 1 + E**2  # sum of exp(sigma)


def samples(correct: dict[str, list[bool]], ll=None, acc_norm=None, ntok=None) -> dict:
    """A samples file whose questions are answered right where `correct` says: gold is the likeliest option
    there, another one elsewhere."""
    tasks = {}
    for task, flags in correct.items():
        lls = ll if ll is not None else [[0.0, -1.0]] * len(flags)
        best = [x.index(max(x)) for x in lls]
        tasks[task] = {
            str(i): {
                "ll": lls[i],
                "ntok": ntok[i] if ntok else [1] * len(lls[i]),
                "gold": best[i] if c else (best[i] + 1) % len(lls[i]),
                "acc": c,
                "acc_norm": None if acc_norm is None else acc_norm[i],
            }
            for i, c in enumerate(flags)
        }
    return {"format": SAMPLES_FORMAT, "tasks": tasks}


# Three questions whose options differ in length. Per token: q0 [2, 2], q1 [1, 4], q2 [4, 1] nats, so
# sigma = [0, 1.5, 1.5]; summed: q0 [2, 6], q1 [1, 4], q2 [8, 8], so sigma = [2, 1.5, 0].
LEN_LL = [[-2.0, -6.0], [-1.0, -4.0], [-8.0, -8.0]]
LEN_NTOK = [[1, 3], [1, 1], [2, 8]]


def test_per_token_scale_hand_computed():
    # Original right on q0, q1; pruned right on q1 only: they agree on q1 and q2.
    before = samples({"t": [True, True, False]}, LEN_LL, ntok=LEN_NTOK)
    after = samples({"t": [False, True, False]}, LEN_LL, ntok=LEN_NTOK)
    e15 = math.exp(1.5)
    res = stability_from_samples(before, after)
    assert res.scale == "per_token"
    assert res.tasks["t"].stability == pytest.approx(2 * e15 / (1 + 2 * e15))
    assert res.tasks["t"].sigma_min == 0 and res.tasks["t"].sigma_max == pytest.approx(1.5)
    z = 1 + 2 * e15  # w = [1, e^1.5, e^1.5] / z
    assert res.effective_questions["t"] == pytest.approx(z**2 / (1 + 2 * e15**2))
    summed = stability_from_samples(before, after, scale="sum")
    assert summed.tasks["t"].stability == pytest.approx((e15 + 1) / (E**2 + e15 + 1))


def test_effective_questions_constructed():
    assert effective_questions([0.7] * 20) == pytest.approx(20)
    assert effective_questions([math.log(3), 0, 0]) == pytest.approx(25 / 11)  # w = [3, 1, 1] / 5
    assert effective_questions([44.7] + [0.7] * 19) == pytest.approx(1.0)  # what summed NLLs did to HellaSwag
    assert effective_questions([5.0, 5.0] + [-40.0] * 18) == pytest.approx(2.0)


def test_token_counts_that_do_not_fit_are_an_error():
    s = samples({"t": [True, False]})
    s["tasks"]["t"]["0"]["ntok"] = [1]  # one count for two options: refused by the record, on any scale
    with pytest.raises(StreamlineError, match=r"token counts \[1\] and lengths None do not fit 2 options"):
        stability_from_samples(s, s, scale="sum")
    s["tasks"]["t"]["0"]["ntok"] = None  # none recorded: the per-token scale needs them
    with pytest.raises(StreamlineError, match="token counts"):
        stability_from_samples(s, s)
    assert stability_from_samples(s, s, scale="sum").average == pytest.approx(1.0)
    del s["tasks"]["t"]["0"]["ntok"]
    with pytest.raises(StreamlineError, match=r"incomplete \(no valid 'tasks.t.0.ntok'\)"):
        stability_from_samples(s, s)


def test_weights_go_to_the_matching_questions():
    # Original right on q0, q1; pruned wrong everywhere: they agree on q2, q3 only.
    before = samples({"t": [True, True, False, False]}, LL)
    after = samples({"t": [False, False, False, False]}, LL)
    res = stability_from_samples(before, after)
    assert res.tasks["t"].stability == pytest.approx((E + E**2) / Z)
    assert res.tasks["t"].agreement == 0.5
    # The reference bug sums the first k=2 weights, those of q0 and q1.
    legacy = stability_from_samples(before, after, legacy=True)
    assert legacy.tasks["t"].stability == pytest.approx((E + 1) / Z)


def test_legacy_agrees_when_the_matches_come_first():
    before = samples({"t": [True, True, False, False]}, LL)
    after = samples({"t": [True, True, True, True]}, LL)
    exact = stability_from_samples(before, after).tasks["t"].stability
    legacy = stability_from_samples(before, after, legacy=True).tasks["t"].stability
    assert exact == pytest.approx(legacy) == pytest.approx((E + 1) / Z)


def test_identical_models_are_perfectly_stable_and_tasks_average():
    before = samples({"a": [True, False, True, False]}, LL)
    before["tasks"] |= samples({"b": [True, False]})["tasks"]  # equal option spreads
    after = samples({"a": [True, False, True, False], "b": [False, False]})
    res = stability_from_samples(before, after)
    assert res.tasks["a"].stability == pytest.approx(1.0)
    # Task b: equal sigmas, so w = (0.5, 0.5), and only q1 agrees.
    assert res.tasks["b"].stability == pytest.approx(0.5)
    assert res.average == pytest.approx(0.75)


def test_acc_norm_metric_and_fallback():
    before = samples({"t": [True, True, False, False]}, LL, acc_norm=[False, False, False, False])
    after = samples({"t": [True, True, False, False]}, LL, acc_norm=[False, False, True, True])
    # acc_norm agrees on q0, q1: weights e and 1.
    assert stability_from_samples(before, after, metric="acc_norm").tasks["t"].stability == pytest.approx((E + 1) / Z)
    # Without acc_norm records the acc flags are used.
    plain = samples({"t": [True, True, False, False]}, LL)
    assert stability_from_samples(plain, plain, metric="acc_norm").tasks["t"].stability == pytest.approx(1.0)


def test_mismatched_questions_raise():
    with pytest.raises(StreamlineError, match="different questions"):
        stability_from_samples(samples({"t": [True] * 4}, LL), samples({"t": [True] * 3}, LL))


def test_cli_on_samples_files(tmp_path):
    b, a, out = tmp_path / "before.json.gz", tmp_path / "after.json", tmp_path / "stability.json"
    Samples.from_json(samples({"t": [True, True, False, False]}, LL)).write(b)
    Samples.from_json(samples({"t": [False, False, False, False]}, LL)).write(a)
    main(["--before", str(b), "--after", str(a), "--out", str(out)])
    assert json.loads(out.read_text())["average"] == pytest.approx((E + E**2) / Z)
    main(["--before", str(b), "--after", str(a), "--out", str(out), "--legacy"])
    assert json.loads(out.read_text())["average"] == pytest.approx((E + 1) / Z)
    assert main(["--before", str(b), "--after", str(a), "--out", str(out), "--scale", "sum"])["scale"] == "sum"


# ---------------------------------------------------------------- OpenCompass


def oc_file(path, ppls: list[list[float]], labels: list[str], preds: list[str], golds: list[str]) -> None:
    data = {
        str(i): {
            **{f"label: {lab}": {"testing input": "q", "prompt": "q", "PPL": p} for lab, p in zip(labels, row)},
            "prediction": pred,
            "gold": gold,
        }
        for i, (row, pred, gold) in enumerate(zip(ppls, preds, golds))
    }
    path.write_text(json.dumps(data))


@pytest.fixture
def oc_dirs(tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir(), after.mkdir()
    # piqa: PPL stds [1, 0, 1, 2]; original right on q0, q1; pruned always answers "1", right on none.
    ppl = [[1, 3], [2, 2], [5, 7], [0, 4]]
    oc_file(before / "piqa.json", ppl, ["0", "1"], ["0", "0", "1", "1"], ["0", "0", "0", "0"])
    oc_file(after / "piqa.json", ppl, ["0", "1"], ["1", "1", "1", "1"], ["0", "0", "0", "0"])
    # MMLU subject a: both agree everywhere -> 1.
    abcd = ["A", "B", "C", "D"]
    for d in (before, after):
        oc_file(d / "lukaemon_mmlu_a.json", [[1, 2, 3, 4], [1, 2, 3, 4]], abcd, ["A", "B"], ["A", "A"])
    # MMLU subject b: stds [0, 1]; they agree on q1 only -> e/(1+e); legacy takes q0 -> 1/(1+e).
    oc_file(before / "lukaemon_mmlu_b.json", [[1, 1, 1, 1], [0, 0, 2, 2]], abcd, ["A", "A"], ["A", "A"])
    oc_file(after / "lukaemon_mmlu_b.json", [[1, 1, 1, 1], [0, 0, 2, 2]], abcd, ["B", "A"], ["A", "A"])
    (before / "unknown.json").write_text("{}")  # not in the table: ignored
    return before, after


def test_opencompass(oc_dirs):
    res = stability_from_opencompass(*oc_dirs)
    assert set(res) == {"piqa.json", "mmlu_avg"}
    assert res["piqa.json"] == pytest.approx((E + E**2) / Z)
    assert res["mmlu_avg"] == pytest.approx((1 + E / (1 + E)) / 2)
    legacy = stability_from_opencompass(*oc_dirs, legacy=True)
    assert legacy["piqa.json"] == pytest.approx((E + 1) / Z)
    assert legacy["mmlu_avg"] == pytest.approx((1 + 1 / (1 + E)) / 2)


def test_opencompass_cli_and_errors(oc_dirs, tmp_path):
    res = main(["--opencompass", str(oc_dirs[0]), str(oc_dirs[1]), "--legacy", "--out", str(tmp_path / "o.json")])
    assert res["datasets"]["piqa.json"] == pytest.approx((E + 1) / Z)
    (oc_dirs[1] / "lukaemon_mmlu_b.json").unlink()
    with pytest.raises(StreamlineError, match="lukaemon_mmlu_b.json"):
        stability_from_opencompass(*oc_dirs)
    with pytest.raises(StreamlineError, match="not found"):
        stability_from_opencompass(tmp_path / "nope", oc_dirs[1])


def _opencompass(d, predictions: list[str]):
    d.mkdir(parents=True)
    entries = {
        str(i): {"label: 0": {"PPL": 1.0 + i}, "label: 1": {"PPL": 3.0}, "prediction": p, "gold": "0"}
        for i, p in enumerate(predictions)
    }
    (d / "BoolQ.json").write_text(json.dumps(entries))
    return d


def test_stability_cli_opencompass(tmp_path):
    before = _opencompass(tmp_path / "before", ["0", "0", "1", "0"])
    after = _opencompass(tmp_path / "after", ["1", "0", "1", "0"])  # only question 0 changes correctness
    assert cli(["stability", "--opencompass", str(before), str(after), "--out", str(tmp_path / "s.json")]) == 0
    correct = json.loads((tmp_path / "s.json").read_text())["datasets"]["BoolQ.json"]
    assert (
        cli(["stability", "--opencompass", str(before), str(after), "--legacy", "--out", str(tmp_path / "l.json")]) == 0
    )
    legacy = json.loads((tmp_path / "l.json").read_text())["datasets"]["BoolQ.json"]
    assert 0 < correct < 1 and 0 < legacy < 1 and correct != pytest.approx(legacy)
    assert cli(["stability", "--opencompass", str(before), str(tmp_path / "missing")]) == 2
