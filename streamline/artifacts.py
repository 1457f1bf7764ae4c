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
    Evaluation   eval.json                         evaluate -> report
    Samples      samples.json.gz                   evaluate -> stability, report
    Stability    stability.json                    stability -> report
    LlamaCppCheck  gguf.json (export.gguf)         gguf-check -> report
    Summary      summary.json (its rows: Row, VariantRow)   report -> the user

Kept free of torch: every stage that reads an artifact imports this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .model_info import ModelInfo
from .records import Record


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
    samples: int
    tokens: int
    scores: list[WindowScore]        # every window, by start layer
    best_start: int
    best_score: float
    block: list[int]                 # layers best_start..best_start+span-1
    removed_layers: list[int]        # what disappears if the block's first layer is kept
    layers_after: int

    def __post_init__(self) -> None:
        if not 1 <= self.n <= self.span <= self.num_layers or self.layers_after != self.num_layers - self.n:
            raise ValueError(f"n {self.n}, span {self.span} and {self.layers_after} layers after do not fit a "
                             f"{self.num_layers}-layer model")
        if [(w.start, w.end) for w in self.scores] != [(i, i + self.span - 1)
                                                       for i in range(self.num_layers - self.span + 1)]:
            raise ValueError(f"the windows scored are not every {self.span}-layer window of {self.num_layers} layers")
        values = [w.score for w in self.scores]
        best = values.index(max(values) if self.higher_is_more_redundant else min(values))  # the first, as argmax
        if self.block != list(range(best, best + self.span)) or self.best_start != best \
                or self.best_score != values[best]:
            raise ValueError(f"block {self.block} is not the best window (layers {best}..{best + self.span - 1})")


def read_scores(path: str | Path) -> BlockScores:
    """A scores.json, checked (its block is the best of its windows); a torn or edited one is moved aside, so
    scoring reruns."""
    return BlockScores.load(path, "block scores")


# ---------------------------------------------------------------- training

@dataclass(frozen=True)
class TrainStep(Record):
    step: int
    loss: float
    lr: float
    grad_norm: float | None          # None: not measured (DeepSpeed), or a step fp16's loss scaler skipped
    skipped: bool = False            # fp16: the loss scaler skipped this step (its gradients overflowed)


@dataclass(frozen=True)
class TrainLog(Record):
    """train_log.json: one training run (a stage of a staged run), as the training core returns it."""
    net: str
    loss: str                        # "mse+kd" for the second stage of a staged run
    stage_loss: str                  # the loss this run trained with
    replacement_layers: int
    slots: list[int]
    block: list[int]
    settings: dict[str, Any]
    select: str                      # the validation metric that picks the kept state
    total_steps: int
    warmup_steps: int
    train_samples: int
    train_tokens: int
    val_samples: dict[str, int]
    steps: list[TrainStep]
    val: list[dict[str, int | float]]  # {"step", "loss" (= the select metric), every metric}
    initial_val_loss: float
    best_val_loss: float
    initial_val: dict[str, float]
    best_val: dict[str, float]
    best_step: int
    kept: Literal["best", "initial"]
    num_processes: int
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
    skipped_steps: int = 0           # fp16: optimizer steps the loss scaler skipped

    def __post_init__(self) -> None:
        if self.skipped_steps != sum(s.skipped for s in self.steps):
            raise ValueError(f"{self.skipped_steps} skipped steps, {sum(s.skipped for s in self.steps)} logged")
        if (self.kept == "best") != (self.best_val_loss < self.initial_val_loss):  # how the core decides
            raise ValueError(f"kept {self.kept} state, with validation {self.initial_val_loss:.5g} -> "
                             f"{self.best_val_loss:.5g}")
        if len(self.steps) > self.total_steps:
            raise ValueError(f"{len(self.steps)} steps logged of {self.total_steps}")


@dataclass(frozen=True)
class EstimateLog(Record):
    """estimate_log.json of `network: linear`: the least-squares map, its fit and its cost."""
    block: list[int]
    ridge: float
    tokens: int
    relative_residual: float
    relative_residual_of_identity: float
    extract_seconds: float
    estimate_seconds: float
    seconds: float                   # extraction + estimate + fold: the whole training-free recipe


# ---------------------------------------------------------------- evaluation

@dataclass(frozen=True)
class TaskScores(Record):
    """One lm-eval task's result: acc (and acc_norm where lm-eval reports it) for a multiple-choice task; exact
    match under each of its answer filters for a generative one (the headline under the first, stock's strict one)."""
    n: int
    acc: float | None = None
    acc_stderr: float | None = None
    acc_norm: float | None = None
    acc_norm_stderr: float | None = None
    headline_metric: str = "acc"
    headline: float | None = None
    exact_match: float | None = None
    exact_match_stderr: float | None = None
    answer_filter: str | None = None               # the filter that extracts the answer exact_match is scored on
    exact_match_filters: dict[str, float | None] | None = None  # every filter's exact match

    def __post_init__(self) -> None:
        values = (self.acc, self.acc_norm, self.headline, self.exact_match, *(self.exact_match_filters or {}).values())
        if any(x is not None and not 0 <= x <= 1 for x in values):
            raise ValueError(f"an accuracy outside [0, 1] ({', '.join(str(x) for x in values if x is not None)})")


