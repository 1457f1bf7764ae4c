"""Pruning in rounds (prune.rounds): n layers removed as r smaller blocks, each round scoring the model the round
before it made. The workflow runs on a copy of the shared tiny workflow (its calibration store and baseline reused)."""

import json
import shutil
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file
from tiny import write_scores
from workflow_utils import ROOT, planned_outputs, planned_rules, snakemake, with_changes, write_config

from streamline import config as streamline_config
from streamline.artifacts import read_scores
from streamline.errors import StreamlineError
from streamline.layout import Paths, Variant, round_sizes, variants
from streamline.plan import plan_for_config
from streamline.rounds import in_original, spans

# --- names and the split -------------------------------------------------------------------------------------


def test_n_is_split_evenly_the_larger_blocks_first():
    assert round_sizes(12, 3) == [4, 4, 4] and round_sizes(10, 3) == [4, 3, 3] and round_sizes(3, 2) == [2, 1]


def test_a_variant_pruned_in_rounds_is_named_and_found_by_its_rounds():
    v = Variant.parse("transformerx2-kd-r3")
    assert (v.net, v.k, v.loss, v.rounds) == ("transformer", 2, "kd", 3) and v.name == "transformerx2-kd-r3"
    assert v.one_round.name == "transformerx2-kd" and Variant.parse("none-r2").rounds == 2
    rounds = Paths("m", 12).rounds(Variant.parse("transformer-mse-r3"))
    assert [r.base for r in rounds] == [f"results/m/rounds3/transformer-mse/n{c}" for c in ("4", "4+4", "4+4+4")]
    assert rounds[0].previous is None and rounds[2].previous == rounds[1]
    assert Paths("m", 12).model_out(Variant.parse("transformer-mse-r3")) == rounds[2].model_dir


def test_rounds_apply_to_the_variants_that_can_be_pruned_in_rounds():
    names = [v.name for v in variants(["transformer", "linear", "none"], [1], ["mse"], ["inherit"], [1, 3])]
    # a trained linear patch (linear-mse) stays one block: its rounds are not built
    assert names == ["transformer-mse", "linear", "linear-mse", "none", "transformer-mse-r3", "linear-r3", "none-r3"]


# --- bad input: one line naming prune.rounds ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"prune": {"rounds": 0}}, "prune.rounds: 0 is not valid: expected an integer >= 1"),
        ({"prune": {"rounds": 9}}, "prune.rounds: 9 is more than layer_intervals 8"),
        ({"prune": {"rounds": [1, 3]}, "layer_intervals": [2, 8]}, "prune.rounds: 3 is more than layer_intervals 2"),
        (
            {"prune": {"rounds": 2}, "network": "ffn"},
            "prune.rounds: 2 works with network transformer or none or linear",
        ),
        ({"prune": {"rounds": 4}, "train_num_data": 3}, "prune.rounds: 4 rounds cannot share 3 training blocks"),
    ],
)
def test_bad_rounds_are_refused_at_config_time(overrides, words):
    with pytest.raises(StreamlineError) as e:
        streamline_config.load(ROOT / "config.yaml", overrides=overrides)
    assert str(e.value).startswith(words) and "\n" not in str(e.value)


def test_rounds_that_would_leave_fewer_than_two_layers_are_refused(tiny_llama_dir):
    conf = streamline_config.load(ROOT / "config.yaml", overrides={"layer_intervals": 5, "prune": {"rounds": 2}})
    with pytest.raises(
        StreamlineError, match=r"^prune\.rounds: 2 rounds of layer_intervals 5 would leave tiny-llama 1"
    ):
        streamline_config.check_model(conf, tiny_llama_dir)
    streamline_config.check_model(with_changes(conf, {"layer_intervals": 4}), tiny_llama_dir)  # 2 left: allowed


# --- the report's account of the rounds --------------------------------------------------------------------------


def test_each_rounds_block_is_told_in_the_original_numbering(tmp_path):
    # 10 layers; round 1 replaces 3..5 by layer 3 (4, 5 removed); round 2, on the 8 left, replaces its 2..4,
    # which are the original 2, 3 and 6: keeps 2, removes 3 and 6
    first = read_scores(write_scores(tmp_path / "a.json", n=2, span=3, best=3, num_layers=10))
    second = read_scores(write_scores(tmp_path / "b.json", n=2, span=3, best=2, num_layers=8))
    facts = in_original([first, second], [None, None])
    assert [(f.block, f.removed, f.layers) for f in facts] == [([3, 4, 5], [4, 5], 8), ([2, 3, 6], [3, 6], 6)]
    assert spans(facts[1].block) == "2..3, 6"
    removal = read_scores(write_scores(tmp_path / "c.json", n=2, span=2, best=0, num_layers=8))  # k = 0: all gone
    assert in_original([first, removal], [None, None])[1].removed == [0, 1]
    with pytest.raises(StreamlineError, match="round 2 scored a 10-layer model"):
        in_original([first, first], [None, None])


