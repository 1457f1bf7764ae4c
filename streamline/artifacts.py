"""The JSON artifacts stages hand to each other, as typed records (records.Record), each checked before use.

Every artifact a stage writes is a frozen dataclass here (streamline.json's ModelInfo in model_info.py, as
loading a model needs it and nothing else): the writer builds it and calls `to_json`, every reader gets it
back through `from_json` or `load`, so a field is named in one place and a new one is one line. A stage
never trusts a file another stage wrote: `load` checks every field's type, and the records check themselves
(a perplexity against its blocks, the picked block against the scores); a torn, incomplete or edited
artifact is one line that names the field and moves the file aside (so the stage that writes it reruns),
never a KeyError or a wrong number deep in a stage.

    BlockScores  scores.json                       score -> replace, linear, extract (pairs), report
    ModelInfo    streamline.json of a model dir    replace, linear, train -> train, export, evaluate, report
                 (model_info.py)
    TrainLog     train_log.json                    train -> export (model card), checkpoints, report
    EstimateLog  estimate_log.json                 linear -> report
    Progress     progress.json of a checkpoint dir train -> train (a resumed run)
    Evaluation   eval.json                         evaluate -> report
    Samples      samples.json.gz                   evaluate -> stability, report
    Stability    stability.json                    stability -> report
    LlamaCppCheck  gguf.json (export.gguf)         gguf-check -> report
    ReportManifest  the report's --manifest        report.smk -> report
    Summary      summary.json (its rows: Row, VariantRow)   report -> the user (unsigned: no stage reads it)

Every artifact but summary.json is written signed (`write`) and read back through `load`, which checks its
digest first (records.py). Values that can be recomputed are: an accuracy from its samples' flags, a flag from
its question's log-likelihoods, an average from its tasks, a perplexity from its blocks' NLLs, a speedup from
its tokens/s, a checkpoint's best from its validation log. Counts are >= 0 and fractions in [0, 1].

Kept free of torch: every stage that reads an artifact imports this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .model_info import ModelInfo
from .records import Count, Fraction, Record


def _close(a: float, b: float) -> bool:
    """Equal but for float rounding (a value against its recomputation from the same numbers)."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _first_max(xs: list[float]) -> int:
    """numpy's argmax: the first index of the largest value (lm-eval's prediction)."""
    return max(range(len(xs)), key=xs.__getitem__)


# ---------------------------------------------------------------- scores.json


@dataclass(frozen=True)
class WindowScore(Record):
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class BlockScores(Record):
    """scores.json: the score of every window of `span` consecutive layers, and the block picked (the best
    window: span = n + k for a replacement of k layers, n for plain removal)."""

    metric: str
    higher_is_more_redundant: bool
    n: int
    span: int
    num_layers: int
    samples: Count
    tokens: Count
    scores: list[WindowScore]  # every window, by start layer
    best_start: int
    best_score: float
    block: list[int]  # layers best_start..best_start+span-1
    removed_layers: list[int]  # what disappears if the block's first layer is kept
    layers_after: int

    def __post_init__(self) -> None:
        if not 1 <= self.n <= self.span <= self.num_layers or self.layers_after != self.num_layers - self.n:
            raise ValueError(
                f"n {self.n}, span {self.span} and {self.layers_after} layers after do not fit a "
                f"{self.num_layers}-layer model"
            )
        if len(self.scores) != self.num_layers - self.span + 1 or any(  # (the length first: an edited count is huge)
            (w.start, w.end) != (i, i + self.span - 1) for i, w in enumerate(self.scores)
        ):
            raise ValueError(f"the windows scored are not every {self.span}-layer window of {self.num_layers} layers")
        values = [w.score for w in self.scores]
        best = values.index(max(values) if self.higher_is_more_redundant else min(values))  # the first, as argmax
        if (
            self.block != list(range(best, best + self.span))
            or self.best_start != best
            or self.best_score != values[best]
        ):
            raise ValueError(f"block {self.block} is not the best window (layers {best}..{best + self.span - 1})")


