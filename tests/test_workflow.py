"""The whole DAG on a tiny model in a temp dir: outputs, what a change reruns, config errors before any job."""

import copy
import json
import re

import pytest
from workflow_utils import planned_outputs, planned_rules, snakemake, tiny_config, write_config

UPSTREAM_OF_SCORING = {"download_model", "prepare_data", "extract_calibration", "fetch_eval_data", "evaluate_baseline"}


@pytest.fixture(scope="module")
def done(tiny_workflow):
    return tiny_workflow[0]


def test_workflow_produces_every_stage(done):
    scores = json.loads((done / "results/tiny/n2/scores.json").read_text())
    assert scores["n"] == 2 and scores["num_layers"] == 6 and len(scores["scores"]) == 4
    assert (done / "results/tiny/n2/scores.png").exists()
    assert (done / "resources/models/tiny/config.json").exists()
    calib = json.loads((done / "results/tiny/calibration.json").read_text())
    assert calib["shape"] == [7, 8, 16, 32]
    pairs = json.loads((done / "results/tiny/n2/pairs.json").read_text())
    assert pairs["layers"] == [scores["best_start"], scores["best_start"] + 3]
    assert pairs["train"]["shape"] == [2, 16, 16, 32] and pairs["val"]["shape"] == [2, 4, 16, 32]
    assert json.loads((done / "results/tiny/n2/ffn-mse/model/config.json").read_text())["num_hidden_layers"] == 4
    assert json.loads((done / "results/tiny/n2/none/init/config.json").read_text())["num_hidden_layers"] == 4
    log = json.loads((done / "results/tiny/n2/ffn-mse/train_log.json").read_text())
    assert log["net"] == "ffn" and log["val"][0]["step"] == 0
    assert not (done / "results/tiny/n2/ffn-mse/checkpoint/checkpoint.pt").exists()


def test_torch_stages_use_every_core_given(done):
    # Without a threads directive Snakemake exports OMP_NUM_THREADS=1 and torch runs on one core.
    # The workflow runs with --cores 2 (workflow_utils.snakemake).
    for log in ("logs/tiny/extract_calibration.log", "logs/tiny/n2/extract_pairs.log"):
        assert "on cpu (2 threads)" in (done / log).read_text(), log


def test_nothing_changed_nothing_runs(done):
    assert planned_rules(done) == {}


@pytest.mark.parametrize("n", ["3", "[2,3,4]"])
def test_changing_n_reruns_scoring_onward_and_never_extraction(done, n):
    plan = planned_rules(done, "--config", f"layer_intervals={n}")
    new = 1 if n == "3" else 2
    assert plan["score"] == 2 * new and plan["extract_pairs"] == new  # scores.json and removal_scores.json
    assert plan["replace"] == 2 * new and plan["train_mse"] == new
    assert not UPSTREAM_OF_SCORING & plan.keys()


def test_k_layers_get_their_own_scores_pairs_and_variants_and_never_extraction(done):
    plan = planned_rules(done, "--config", "network=[transformer]", "replacement_layers=[1,2]")
    # new: scores over spans of n+2 (scores_k2.json), pairs_k2.zarr, and both transformer variants
    assert plan["score"] == 1 and plan["extract_pairs"] == 1 and plan["replace"] == 2 and plan["train_mse"] == 2
    assert plan["evaluate_variant"] == 2 and not UPSTREAM_OF_SCORING & plan.keys()
    names = planned_outputs(done, "--config", "network=[transformer]", "replacement_layers=[1,2]")
    assert {
        "results/tiny/n2/scores_k2.json",
        "results/tiny/n2/pairs_k2.json",
        "results/tiny/n2/transformerx2/init",
        "results/tiny/n2/transformerx2-mse/model",
    } <= names


def test_staged_and_distillation_variants_are_planned(done):
    names = planned_outputs(
        done, "--config", "network=[transformer]", "loss=[mse,kd]", "train={init_from: [inherit, mse]}"
    )
    assert {
        "results/tiny/n2/transformer-mse/model",
        "results/tiny/n2/transformer-kd/model",
        "results/tiny/n2/transformer-mse+kd/model",
    } <= names


