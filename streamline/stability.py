"""Stability (LLM-Streamline): how often the pruned model agrees with the original on being right.

For each question i of a dataset, sigma_i is the standard deviation over the answer options of the
ORIGINAL model's per-option score, w = softmax(sigma) over the dataset's questions, and

    stability = sum_i w_i * [pruned correct on i == original correct on i].

Questions the original model separates sharply (large sigma) weigh most. The reference script
(`calculate_stability.py`) instead sums the first k weights, k = the number of agreeing questions,
whatever questions those are. `legacy=True` reproduces that number.

The per-option score, from lm-eval samples (scale "per_token", the default): option j of question i
is scored by its mean negative log-likelihood per continuation token,

    s_ij = -ll_ij / ntok_ij        (nats per token)

where ll_ij is the log-likelihood lm-eval sums over the option's continuation tokens given the
question's prompt, and ntok_ij is the number of those tokens (lm-eval's own tokenisation of the
continuation, recorded by evaluate.py); sigma_i = population std over j (numpy's default, ddof 0, as
the reference). This is the score OpenCompass's PPL mode gives, which the paper's stability used:
its `get_ppl` returns not exp(.) but the mean token cross-entropy, sum of NLL / number of tokens,
and with `mask_length` = the prompt's token count (the masked form PPLInferencer uses for the first
term of its normalized score) the sum and the count run over exactly the option's tokens, as here.
OpenCompass's default, unmasked call also averages the prompt's own tokens (the same for every
option) into each option's score: the same nats-per-token scale, flattened further by the prompt
length; lm-eval's requests carry no prompt NLL, so the option-only mean is the closest exact form.
What matters for the weights is the scale: a per-token mean stays within a few nats whatever the
answer length, so softmax(sigma) stays soft, while summed log-likelihoods (scale "sum", what lm-eval
records) spread with the answer length (sigma up to ~45 on HellaSwag's long endings), and softmax
then puts nearly all the weight on one question. `effective_questions` = 1 / sum_i w_i^2 says how many
questions the weights really count (n when uniform, 1 when one question takes it all).

A generative task (GSM8K) has no options, so no sigma: its stability is the fraction of questions on
which the pruned model's extracted answer (lm-eval's answer filter, stock's strict match) is the same
string as the original's, right or wrong (two answers the filter cannot extract, lm-eval's "[invalid]",
count as the same); every question weighs the same (`basis: answers`, effective_questions = n).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .artifacts import Question, Samples, Stability, TaskStability, read_samples
from .atomic import atomic_write_json
from .errors import StreamlineError

# OpenCompass prediction files and their option labels, as in the reference calculate_stability.py.
OPENCOMPASS_DATASETS: dict[str, list[str]] = {
    "piqa.json": ["0", "1"],
    "BoolQ.json": ["0", "1"],
    "C3.json": ["0", "1", "2", "3"],
    "commonsense_qa.json": ["A", "B", "C", "D", "E"],
    "hellaswag.json": ["0", "1", "2", "3"],
    "race-middle.json": ["A", "B", "C", "D"],
    "cmnli.json": ["contradiction", "entailment", "neutral"],
    "WSC.json": ["A", "B"],
    "chid-test.json": ["0", "1", "2", "3", "4", "5", "6"],
    "race-high.json": ["A", "B", "C", "D"],
}
# Subject files averaged into one number each, all with options A-D.
OPENCOMPASS_GROUPS: dict[str, str] = {"cmmlu_avg": "cmmlu-*.json", "mmlu_avg": "lukaemon_mmlu_*.json"}
GROUP_LABELS = ["A", "B", "C", "D"]


SCALES = ("per_token", "sum")


def softmax_weights(sigma: np.ndarray) -> np.ndarray:
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.size == 0:
        raise StreamlineError("stability: no questions to score")
    w = np.exp(sigma - sigma.max())  # shift for overflow safety; same softmax as exp(s)/sum
    return w / w.sum()


def effective_questions(sigma: np.ndarray) -> float:
    """1 / sum(w^2) for w = softmax(sigma): the number of equally weighted questions w is worth."""
    return float(1.0 / np.sum(softmax_weights(sigma) ** 2))


def option_scores(rec: Question, scale: str = "per_token") -> np.ndarray:
    """One question's per-option scores from a samples record: mean NLL per token, or summed NLL."""
    nll = -np.asarray(rec.ll, dtype=np.float64)
    if scale == "sum":
        return nll
    ntok = np.asarray(rec.ntok or [], dtype=np.float64)
    if ntok.shape != nll.shape or (ntok < 1).any():
        raise StreamlineError(f"samples: per-option token counts {rec.ntok} do not fit {len(nll)} options")
    return nll / ntok