def read_scores(path: str | Path) -> BlockScores:
    """A scores.json, checked (its block is the best of its windows); a torn or edited one is moved aside, so
    scoring reruns."""
    return BlockScores.load(path, "block scores")


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainStep(Record):
    step: Count
    loss: float
    lr: float
    grad_norm: float | None  # None: not measured (DeepSpeed), or a step fp16's loss scaler skipped
    skipped: bool = False  # fp16: the loss scaler skipped this step (its gradients overflowed)


@dataclass(frozen=True)
class TrainLog(Record):
    """train_log.json: one training run (a stage of a staged run), as the training core returns it."""

    net: str
    loss: str  # "mse+kd" for the second stage of a staged run
    stage_loss: str  # the loss this run trained with
    replacement_layers: Count
    slots: list[Count]
    block: list[Count]
    settings: dict[str, Any]
    select: str  # the validation metric that picks the kept state
    total_steps: Count
    warmup_steps: Count
    train_samples: Count
    train_tokens: Count
    val_samples: dict[str, Count]
    steps: list[TrainStep]
    val: list[dict[str, int | float]]  # {"step", "loss" (= the select metric), every metric}
    initial_val_loss: float
    best_val_loss: float
    initial_val: dict[str, float]
    best_val: dict[str, float]
    best_step: Count
    kept: Literal["best", "initial"]
    num_processes: Count
    distributed_type: str
    mixed_precision: str
    deepspeed: bool
    resumed_at_step: int | None
    seconds: float
    validation_seconds: float
    samples_per_second: float
    peak_rss_mb: float
    peak_gpu_mb: float | None
    warnings: list[str]
    skipped_steps: int = 0  # fp16: optimizer steps the loss scaler skipped

    def __post_init__(self) -> None:
        if self.skipped_steps != sum(s.skipped for s in self.steps):
            raise ValueError(f"{self.skipped_steps} skipped steps, {sum(s.skipped for s in self.steps)} logged")
        if (self.kept == "best") != (self.best_val_loss < self.initial_val_loss):  # how the core decides
            raise ValueError(
                f"kept {self.kept} state, with validation {self.initial_val_loss:.5g} -> {self.best_val_loss:.5g}"
            )
        if len(self.steps) > self.total_steps or self.best_step > self.total_steps:
            raise ValueError(f"{len(self.steps)} steps logged, best at step {self.best_step}, of {self.total_steps}")
        losses = [v.get("loss") for v in self.val]
        if not losses or None in losses or (self.initial_val_loss, self.best_val_loss) != (losses[0], min(losses)):
            raise ValueError(f"validation {self.initial_val_loss} -> best {self.best_val_loss} is not its log's")


@dataclass(frozen=True)
class TrainState(Record):
    """A checkpoint's training state: the steps so far, every validation, the best one (a finished run's
    progress.json keeps `best_step` only)."""

    step: Count = 0
    steps: list[TrainStep] = field(default_factory=list)
    val: list[dict[str, int | float]] = field(default_factory=list)  # as TrainLog.val
    best: float | None = None
    best_step: Count = 0
    tokens: Count = 0
    validation_seconds: float = 0.0
    skipped_steps: Count = 0  # fp16: steps the loss scaler skipped so far

    def resumable_problem(self) -> str | None:
        """Why the loop cannot resume from this state, or None: its steps must be 1..step, its validations
        within them, and its best the first smallest of its validations (as the loop keeps it)."""
        if len(self.steps) != self.step or any(s.step != i for i, s in enumerate(self.steps, 1)):
            return f"step {self.step} with {len(self.steps)} steps logged"
        checked = [v.get("step") for v in self.val]
        if (
            not self.val
            or not all(isinstance(v.get("step"), int) and "loss" in v for v in self.val)
            or checked != sorted(checked)
            or not 0 <= checked[0] <= checked[-1] <= self.step
        ):
            return f"validations at steps {checked}, at step {self.step}"
        losses = [v["loss"] for v in self.val]
        first = losses.index(min(losses))
        if self.best != losses[first] or self.best_step != checked[first]:
            return f"best {self.best} at step {self.best_step}, its validations' is {losses[first]} at {checked[first]}"
        return None