def test_linear_reads_its_own_small_store_and_never_the_calibration_again(done):
    plan = planned_rules(done, "--config", "network=[none,ffn,linear]")
    # linear, and its patch trained by the configured loss (linear-mse: pairs computed online, no pair store)
    assert plan == {
        "extract_linear": 1,
        "linear": 1,
        "train_mse": 1,
        "evaluate_variant": 2,
        "stability": 2,
        "report": 1,
    }
    assert {"results/tiny/n2/linear/init", "results/tiny/n2/linear/estimate_log.json"} <= planned_outputs(
        done, "--config", "network=[none,ffn,linear]"
    )


def test_online_pairs_need_no_pair_store(done):
    plan = planned_rules(done, "--config", "network=[transformer]", "pairs={mode: online}")
    assert "extract_pairs" not in plan and plan["train_mse"] == 1


def test_lr_reruns_training_onward_only(done):
    plan = planned_rules(done, "--config", "lr=5e-4")
    assert plan == {"train_mse": 1, "evaluate_variant": 1, "stability": 1, "report": 1}


def test_extraction_batch_size_does_not_rerun_anything(done, tiny_workflow):
    config = copy.deepcopy(tiny_workflow[1])
    config["extract"]["batch_size"] = 2
    write_config(done, config)
    try:
        assert planned_rules(done) == {}
    finally:
        write_config(done, tiny_workflow[1])


def test_metric_change_reruns_scoring_onward(done):
    plan = planned_rules(done, "--config", "metric=angular")
    assert plan["score"] == 2 and not UPSTREAM_OF_SCORING & plan.keys()


@pytest.mark.parametrize(
    "override, message",
    [
        ("layer_intervals=0", "layer_intervals: 0 is not valid: expected an integer >= 1 or a list of integers >= 1"),
        ("layer_intervals=6", "layer_intervals: 6 is out of range for tiny-llama, which has 6 layers (allowed: 1..5)"),
        ("metric=l2", "metric: 'l2' is not one of ['cosine', 'angular']"),
        ("network=mlp", "network: 'mlp' is not valid"),
        ("model_name=/no/such/model", "model_name: path /no/such/model does not exist"),
        ("lr=-1", "lr: -1 is less than or equal to the minimum of 0"),
        ("min_lr=0.5", "min_lr: 0.5 is above lr"),
        ("typo_key=1", "typo_key: not a config key; the keys are listed in README.md's config table (set by --config)"),
        ("layer_interval=4", "layer_interval: not a config key (did you mean layer_intervals?)"),
        ("replacement_layers=0", "replacement_layers: 0 is not valid: expected an integer >= 1 or a list of integers"),
        (
            "replacement_layers=2",
            "replacement_layers: 2 applies to network: transformer only; ffn, none keep one network",
        ),
        (
            "network=transformer replacement_layers=5",
            "replacement_layers: 5 with layer_intervals 2 needs a block of 7 "
            "layers; tiny-llama has 6 (allowed: n + k <= 6)",
        ),
        (
            "loss=distil",
            "loss: 'distil' is not valid: expected one of mse, llm, kd or a list of values from mse, llm, kd",
        ),
    ],
)
def test_bad_config_is_one_line_before_any_job(done, override, message):
    proc = snakemake(done, "-n", "--config", *override.split(), check=False)
    assert proc.returncode != 0
    err = [line for line in proc.stderr.strip().splitlines() if not line.startswith("Using workflow specific profile")]
    assert len(err) == 1 and err[0].startswith("config error: ") and message in err[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_architecture(tmp_path, text_corpus):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    write_config(tmp_path, tiny_config(tmp_path / "gpt2", text_corpus, layer_intervals=1))
    proc = snakemake(tmp_path, "-n", check=False)
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "config error: model_name: architecture 'gpt2' has no adapter (supported: llama, mistral, opt, qwen2)"
        )
    )