def stability_score(
    sigma: np.ndarray, original_correct: np.ndarray, pruned_correct: np.ndarray, legacy: bool = False
) -> float:
    """Softmax(sigma)-weighted agreement of correctness; all arrays in the same question order."""
    w = softmax_weights(sigma)
    agree = np.asarray(original_correct, dtype=bool) == np.asarray(pruned_correct, dtype=bool)
    if legacy:
        return float(min(1.0, w[: int(agree.sum())].sum()))  # the reference bug: the first k weights
    return float(min(1.0, w[agree].sum()))  # weights that sum to 1 + 2e-16 must not give 100.00000000000002%


# ---------------------------------------------------------------- lm-eval samples


def stability_from_samples(
    before_samples: Samples | dict | Path,
    after_samples: Samples | dict | Path,
    *,
    legacy: bool = False,
    metric: str = "acc",
    scale: str = "per_token",
) -> Stability:
    """Stability per task and on average, from two samples files written by `evaluate()`.

    The per-option score is the original model's mean negative log-likelihood per token of each
    option's continuation (`scale="per_token"`, see the module docstring), or lm-eval's summed one
    (`scale="sum"`, the collapsed weights this replaced). `metric` picks which correctness flag is
    compared: "acc" (our headline) or "acc_norm" (falls back to acc on tasks without it, as for boolq,
    rte and winogrande).
    """
    if metric not in ("acc", "acc_norm"):
        raise StreamlineError(f"metric: must be acc or acc_norm, got {metric!r}")
    if scale not in SCALES:
        raise StreamlineError(f"scale: must be one of {', '.join(SCALES)}, got {scale!r}")
    before, after = (_samples(s) for s in (before_samples, after_samples))
    common = [t for t in before.tasks if t in after.tasks]
    if not common:
        raise StreamlineError("samples: the two samples files share no task")

    def correct(rec: Question) -> bool:
        return rec.acc_norm if metric == "acc_norm" and rec.acc_norm is not None else rec.acc

    per_task = {}
    for task in common:
        b, a = before.tasks[task], after.tasks[task]
        if set(b) != set(a):
            raise StreamlineError(
                f"samples: task {task} covers different questions before and after "
                f"({len(b)} vs {len(a)}); evaluate both with the same limit"
            )
        ids = sorted(b, key=int)  # doc order, which is what "the first k" means in legacy mode
        orig = np.array([correct(b[i]) for i in ids])
        pruned = np.array([correct(a[i]) for i in ids])
        if b[ids[0]].answer is not None:  # generated answers: no options to weigh by, so the same extracted answer
            per_task[task] = TaskStability(
                stability=float(np.mean([b[i].answer == a[i].answer for i in ids])),
                agreement=float(np.mean(orig == pruned)),
                n=len(ids),
                effective_questions=float(len(ids)),
                sigma_min=None,
                sigma_max=None,
                basis="answers",
            )
            continue
        sigma = np.array([np.std(option_scores(b[i], scale)) for i in ids])
        per_task[task] = TaskStability(
            stability=stability_score(sigma, orig, pruned, legacy=legacy),
            agreement=float(np.mean(orig == pruned)),  # unweighted, for reference
            n=len(ids),
            effective_questions=effective_questions(sigma),
            sigma_min=float(sigma.min()),
            sigma_max=float(sigma.max()),
        )
    return Stability(
        metric=metric,
        legacy=legacy,
        scale=scale,
        tasks=per_task,
        average=float(np.mean([r.stability for r in per_task.values()])),
        effective_questions={t: r.effective_questions for t, r in per_task.items()},
        skipped_tasks=sorted(set(before.tasks) ^ set(after.tasks)),
    )


# ---------------------------------------------------------------- OpenCompass predictions