@dataclass(frozen=True)
class Progress(Record):
    """progress.json of a checkpoint dir: what the checkpoint was made from (`fingerprint`), the SHA-256 of each
    of its files, and the training state; `done` for a finished run, which keeps its log (`result`)."""

    fingerprint: dict[str, Any]
    state_dir: str | None  # the accelerate checkpoint; None once done
    best_file: str  # the best state's weights (the kept ones once done)
    state: TrainState
    files: dict[str, str]
    done: bool = False
    result: TrainLog | None = None

    def __post_init__(self) -> None:
        if self.done != (self.result is not None) or self.done != (self.state_dir is None):
            raise ValueError(
                f"done {self.done} with state_dir {self.state_dir!r} and {'a' if self.result else 'no'} train log"
            )
        if self.best_file not in self.files or not (
            self.done or any(f.startswith(f"{self.state_dir}/") for f in self.files)
        ):
            raise ValueError("it names files it has no checksum for")
        if self.result is not None:  # done: the state kept is the one its log says
            kept = self.result.best_step if self.result.kept == "best" else 0
            problem = None if self.state.best_step == kept else f"kept step {self.state.best_step}, its log says {kept}"
        else:
            problem = self.state.resumable_problem()
        if problem:
            raise ValueError(problem)


@dataclass(frozen=True)
class EstimateLog(Record):
    """estimate_log.json of `network: linear`: the map, its fit under both objectives, and its cost."""

    block: list[int]
    ridge: float
    tokens: Count
    objective: str  # linear.objective: lstsq | balanced | cosine
    steps: Count  # Adam steps of the cosine estimate (0: lstsq, balanced)
    relative_residual: float  # ||R - M T||^2 / ||R||^2: what lstsq minimises
    relative_residual_of_identity: float
    cosine_distance: float  # mean over tokens of 1 - cos(m T, r): what cosine minimises
    cosine_distance_of_identity: float
    extract_seconds: float
    estimate_seconds: float
    seconds: float  # extraction + estimate + fold: the whole training-free recipe
    outlier_tokens: Count = 0  # tokens with |r| > 10x their sample's median (the attention sink)
    outlier_share: float | None = None  # balanced: their share of the fit


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class TaskScores(Record):
    """One lm-eval task's result: acc (and acc_norm where lm-eval reports it) for a multiple-choice task; exact
    match under each of its answer filters for a generative one (the headline under the first, stock's strict one)."""

    n: Count
    acc: float | None = None
    acc_stderr: float | None = None
    acc_norm: float | None = None
    acc_norm_stderr: float | None = None
    headline_metric: Literal["acc", "acc_norm", "exact_match"] = "acc"
    headline: float | None = None
    exact_match: float | None = None
    exact_match_stderr: float | None = None
    answer_filter: str | None = None  # the filter that extracts the answer exact_match is scored on
    exact_match_filters: dict[str, float | None] | None = None  # every filter's exact match

    def __post_init__(self) -> None:
        values = (self.acc, self.acc_norm, self.headline, self.exact_match, *(self.exact_match_filters or {}).values())
        if any(x is not None and not 0 <= x <= 1 for x in values):
            raise ValueError(f"an accuracy outside [0, 1] ({', '.join(str(x) for x in values if x is not None)})")
        if self.headline != getattr(self, self.headline_metric):
            raise ValueError(
                f"headline {self.headline} is not its {self.headline_metric}, {getattr(self, self.headline_metric)}"
            )