@dataclass(frozen=True)
class Perplexity(Record):
    value: float
    data_dir: str
    split: str
    blocks: int
    tokens: int
    nll_per_block: list[float]
    tokens_per_block: list[int]
    wall_time_s: float

    def __post_init__(self) -> None:  # the value is what its blocks give: an edited one is caught
        if not (len(self.nll_per_block) == len(self.tokens_per_block) == self.blocks
                and sum(self.tokens_per_block) == self.tokens > 0):
            raise ValueError(f"perplexity over {self.blocks} blocks of {self.tokens} tokens, with "
                             f"{len(self.nll_per_block)} NLLs and {sum(self.tokens_per_block)} tokens per block")
        mean = sum(self.nll_per_block) / self.tokens  # compared in log space: exp of an edited mean can overflow
        if self.value <= 0 or not math.isclose(math.log(self.value), mean, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"perplexity {self.value} is not what its blocks' NLL gives")


@dataclass(frozen=True)
class KL(Record):
    value: float
    original: str
    kl_per_block: list[float]
    unit: str = "nats per token"


@dataclass(frozen=True)
class Throughput(Record):
    """Prefill and decode throughput of the pruned model and the original, measured in one run, and the ideal."""
    batch: int
    prefill_tokens: int
    decode_prompt_tokens: int
    decode_steps: int
    repeats: int                            # best of, alternating the two models
    prefill_tokens_per_s: dict[str, float]  # {"pruned", "original"}
    decode_tokens_per_s: dict[str, float]
    flops_per_token: dict[str, float]
    decode_weight_bytes: dict[str, int]
    speedup: dict[str, float]               # {"prefill", "decode"}: original's time / pruned's
    ideal: dict[str, float]                 # FLOPs ratio (prefill), weight-bytes ratio (decode)
    wall_time_s: float


@dataclass(frozen=True)
class Speed(Throughput):
    """In PyTorch (eval.json's `speed`)."""
    device: str
    threads: int | None                     # CPU threads; None on a GPU


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
    num_hidden_layers: int
    params: int
    streamline: ModelInfo | None       # what the pruning stage recorded about this model, if it was pruned
    perplexity: Perplexity | None = None
    kl_to_original: KL | None = None
    speed: Speed | None = None
    wall_time_s: float = 0.0
    scorer: str | None = None          # evaluate's lm-eval model: packed (scorer.py) or hf (lm-eval's HFLM)

    def __post_init__(self) -> None:
        if set(self.results) != set(self.tasks):
            raise ValueError(f"results for {sorted(self.results)}, tasks {self.tasks}")
        kl, ppl = self.kl_to_original, self.perplexity
        if kl and (not ppl or len(kl.kl_per_block) != ppl.blocks
                   or not math.isclose(kl.value, sum(kl.kl_per_block) / ppl.tokens, rel_tol=1e-9, abs_tol=1e-12)):
            raise ValueError(f"KL {kl.value} is not what its blocks give")


SAMPLES_FORMAT = "streamline-lm-eval-samples/2"


@dataclass(frozen=True)
class Question(Record):
    """One question of a samples file, as lm-eval scored it: a multiple-choice question's options, or the answer
    extracted from a generated one (then ll is empty, and acc is its exact match)."""
    ll: list[float]              # per option: lm-eval's summed log-likelihood of the continuation
    ntok: list[int] | None       # per option: the continuation's tokens, as lm-eval's model wrapper splits them
    gold: int | None             # the gold option; None for a generated answer
    acc: bool
    acc_norm: bool | None        # only where lm-eval reports acc_norm
    answer: str | None = None    # generated: the answer lm-eval's filter extracted ("[invalid]" where none)

    def __post_init__(self) -> None:
        if (self.answer is None) == (not self.ll):
            raise ValueError("a question has either per-option log-likelihoods or a generated answer")


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


@dataclass(frozen=True)
class TaskStability(Record):
    stability: float
    agreement: float                   # unweighted, for reference
    n: int
    effective_questions: float
    sigma_min: float | None            # None for a generative task (no options)
    sigma_max: float | None
    basis: Literal["sigma", "answers"] = "sigma"  # softmax(sigma)-weighted correctness, or same extracted answers


@dataclass(frozen=True)
class Stability(Record):
    """stability.json of a pruned model against the original, from their samples files."""
    metric: str
    legacy: bool
    scale: str
    tasks: dict[str, TaskStability]
    average: float
    effective_questions: dict[str, float]
    skipped_tasks: list[str]


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
    layers: int
    data_dir: str
    split: str
    blocks: int
    tokens: int
    gguf_ppl: float
    gguf_nll_per_block: list[float]
    gguf_tokens_per_block: list[int]
    llama_cpp_python: str | None
    extra_buffers: bool
    ppl_seconds: float
    hf_model: str | None = None
    hf_ppl: float | None = None
    gguf_ppl_ratio_to_hf: float | None = None
    original_gguf: str | None = None
    speed_llamacpp: LlamaCppSpeed | None = None
    speedup_llamacpp: dict[str, float] | None = None       # = speed_llamacpp.speedup, for the report's row
    speedup_llamacpp_ideal: dict[str, float] | None = None


# ---------------------------------------------------------------- report

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
    """summary.json: every row, unrounded, and what the tables say in words."""
    tasks: list[str]
    rows: list[VariantRow | Row]  # the baseline first
    within_noise: list[str]
    warnings: list[str]
    plots: dict[str, str] = field(default_factory=dict)