def _load_predictions(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise StreamlineError(f"{path}: cannot read OpenCompass predictions ({e.__class__.__name__})") from None


def _samples(samples: Samples | dict | Path) -> Samples:
    if isinstance(samples, Samples):
        return samples
    return Samples.from_json(samples, "samples") if isinstance(samples, dict) else read_samples(samples)


def opencompass_file_stability(before_file: Path, after_file: Path, labels: list[str], legacy: bool = False) -> float:
    """One OpenCompass prediction file pair: sigma from the ORIGINAL model's per-label PPL."""
    before, after = _load_predictions(before_file), _load_predictions(after_file)
    if set(before) != set(after):
        raise StreamlineError(f"{after_file}: has {len(after)} questions, original has {len(before)}")
    ids = [str(i) for i in range(len(before))]  # entries are keyed "0", "1", ...
    try:
        sigma = np.array([np.std([before[i][f"label: {lab}"]["PPL"] for lab in labels]) for i in ids])
        orig = np.array([before[i]["prediction"] == before[i]["gold"] for i in ids])
        pruned = np.array([after[i]["prediction"] == after[i]["gold"] for i in ids])
    except KeyError as e:
        raise StreamlineError(
            f"{before_file}: entry lacks {e} (expected 'label: X' -> PPL, prediction, gold)"
        ) from None
    return stability_score(sigma, orig, pruned, legacy=legacy)


def stability_from_opencompass(before_dir: Path, after_dir: Path, legacy: bool = False) -> dict[str, float]:
    """Stability for every known OpenCompass dataset present in both dirs; MMLU/CMMLU averaged over subjects."""
    before_dir, after_dir = Path(before_dir), Path(after_dir)
    for d in (before_dir, after_dir):
        if not d.is_dir():
            raise StreamlineError(f"{d}: OpenCompass predictions dir not found")
    out: dict[str, float] = {}
    for name, labels in OPENCOMPASS_DATASETS.items():
        if (before_dir / name).is_file() and (after_dir / name).is_file():
            out[name] = opencompass_file_stability(before_dir / name, after_dir / name, labels, legacy)
    for key, pattern in OPENCOMPASS_GROUPS.items():
        files = sorted(before_dir.glob(pattern))
        missing = [f.name for f in files if not (after_dir / f.name).is_file()]
        if missing:
            raise StreamlineError(f"{after_dir}: lacks {len(missing)} subject files of {key}, e.g. {missing[0]}")
        if files:
            out[key] = float(
                np.mean([opencompass_file_stability(f, after_dir / f.name, GROUP_LABELS, legacy) for f in files])
            )
    if not out:
        raise StreamlineError(f"{before_dir}: no known OpenCompass prediction files shared with {after_dir}")
    return out


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--opencompass",
        nargs=2,
        metavar=("BEFORE_DIR", "AFTER_DIR"),
        type=Path,
        help="OpenCompass prediction dirs of the original and the pruned model",
    )
    src.add_argument("--before", type=Path, help="samples file of the original model (from evaluate)")
    parser.add_argument("--after", type=Path, help="samples file of the pruned model")
    parser.add_argument("--out", type=Path, help="write the result here as JSON (atomically)")
    parser.add_argument(
        "--metric",
        choices=["acc", "acc_norm"],
        default="acc",
        help="correctness flag compared for lm-eval samples (default: acc, the headline)",
    )
    parser.add_argument(
        "--scale",
        choices=SCALES,
        default="per_token",
        help="lm-eval samples: per-option score as mean NLL per token (default, OpenCompass's "
        "PPL scale) or summed NLL (lm-eval's raw log-likelihoods)",
    )
    parser.add_argument(
        "--legacy", action="store_true", help="reproduce the reference script's bug (sum of the first k weights)"
    )


def run(args: argparse.Namespace) -> dict:
    if args.opencompass:
        result: dict = {
            "legacy": args.legacy,
            "datasets": stability_from_opencompass(*args.opencompass, legacy=args.legacy),
        }
        if args.out:
            atomic_write_json(args.out, result)
    else:
        if args.after is None:
            raise StreamlineError("--after: required with --before")
        stability = stability_from_samples(
            args.before, args.after, legacy=args.legacy, metric=args.metric, scale=args.scale
        )
        if args.out:
            stability.write(args.out)  # signed: the report reads it
        result = stability.to_json()
    print(json.dumps(result, indent=2))
    return result