def _perplexity_problem(
    value: float, nll_per_block: list[float], tokens_per_block: list[int], blocks: int, tokens: int
) -> str | None:
    """Why a perplexity is not what its blocks' NLLs give, or None (compared in log space: exp of an edited
    mean can overflow)."""
    if not (len(nll_per_block) == len(tokens_per_block) == blocks and sum(tokens_per_block) == tokens > 0):
        return (
            f"perplexity over {blocks} blocks of {tokens} tokens, with {len(nll_per_block)} NLLs and "
            f"{sum(tokens_per_block)} tokens per block"
        )
    if value <= 0 or not _close(math.log(value), sum(nll_per_block) / tokens):
        return f"perplexity {value} is not what its blocks' NLL gives"
    return None


@dataclass(frozen=True)
class Perplexity(Record):
    value: float
    data_dir: str
    split: str
    blocks: Count
    tokens: Count
    nll_per_block: list[float]
    tokens_per_block: list[Count]
    wall_time_s: float

    def __post_init__(self) -> None:  # the value is what its blocks give: an edited one is caught
        problem = _perplexity_problem(self.value, self.nll_per_block, self.tokens_per_block, self.blocks, self.tokens)
        if problem:
            raise ValueError(problem)


@dataclass(frozen=True)
class KL(Record):
    value: float
    original: str
    kl_per_block: list[float]
    unit: str = "nats per token"


@dataclass(frozen=True)
class Throughput(Record):
    """Prefill and decode throughput of the pruned model and the original, measured in one run, and the ideal."""

    batch: Count
    prefill_tokens: Count
    decode_prompt_tokens: Count
    decode_steps: Count
    repeats: Count  # best of, alternating the two models
    prefill_tokens_per_s: dict[str, float]  # {"pruned", "original"}
    decode_tokens_per_s: dict[str, float]
    flops_per_token: dict[str, float]
    decode_weight_bytes: dict[str, Count]
    speedup: dict[str, float]  # {"prefill", "decode"}: original's time / pruned's
    ideal: dict[str, float]  # FLOPs ratio (prefill), weight-bytes ratio (decode)
    wall_time_s: float
    # how far to trust the speedups (timing.py): each phase's spread of repeats, the load average, and why the
    # figures are noise (None: nothing says so)
    spread: dict[str, float] | None = field(default=None, kw_only=True)
    load: float | None = field(default=None, kw_only=True)
    cores: Count | None = field(default=None, kw_only=True)
    noise: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:  # a speedup is its two throughputs' ratio, an ideal its two costs'
        ratios = {
            "speedup": (self.prefill_tokens_per_s, self.decode_tokens_per_s),
            "ideal": (self.flops_per_token, self.decode_weight_bytes),
        }
        for name, (prefill, decode) in ratios.items():
            stated = getattr(self, name)
            for kind, pair in (("prefill", prefill), ("decode", decode)):
                if set(pair) != {"pruned", "original"} or not all(x > 0 for x in pair.values()):
                    raise ValueError(f"{kind} {name}: measured for {sorted(pair)}, not a positive pruned and original")
                # throughput: pruned / original; cost (FLOPs, bytes): original / pruned
                ratio = pair["pruned"] / pair["original"] if name == "speedup" else pair["original"] / pair["pruned"]
                if kind not in stated or not _close(stated[kind], ratio):
                    raise ValueError(
                        f"{kind} {name} {stated.get(kind)} is not what its measurements give ({ratio:.6g})"
                    )
        if self.spread is not None:  # the noise verdict is its spread's and load's: an edit cannot hide it
            from .timing import noise

            if any(not 0 <= s < math.inf for s in self.spread.values()) or (self.load is not None and self.load < 0):
                raise ValueError(f"spread {self.spread} or load {self.load} is out of range")
            verdict = noise(self.spread, self.load, getattr(self, "threads", None), self.cores)
            if self.noise != verdict:
                raise ValueError(f"noise {self.noise!r} is not what its spread and load give ({verdict!r})")