def _edited(path, new_text: str):
    """Edit a file of the package copy the workflow tests run (never the checkout); restore it after."""
    import contextlib
    import os

    @contextlib.contextmanager
    def edit():
        text, before = path.read_text(), path.stat()
        path.write_text(new_text)
        try:
            yield
        finally:
            path.write_text(text)
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    return edit()


@pytest.mark.parametrize(
    "module",
    ["cli.py", "store.py", "score.py", "adapters/llama.py", "artifacts.py", "training/settings.py", "report.py"],
)
def test_a_code_edit_alone_reruns_nothing(done, module):
    """A refactor, a help text, an upgrade that only refactored: no rule reruns for a file its code imports."""
    from workflow_utils import package_copy

    path = package_copy() / module
    with _edited(path, path.read_text() + "\n# edited: a refactor\n"):
        assert planned_rules(done) == {}


@pytest.mark.parametrize(
    "stage, expected, untouched",
    [
        ("score", {"score": 2}, UPSTREAM_OF_SCORING),
        (
            "extract",
            {"extract_calibration": 1, "score": 2, "extract_pairs": 1},
            {"download_model", "prepare_data", "evaluate_baseline"},
        ),
        ("report", {"report": 1}, set()),
        (
            "train",
            {"train_mse": 1, "evaluate_variant": 1, "stability": 1, "report": 1},
            UPSTREAM_OF_SCORING | {"score", "extract_pairs", "replace"},
        ),
        (
            "evaluate",
            {"evaluate_baseline": 1, "evaluate_variant": 2, "stability": 2, "report": 1},
            {"download_model", "prepare_data", "extract_calibration", "score", "replace", "train_mse"},
        ),
    ],
)
def test_a_version_bump_reruns_that_stage_onward(done, stage, expected, untouched):
    from workflow_utils import package_copy

    path = package_copy() / "versions.py"
    text = path.read_text()
    bumped = re.sub(rf'"{stage}": (\d+),', lambda m: f'"{stage}": {int(m[1]) + 1},', text)
    assert bumped != text
    with _edited(path, bumped):
        plan = planned_rules(done)
    assert {rule: plan.get(rule) for rule in expected} == expected, plan
    assert not untouched & plan.keys(), plan
    if stage == "report":
        assert plan == expected


def test_a_rerun_that_writes_the_same_scores_stops_there(tmp_path_factory, tiny_workflow):
    """Early cutoff: a score version bump (say, a store.py change judged to alter nothing) reruns scoring; the
    scores come out byte-identical, so replace, training and evaluation do not rerun."""
    import shutil

    from workflow_utils import package_copy

    work = tmp_path_factory.mktemp("cutoff") / "w"
    shutil.copytree(tiny_workflow[0], work, symlinks=True)
    before = {p: p.stat().st_mtime_ns for p in (work / "results/tiny/n2").rglob("*") if p.is_file()}
    path = package_copy() / "versions.py"
    with _edited(path, re.sub(r'"score": (\d+),', lambda m: f'"score": {int(m[1]) + 1},', path.read_text())):
        proc = snakemake(work, "--printshellcmds")
        assert planned_rules(work) == {}
    ran = set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", proc.stdout + proc.stderr, re.M))
    assert ran <= {"score", "all"} and "score" in ran, "\n".join(
        line for line in (proc.stdout + proc.stderr).splitlines() if "reason" in line or "rule" in line
    )
    scores = work / "results/tiny/n2/scores.json"
    assert scores.stat().st_mtime_ns != before[scores]  # it did rerun
    unchanged = [p for p in before if "scores" not in p.name and p.stat().st_mtime_ns == before[p]]
    assert work / "results/tiny/n2/ffn-mse/train_log.json" in unchanged
    assert work / "results/tiny/n2/ffn-mse/eval.json" in unchanged


def test_the_package_has_no_import_cycle():
    from import_graph import PACKAGE, imports_of, module_name

    graph = {module_name(p): imports_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    state: dict[str, int] = {}

    def visit(module, path):
        if state.get(module) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path + [module]))
        if state.get(module) == 2:
            return
        state[module] = 1
        for dep in graph[module]:
            visit(dep, path + [module])
        state[module] = 2

    for module in graph:
        visit(module, [])