# --- the workflow ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rounds_dir(tiny_workflow, tmp_path_factory):
    """A copy of the shared tiny workflow (download, data, calibration and baseline done), to prune in rounds."""
    done, config, _ = tiny_workflow
    workdir = tmp_path_factory.mktemp("rounds") / "wf"
    shutil.copytree(done, workdir, symlinks=True)
    return workdir, config


def _layers(model_dir):
    """Each decoder layer's tensors, by layer index."""
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        for name, t in load_file(f).items():
            if name.startswith("model.layers."):
                i, _, rest = name[len("model.layers.") :].partition(".")
                layers.setdefault(int(i), {})[rest] = t
    return layers


def _alive_after(rounds_dirs, layers):
    """The original layers a model pruned in these rounds keeps, worked out from the rounds' scores alone."""
    alive = list(range(layers))
    for d in rounds_dirs:
        s = json.loads((d / "scores.json").read_text())
        gone = s["block"][s["span"] - s["n"] :]
        alive = [x for j, x in enumerate(alive) if j not in gone]
    return alive


def test_plain_removal_in_two_rounds_removes_what_each_round_scored(rounds_dir):
    workdir, config = rounds_dir
    write_config(workdir, with_changes(config, {"network": ["none"], "layer_intervals": 3, "prune": {"rounds": 2}}))
    final = "results/tiny/rounds2/none/n2+1/init"
    assert Paths("tiny", 3).model_out(Variant.parse("none-r2")) == final
    snakemake(workdir)  # through evaluation and the report
    one, two = workdir / "results/tiny/rounds2/none/n2", workdir / "results/tiny/rounds2/none/n2+1"
    assert json.loads((one / "scores.json").read_text())["num_layers"] == 6  # round 1 scored the original
    assert json.loads((two / "scores.json").read_text())["num_layers"] == 4  # round 2 the model round 1 made
    assert json.loads((two / "scores.json").read_text())["span"] == 1
    original, pruned = _layers(workdir / "resources/models/tiny"), _layers(workdir / final)
    alive = _alive_after([one, two], 6)
    assert len(pruned) == len(alive) == 6 - 3
    for j, i in enumerate(alive):  # every layer left is the original's layer it should be, bit for bit
        assert pruned[j].keys() == original[i].keys()
        assert all(torch.equal(pruned[j][k], original[i][k]) for k in pruned[j]), (j, i)
    # the report: the variant's n is the rounds' sum, each round's removed layers in the original numbering
    row = next(r for r in json.loads((workdir / "results/summary.json").read_text())["rows"] if r["n"])
    assert (row["variant"], row["n"], row["layers"], row["block"]) == ("none-r2", 3, 3, None)
    assert sorted(x for r in row["rounds"] for x in r["removed"]) == sorted(set(range(6)) - set(alive))
    assert "| tiny | 3 | none-r2 | 2 | 1 |" in (workdir / "results/summary.md").read_text()


@pytest.mark.slow  # ~2.5 min: two rounds of extraction and estimate, then evaluation and the report
def test_the_linear_map_in_two_rounds(rounds_dir):
    """network: linear in rounds: each round estimates its map on the model the round before made (its states,
    its block scores) and folds it; the layers left are the original's, bit for bit, but for the MLP output
    projections the maps were folded into; the report tells both rounds."""
    workdir, config = rounds_dir
    write_config(workdir, with_changes(config, {"network": ["linear"], "layer_intervals": 3, "prune": {"rounds": 2}}))
    final = "results/tiny/rounds2/linear/n2+1/init"
    assert Paths("tiny", 3).model_out(Variant.parse("linear-r2")) == final
    snakemake(workdir)
    one, two = workdir / "results/tiny/rounds2/linear/n2", workdir / "results/tiny/rounds2/linear/n2+1"
    assert json.loads((two / "scores.json").read_text())["num_layers"] == 4  # round 2 scored round 1's model
    for d in (one, two):
        log = json.loads((d / "estimate_log.json").read_text())
        assert log["objective"] == "balanced" and log["block"] == json.loads((d / "scores.json").read_text())["block"]
    original, pruned = _layers(workdir / "resources/models/tiny"), _layers(workdir / final)
    alive = _alive_after([one, two], 6)
    assert len(pruned) == len(alive) == 6 - 3
    changed = set()
    for j, i in enumerate(alive):
        assert pruned[j].keys() == original[i].keys()
        changed |= {(j, k) for k in pruned[j] if not torch.equal(pruned[j][k], original[i][k])}
    assert changed and {k for _, k in changed} == {"mlp.down_proj.weight"}  # the folded maps, nothing else
    row = next(r for r in json.loads((workdir / "results/summary.json").read_text())["rows"] if r["n"])
    assert (row["variant"], row["n"], row["layers"]) == ("linear-r2", 3, 3)
    assert sorted(x for r in row["rounds"] for x in r["removed"]) == sorted(set(range(6)) - set(alive))