@dataclass(frozen=True)
class Speed(Throughput):
    """In PyTorch (eval.json's `speed`)."""

    device: str
    threads: int | None  # CPU threads; None on a GPU


@dataclass(frozen=True)
class Evaluation(Record):
    """eval.json: lm-eval's results on one model dir, its held-out perplexity and, for a pruned model, its KL to
    the original and its speedup."""

    model_dir: str
    tasks: list[str]
    limit: int | float | None
    offline_data_dir: str | None
    splits: dict[str, str]
    device: str
    dtype: str
    batch_size: int
    lm_eval_version: str | None
    results: dict[str, TaskScores]
    average: float | None
    average_acc_norm_where_available: float | None  # the other common convention, for comparison only
    samples_path: str
    num_hidden_layers: Count
    params: Count
    streamline: ModelInfo | None  # what the pruning stage recorded about this model, if it was pruned
    perplexity: Perplexity | None = None
    kl_to_original: KL | None = None
    speed: Speed | None = None
    wall_time_s: float = 0.0
    scorer: str | None = None  # evaluate's lm-eval model: packed (scorer.py) or hf (lm-eval's HFLM)

    def __post_init__(self) -> None:
        if set(self.results) != set(self.tasks):
            raise ValueError(f"results for {sorted(self.results)}, tasks {self.tasks}")
        for name, stated, values in (
            ("average", self.average, [r.headline for r in self.results.values()]),
            (
                "average_acc_norm_where_available",
                self.average_acc_norm_where_available,
                [r.headline if r.acc_norm is None else r.acc_norm for r in self.results.values()],
            ),
        ):
            mean = _mean(values)
            if (stated is None) != (mean is None) or (mean is not None and not _close(stated, mean)):
                raise ValueError(f"{name} {stated} is not the mean of its tasks ({mean})")
        kl, ppl = self.kl_to_original, self.perplexity
        if kl and (
            not ppl
            or len(kl.kl_per_block) != ppl.blocks
            or not math.isclose(kl.value, sum(kl.kl_per_block) / ppl.tokens, rel_tol=1e-9, abs_tol=1e-12)
        ):
            raise ValueError(f"KL {kl.value} is not what its blocks give")

    def disagreement(self, samples: Samples) -> str | None:
        """Where this evaluation's accuracies are not what its samples' flags give, in words, or None."""
        for task in self.tasks:
            questions, scores = samples.tasks.get(task), self.results[task]
            if questions is None or scores.n != len(questions):
                return f"{task} has {scores.n} questions, its samples {len(questions or {})}"
            for metric in ("acc", "acc_norm"):
                stated, flags = getattr(scores, metric), [getattr(q, metric) for q in questions.values()]
                if stated is not None and None not in flags and not _close(stated, sum(flags) / len(flags)):
                    return f"{task} {metric} {stated} is not what its samples give ({sum(flags) / len(flags):.6g})"
        return None


SAMPLES_FORMAT = "streamline-lm-eval-samples/2"


@dataclass(frozen=True)
class Question(Record):
    """One question of a samples file, as lm-eval scored it: a multiple-choice question's options, or the answer
    extracted from a generated one (then ll is empty, and acc is its exact match). A multiple-choice question's
    flags are what lm-eval's rule gives (api/task.py, process_results): acc is argmax(ll) == gold, acc_norm
    argmax(ll / nchar) == gold, nchar being each option's length in characters; both are recomputed here, so an
    edited flag is caught."""

    ll: list[float]  # per option: lm-eval's summed log-likelihood of the continuation
    ntok: list[Count] | None  # per option: the continuation's tokens, as lm-eval's model wrapper splits them
    gold: int | list[int] | None  # the right option (several for lm-eval's multiple-target tasks); None: generated
    acc: bool
    acc_norm: bool | None  # only where lm-eval reports acc_norm
    nchar: list[Count] | None = None  # per option: its length in characters (lm-eval's acc_norm divisor)
    answer: str | None = None  # generated: the answer lm-eval's filter extracted ("[invalid]" where none)

    def __post_init__(self) -> None:
        if (self.answer is None) == (not self.ll):
            raise ValueError("a question has either per-option log-likelihoods or a generated answer")
        if self.answer is not None:
            return  # exact match against a target the samples do not hold: lm-eval's own filter decided it
        golds = self.gold if isinstance(self.gold, list) else [self.gold]
        options = len(self.ll)
        if (
            not golds
            or not all(g is not None and 0 <= g < options for g in golds)
            or any(x is not None and len(x) != options for x in (self.ntok, self.nchar))
        ):
            raise ValueError(
                f"gold {self.gold}, token counts {self.ntok} and lengths {self.nchar} do not fit {options} options"
            )
        if self.acc != (_first_max(self.ll) in golds):
            raise ValueError(
                f"acc {self.acc} is not what its log-likelihoods give (gold {self.gold}, best option "
                f"{_first_max(self.ll)})"
            )
        if self.acc_norm is not None and self.nchar and 0 not in self.nchar:
            best = _first_max([ll / n for ll, n in zip(self.ll, self.nchar)])
            if self.acc_norm != (best in golds):
                raise ValueError(
                    f"acc_norm {self.acc_norm} is not what its length-normalised log-likelihoods "
                    f"give (gold {self.gold}, best option {best})"
                )


@dataclass(frozen=True)
class Samples(Record):
    """samples.json.gz next to eval.json: every question's per-option log-likelihoods and correctness."""

    format: str
    tasks: dict[str, dict[str, Question]]  # task -> doc id -> question
    model_dir: str | None = None
    headline_metric: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format != SAMPLES_FORMAT:
            raise ValueError(f"format {self.format!r}, not {SAMPLES_FORMAT}: evaluate again")
        empty = [t for t, questions in self.tasks.items() if not questions]
        if empty:
            raise ValueError(f"no questions for {empty}")


def read_samples(path: str | Path) -> Samples:
    """A samples file, checked question by question; a torn or edited one is moved aside (evaluate reruns)."""
    return Samples.load(path, "samples file")


@dataclass(frozen=True)
class TaskStability(Record):
    stability: Fraction
    agreement: Fraction  # unweighted, for reference
    n: Count
    effective_questions: float  # 1 / sum(w^2): between 1 and n
    sigma_min: float | None  # None for a generative task (no options)
    sigma_max: float | None
    basis: Literal["sigma", "answers"] = "sigma"  # softmax(sigma)-weighted correctness, or same extracted answers

    def __post_init__(self) -> None:
        sigma_ok = (self.sigma_min is None and self.sigma_max is None and self.basis == "answers") or (
            self.sigma_min is not None and self.sigma_max is not None and 0 <= self.sigma_min <= self.sigma_max
        )
        if not (1 - 1e-9 <= self.effective_questions <= self.n * (1 + 1e-9) and sigma_ok):
            raise ValueError(
                f"{self.effective_questions} effective questions of {self.n}, sigma "
                f"{self.sigma_min}..{self.sigma_max} ({self.basis})"
            )


@dataclass(frozen=True)
class Stability(Record):
    """stability.json of a pruned model against the original, from their samples files."""

    metric: str
    legacy: bool
    scale: str
    tasks: dict[str, TaskStability]
    average: Fraction
    effective_questions: dict[str, float]
    skipped_tasks: list[str]

    def __post_init__(self) -> None:
        if not self.tasks or not _close(self.average, sum(t.stability for t in self.tasks.values()) / len(self.tasks)):
            raise ValueError(f"average {self.average} is not the mean of its {len(self.tasks)} tasks")
        if self.effective_questions != {t: r.effective_questions for t, r in self.tasks.items()}:
            raise ValueError("effective_questions are not its tasks'")

    def disagreement(self, before: Samples, after: Samples) -> str | None:
        """Where this stability does not fit the two samples files it was computed from, in words, or None:
        each task's question count and (for metric acc) its unweighted agreement."""
        for task, r in self.tasks.items():
            b, a = before.tasks.get(task), after.tasks.get(task)
            if b is None or a is None or r.n != len(b) or set(b) != set(a):
                return f"{task} has {r.n} questions, its samples {len(b or {})} and {len(a or {})}"
            agree = sum(b[q].acc == a[q].acc for q in b) / len(b)
            if self.metric == "acc" and not _close(r.agreement, agree):
                return f"{task} agreement {r.agreement} is not what the samples give ({agree:.6g})"
        return None