def test_a_change_to_round_two_only_reruns_round_two(rounds_dir):
    workdir, config = rounds_dir
    # n 3 -> 4 in two rounds: [2, 1] -> [2, 2]; round 1 (n2) and its model's calibration store are kept
    assert planned_rules(workdir, "results/tiny/rounds2/none/n2+2/init", "--config", "layer_intervals=4") == {
        "round_score": 1,
        "round_replace": 1,
    }


@pytest.mark.parametrize("loss", ["mse", "kd"])
def test_trained_rounds_train_on_their_share_of_the_blocks(rounds_dir, loss):
    """16 training blocks: each of 2 rounds trains on 8 (kd too, whose llm.max_train_samples, 128, is more than
    there are)."""
    workdir, _ = rounds_dir
    args = ("--config", "network=[transformer]", f"loss={loss}", "layer_intervals=3", "prune={rounds: 2}")
    outputs = planned_outputs(workdir, *args)
    assert {
        f"results/tiny/rounds2/transformer-{loss}/n2/model",
        f"results/tiny/rounds2/transformer-{loss}/n2+1/model",
        f"results/tiny/n3/transformer-{loss}-r2/eval.json",
    } <= outputs
    assert ("results/tiny/rounds2/transformer-mse/n2/pairs.json" in outputs) == (loss == "mse")
    proc = snakemake(workdir, "-n", "-p", *args)  # -p: the commands, with each round's share of the 16 blocks
    commands = [
        line for line in proc.stdout.splitlines() if f" train --loss {loss} " in line or "extract-pairs" in line
    ]
    assert len(commands) == (4 if loss == "mse" else 2)
    assert all(" --num-samples 8 " in c or " --train-samples 8 " in c for c in commands)
    # `streamline plan` lists the same round jobs as the workflow runs
    overrides = {"network": ["transformer"], "loss": loss, "layer_intervals": 3, "prune": {"rounds": 2}}
    plan = plan_for_config(workdir / "config.yaml", overrides=overrides, device="cpu", root=workdir)
    rounds = Counter(j.rule for j in plan.jobs if j.rule.startswith("round_"))
    assert rounds == {k: v for k, v in planned_rules(workdir, *args).items() if k.startswith("round_")}


@pytest.mark.slow
def test_trained_rounds_end_to_end(rounds_dir):
    """transformer-mse in two rounds through evaluation and the report: L - n layers, the untrained layers the
    original's that the rounds' scores left, the rounds' tokens summing to one block's, each round in the report."""
    workdir, config = rounds_dir
    write_config(
        workdir, with_changes(config, {"network": ["transformer"], "layer_intervals": 3, "prune": {"rounds": 2}})
    )
    snakemake(workdir)
    base = workdir / "results/tiny/rounds2/transformer-mse"
    original, pruned = _layers(workdir / "resources/models/tiny"), _layers(base / "n2+1/model")
    alive = _alive_after([base / "n2", base / "n2+1"], 6)
    assert len(pruned) == 3
    same = [j for j, i in enumerate(alive) if all(torch.equal(pruned[j][k], original[i][k]) for k in pruned[j])]
    assert len(same) >= len(alive) - 2  # all but the (at most two) layers the rounds trained
    logs = [json.loads((base / c / "train_log.json").read_text()) for c in ("n2", "n2+1")]
    assert sum(tl["train_samples"] for tl in logs) == config["train_num_data"]
    summary = json.loads((workdir / "results/summary.json").read_text())
    row = next(r for r in summary["rows"] if r["variant"] == "transformer-mse-r2")
    assert row["n"] == 3 and row["layers"] == 3 and [r["n"] for r in row["rounds"]] == [2, 1]
    assert row["train"]["tokens"] == sum(tl["train_tokens"] for tl in logs)
    assert "## Rounds (prune.rounds)" in (workdir / "results/summary.md").read_text()