@dataclass(frozen=True)
class LlamaCppSpeed(Throughput):
    """In llama.cpp (batch 1), the pruned GGUF against the original's."""

    engine: str
    threads: int


@dataclass(frozen=True)
class LlamaCppCheck(Record):
    """gguf.json: a GGUF run by llama.cpp on the held-out blocks; with the original's GGUF, the speedup over it;
    with the HF dir, streamline's own perplexity of it on the same blocks."""

    gguf: str
    file_type: int
    layers: Count
    data_dir: str
    split: str
    blocks: Count
    tokens: Count
    gguf_ppl: float
    gguf_nll_per_block: list[float]
    gguf_tokens_per_block: list[Count]
    llama_cpp_python: str | None
    extra_buffers: bool
    ppl_seconds: float
    hf_model: str | None = None
    hf_ppl: float | None = None
    gguf_ppl_ratio_to_hf: float | None = None
    original_gguf: str | None = None
    speed_llamacpp: LlamaCppSpeed | None = None
    speedup_llamacpp: dict[str, float] | None = None  # = speed_llamacpp.speedup, for the report's row
    speedup_llamacpp_ideal: dict[str, float] | None = None

    def __post_init__(self) -> None:  # the figures the report shows are what their measurements give
        problem = _perplexity_problem(
            self.gguf_ppl, self.gguf_nll_per_block, self.gguf_tokens_per_block, self.blocks, self.tokens
        )
        if problem:
            raise ValueError(f"gguf_{problem}")
        if (self.hf_ppl is None) != (self.gguf_ppl_ratio_to_hf is None) or (
            self.hf_ppl is not None
            and (self.hf_ppl <= 0 or not _close(self.gguf_ppl_ratio_to_hf, self.gguf_ppl / self.hf_ppl))
        ):
            raise ValueError(f"gguf_ppl_ratio_to_hf {self.gguf_ppl_ratio_to_hf} is not gguf_ppl / hf_ppl")
        speed = self.speed_llamacpp
        expected = (speed.speedup, speed.ideal) if speed else (None, None)
        if (self.speedup_llamacpp, self.speedup_llamacpp_ideal) != expected:
            raise ValueError("speedup_llamacpp is not its speed_llamacpp's")


# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class BaselineFiles(Record):
    """The report manifest's baseline: its eval.json and samples file (and gguf.json with export.gguf)."""

    eval: str
    samples: str
    name: str | None = None
    gguf: str | None = None


@dataclass(frozen=True)
class RoundFiles(Record):
    """One round of a variant pruned in rounds, in the report manifest: its block scores and its train log."""

    scores: str
    train_log: str | None = None


@dataclass(frozen=True)
class VariantFiles(Record):
    """A variant's files in the report manifest: its log is train_log.json (trained), estimate_log.json (linear)
    or none (plain removal), as the rule declares it; a variant pruned in rounds names every round's files (its
    train_log is the last round's)."""

    name: str
    eval: str
    samples: str
    stability: str
    train_log: str | None = None
    estimate_log: str | None = None
    gguf: str | None = None
    rounds: list[RoundFiles] | None = None

    def __post_init__(self) -> None:
        if self.train_log and self.estimate_log:
            raise ValueError(f"variant {self.name} names a train log and an estimate log")


@dataclass(frozen=True)
class ReportManifest(Record):
    """The report's --manifest (report.smk writes it): every file the report reads, each a declared input."""

    baseline: BaselineFiles
    rows: list[VariantFiles]
    scores: list[str]  # block-score files, to plot


@dataclass(frozen=True)
class TrainFacts(Record):
    """A row's training (or, for training-free variants, estimate) facts, from its log."""

    kind: Literal["trained", "estimated"]
    tokens: int | None
    seconds: float | None
    total_steps: int | None
    initial_val_loss: float | None
    best_val_loss: float | None
    best_step: int | None
    kept: str | None
    warnings: list[str]


Interval = list[float]  # [low, high], 95%


@dataclass(frozen=True)
class RoundFacts(Record):
    """One round of a variant pruned in rounds, in the ORIGINAL model's layer numbering (rounds.py)."""

    round: int
    n: Count  # layers this round removed
    block: list[Count]  # the layers its block spanned (not consecutive when an earlier round removed some inside)
    removed: list[Count]
    score: float  # the block's score in the model the round pruned
    metric: str
    layers: Count  # layers after the round
    train_tokens: Count | None


@dataclass(frozen=True)
class Row(Record):
    """A summary row: the original model (the baseline) or, as VariantRow, a pruned variant. Accuracies are
    fractions; every interval is 95%; None where a figure does not apply to the row."""

    model: str
    n: int | None
    variant: str
    label: str
    net: str | None
    loss: str | None
    replacement_layers: int | None
    block: list[int] | None
    layers: int | None
    params: int | None
    params_removed_pct: float | None
    compression_ratio: float | None
    tasks: dict[str, float | None]
    average: float | None
    questions: dict[str, int]
    accuracy_ci95: dict[str, Interval]
    average_ci95: Interval | None
    delta: dict[str, float] | None
    delta_average: float | None
    delta_ci95: dict[str, Interval] | None
    retention: float | None
    retention_ci95: Interval | None
    flips: float
    flips_tasks: dict[str, float]
    stability: float | None
    stability_tasks: dict[str, float]
    stability_effective_questions: dict[str, float | None]
    perplexity: float | None
    perplexity_ci95: Interval | None
    perplexity_ratio: float | None
    perplexity_ratio_ci95: Interval | None
    kl_to_original: float | None
    kl_to_original_ci95: Interval | None
    speedup: dict[str, float] | None
    speedup_ideal: dict[str, float] | None
    train: TrainFacts | None
    warnings: list[str]
    limit: int | float | None
    gguf_ppl: float | None
    speedup_llamacpp: dict[str, float] | None
    speedup_llamacpp_ideal: dict[str, float] | None
    # why the speedups above are noise (timing.py: the repeats' spread, the machine's load), None if nothing says so
    speed_noise: str | None = field(default=None, kw_only=True)
    speed_llamacpp_noise: str | None = field(default=None, kw_only=True)
    rounds: list[RoundFacts] | None = field(default=None, kw_only=True)  # prune.rounds: each round's block

    @property
    def pruned(self) -> bool:
        return isinstance(self, VariantRow)


@dataclass(frozen=True)
class VariantRow(Row):
    """A pruned variant's row: a baseline row's fields, plus how its stability was scored and the speed run."""

    stability_legacy: bool
    stability_scale: str | None
    speed: dict[str, Any] | None


@dataclass(frozen=True)
class Summary(Record):
    """summary.json: every row, unrounded, and what the tables say in words. Unsigned: no stage reads it, and its
    content is the user's, as it always was."""

    signed = False
    tasks: list[str]
    rows: list[VariantRow | Row]  # the baseline first
    within_noise: list[str]
    warnings: list[str]
    plots: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        """As written before prune.rounds existed for the rows pruned in one block: `rounds` only where there are."""
        out = super().to_json()
        for row in out["rows"]:
            if row["rounds"] is None:
                del row["rounds"]
        return out
