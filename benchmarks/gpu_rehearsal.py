"""Rehearse every stage on one GPU at Llama-3.1-8B's full size (32 layers, bf16, random weights), in one run.

    python benchmarks/gpu_rehearsal.py OUT_DIR                 # on a GPU machine: ~8 minutes, ~45 GB of scratch
    python benchmarks/gpu_rehearsal.py OUT_DIR --tiny          # anywhere: the same script at tiny widths (tests it)

No download and no network: the model is written by the rehearsal writer (random://llama-3.1-8b, rehearse.py), the
token blocks are random, and lm-eval runs on a few synthetic questions in ARC-Easy's format. Each stage is the
package's own function, run once with small counts: calibration extraction, scoring, replacement, pair
extraction, a few steps of MSE, LLM-loss and distillation training, lm-eval with perplexity, KL and speed, and the
GGUF export. For each stage it records the seconds, the peak GPU memory (torch's allocator: allocated and
reserved) next to the plan's (streamline/plan.py), and:
- extraction: the store's write rate next to this disk's own direct-I/O write bandwidth, measured in the same run
  (goal: >= 0.8 of it), and next to a bare forward pass over the same tokens;
- training (llm, kd): model FLOPs utilisation, MFU = FLOPs the steps really do (the frozen prefix's forward; the
  forward of the network, the layers after it and the head; the backward's 2x for activations through all of
  those and 2x for the weights it trains; for kd also the teacher's block and its pass through the suffix) over
  (seconds x the dense bf16 peak, 989 TFLOPS for H100/H200 SXM). Goal: >= 0.35.
Everything lands in OUT_DIR/gpu_rehearsal.json (and the log in OUT_DIR/gpu_rehearsal.log). A stage that fails is
recorded with its error and the run goes on; a run over --budget seconds skips the stages left.

Packages the GPU image lacks travel as wheels (/work/.library/device/README.md): zarr, numcodecs, donfig,
google-crc32c, pydantic (+ pydantic-core, annotated-types, typing-inspection), gguf, lm-eval and what it imports
(datasets, evaluate, dill, multiprocess, sqlitedict, word2number, more-itertools, jsonlines, pytablewriter, ...).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEAK_FLOPS = 989e12  # dense bf16, H100/H200 SXM (not the 1979 "with sparsity")
TINY = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 896,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": 1024,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "initializer_range": 0.02,
}


class Rehearsal:
    def __init__(self, out: Path, work: Path, device: str, budget: float):
        self.out, self.work, self.device, self.budget = out, work, device, budget
        self.start = time.time()
        self.results: dict = {"device": device, "stages": {}}
        self.cuda = device.startswith("cuda")

    def stage(self, name: str, fn, plan=None):
        """Run one stage: its seconds, peak GPU memory, the plan's numbers; its error, if any."""
        if time.time() - self.start > self.budget:
            self.results["stages"][name] = {"skipped": f"over the {self.budget:.0f} s budget"}
            return None
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        record: dict = {}
        try:
            value = fn(record)
        except Exception as e:  # record it and go on: the other stages still tell something
            record["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            traceback.print_exc()
            value = None
        record["seconds"] = round(time.perf_counter() - t0, 2)
        if self.cuda:
            record["peak_gpu_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
            record["peak_gpu_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1e9, 2)
        record["host_rss_peak_gb_so_far"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
        if plan is not None:
            need = plan() if callable(plan) else plan
            record["plan"] = {
                "gpu_gb": round(need.gpu / 1e9, 2),
                "ram_gb": round(need.ram / 1e9, 2),
                "disk_gb": round(need.disk / 1e9, 3),
                "seconds": round(need.seconds, 1),
            }
        self.results["stages"][name] = record
        print(f"== {name}: {json.dumps(record)}", flush=True)
        self.save()
        return value

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.time() - self.start, 1)
        (self.out / "gpu_rehearsal.json").write_text(json.dumps(self.results, indent=1) + "\n")


def direct_write_bandwidth(where: Path, gb: float) -> dict:
    """This disk's write rate with O_DIRECT (no page cache) and buffered-then-fsync, in GB/s."""
    path = where / "dd.bin"
    chunk = 16 * 2**20
    buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(chunk))
    count = max(1, int(gb * 1e9 // chunk))
    result = {}
    for name, flags in (("direct", os.O_DIRECT), ("buffered_fsync", 0)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o644)
        t0 = time.perf_counter()
        try:
            for _ in range(count):
                os.write(fd, buf)
            os.fsync(fd)
        finally:
            os.close(fd)
        result[f"{name}_gb_per_s"] = round(count * chunk / (time.perf_counter() - t0) / 1e9, 3)
        path.unlink()
    result["gb_written_each"] = round(count * chunk / 1e9, 2)
    return result


def write_data(path: Path, seq_len: int, counts: dict[str, int], vocab: int) -> Path:
    """A prepared-data dir of random token blocks (a random model does not care what the text says)."""
    from streamline.manifests import DataMeta

    rng = np.random.default_rng(0)
    path.mkdir(parents=True, exist_ok=True)
    for split, n in counts.items():
        np.save(path / f"{split}_input_ids.npy", rng.integers(0, min(vocab, 256), size=(n, seq_len)).astype(np.int32))
        np.save(path / f"{split}_attention_mask.npy", np.ones((n, seq_len), dtype=np.uint8))
    tokens = {split: n * seq_len for split, n in counts.items()}
    # signed as prepare-data signs it: every stage that reads the dir checks its digest
    DataMeta("random", seq_len, True, 0, dict(counts), tokens, dict(counts), vocab_size=vocab).write(path / "meta.json")
    return path


def bare_forward_seconds(model_dir: Path, data: Path, samples: int, batch: int, device: str) -> float:
    """A bare forward of the base model (no hooks, no writes) over the calibration blocks: best of 2."""
    from streamline.loading import load_model

    model, _ = load_model(model_dir, dtype="bfloat16", device=device)
    ids = np.load(data / "calib_input_ids.npy")[:samples]
    best = float("inf")
    with torch.inference_mode():
        for _ in range(2):
            sync(device)
            t0 = time.perf_counter()
            for i in range(0, samples, batch):
                model.base_model(
                    input_ids=torch.from_numpy(ids[i : i + batch].astype(np.int64)).to(device), use_cache=False
                )
            sync(device)
            best = min(best, time.perf_counter() - t0)
    del model
    return best


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def middle_block(scored: Path, out: Path) -> list[int]:
    """A scores file whose best block is the middle one. A random model's residual stream only grows, so its most
    alike block is always the last, after which nothing trains through; a trained model's (the paper's) lies
    inside, and the backward pass crosses the layers after it. Training is timed on that shape."""
    s = json.loads(Path(scored).read_text())
    return block_at(scored, out, (s["num_layers"] - s["span"]) // 2)


def block_at(scored: Path, out: Path, start: int) -> list[int]:
    """A scores file whose best block starts at `start`: the window scores are shifted so that it is the best
    (the file's own check then holds), signed as the score stage signs it (the stages after it check the digest)."""
    from dataclasses import replace

    from streamline.artifacts import BlockScores, WindowScore

    s = BlockScores.load(scored, "block scores")
    top = max(w.score for w in s.scores) + 1e-3
    windows = [WindowScore(start=w.start, end=w.end, score=top if w.start == start else w.score) for w in s.scores]
    block = list(range(start, start + s.span))
    removed = block[1:] if s.span == s.n + 1 else block  # as the score stage records it
    replace(s, scores=windows, best_start=start, best_score=top, block=block, removed_layers=removed).write(out)
    return block


def train_flops(sizes, loss: str, block: list[int], k: int, tokens: int, seq_len: int) -> float:
    """FLOPs the training steps really do on `tokens` tokens (see the module docstring)."""
    prefix = block[0]
    after = sizes.layers - block[-1] - 1  # the frozen layers after the block
    net = sizes.layer_flops(tokens, seq_len) * k  # the network's forward
    rest = sizes.layer_flops(tokens, seq_len) * after + sizes.head_flops(tokens)
    flops = sizes.layer_flops(tokens, seq_len) * prefix + 3 * (net + rest) + 2 * net
    if loss == "kd":  # the teacher: the original block on the prefix's output, then the suffix and the head again
        flops += sizes.layer_flops(tokens, seq_len) * len(block) + rest
    return flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--tiny", action="store_true", help="tiny widths (8 layers, hidden 256): to test the script")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--work", default="/tmp/gpu-rehearsal", help="scratch dir (the full run needs ~45 GB)")
    ap.add_argument("--layers", type=int, help="decoder layers (default: all 32; --tiny: 8)")
    ap.add_argument("--n", type=int, help="layers removed (default 8; --tiny: 2)")
    ap.add_argument("--seq-len", type=int, help="tokens per block (default 2048; --tiny: 64)")
    ap.add_argument("--budget", type=float, default=450, help="seconds after which the stages left are skipped")
    a = ap.parse_args()
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    from streamline.cli import setup_logging

    setup_logging(str(out / "gpu_rehearsal.log"))
    os.environ.setdefault("STREAMLINE_NO_FIT_CHECK", "1")  # measured here, not refused

    from streamline import plan as P
    from streamline.rehearse import parse_random_spec, write_random_model

    if a.tiny:
        (work / "tiny.json").write_text(json.dumps(TINY))
        spec = f"random://{work / 'tiny.json'}"
    else:
        spec = "random://llama-3.1-8b"
    spec += f"?layers={a.layers}" if a.layers else ""
    n = a.n or (2 if a.tiny else 8)
    seq = a.seq_len or (64 if a.tiny else 2048)
    calib, train_blocks, val_blocks, batch = (8, 16, 4, 4) if a.tiny else (16, 32, 8, 4)
    r = Rehearsal(out, work, a.device, a.budget)
    r.results.update(
        {
            "model": spec,
            "n": n,
            "seq_len": seq,
            "calib": calib,
            "train_blocks": train_blocks,
            "val_blocks": val_blocks,
            "batch": batch,
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if r.cuda else None,
        }
    )
    print(json.dumps(r.results), flush=True)
    tp = P.gpu_throughput() if r.cuda else P.cpu_throughput("bfloat16")
    dev = "cuda" if r.cuda else "cpu"
    model_dir, data = work / "model", work / "data"
    fields = parse_random_spec(spec).config()
    m = P.Model.of(fields, "bfloat16", spec)
    s = m.sizes

    def build(rec):
        model_dir.mkdir()
        rec.update(write_random_model(parse_random_spec(spec), model_dir))
        write_data(data, seq, {"calib": calib, "train": train_blocks, "val": val_blocks}, s.vocab)

    r.stage("model", build, P.download_need(m, "random", tp))

    r.stage("disk_bandwidth", lambda rec: rec.update(direct_write_bandwidth(work, 0.5 if a.tiny else 4.0)))

    from streamline.extract import extract_hidden_states

    def calibration(rec):
        summary = extract_hidden_states(
            model_dir,
            data,
            work / "calibration.zarr",
            split="calib",
            dtype="bfloat16",
            batch_size=batch,
            device=a.device,
            writers=8,
        )
        bare = bare_forward_seconds(model_dir, data, calib, batch, a.device)
        disk = r.results["stages"].get("disk_bandwidth", {}).get("direct_gb_per_s")
        rate = summary["gb"] / summary["compute_seconds"]
        rec.update(
            gb=summary["gb"],
            compute_seconds=summary["compute_seconds"],
            write_gb_per_s=round(rate, 3),
            bare_forward_seconds=round(bare, 3),
            ratio_to_bare_forward=round(bare / summary["compute_seconds"], 3),
            ratio_to_direct_io=round(rate / disk, 3) if disk else None,
            tokens_per_s=round(calib * seq / summary["compute_seconds"]),
        )

    r.stage(
        "extract_calibration",
        calibration,
        P.extraction_need(
            m, samples=calib, states=s.layers + 1, layers_run=s.layers, seq_len=seq, batch=batch, device=dev, tp=tp
        ),
    )

    from streamline.score import score

    r.stage(
        "score",
        lambda rec: rec.update(block=score(work / "calibration.zarr", n, work / "scores.json").block),
        P.score_need(m, samples=calib, states=s.layers + 1, seq_len=seq),
    )
    if not (work / "scores.json").exists():
        r.save()
        return
    shutil.rmtree(work / "calibration.zarr", ignore_errors=True)
    scored = json.loads((work / "scores.json").read_text())["block"]
    r.results["scored_block"] = scored
    block = middle_block(work / "scores.json", work / "scores_middle.json")
    r.results["trained_block"] = block

    from streamline.replace import replace

    init = work / "init"
    r.stage(
        "replace",
        lambda rec: rec.update(
            params=replace(model_dir, work / "scores_middle.json", init, net="transformer", dtype="bfloat16").params
        ),
        P.model_write_need(m, m.pruned_params(n, "transformer"), tp),
    )

    from streamline.pairs import extract_pairs

    r.stage(
        "extract_pairs",
        lambda rec: rec.update(
            extract_pairs(
                model_dir,
                data,
                work / "scores_middle.json",
                work / "pairs.zarr",
                dtype="bfloat16",
                batch_size=batch,
                device=a.device,
                writers=8,
            )["train"]
        ),
        P.extraction_need(
            m,
            samples=train_blocks + val_blocks,
            states=2,
            layers_run=block[-1] + 1,
            seq_len=seq,
            batch=batch,
            device=dev,
            tp=tp,
        ),
    )

    from streamline.training.recipes import train
    from streamline.training.settings import TrainSettings

    for loss in ("mse", "llm", "kd"):

        def training(rec, loss=loss):
            settings = TrainSettings(
                batch_size=batch if loss == "mse" else 2,
                gradient_accumulation_step=1,
                epochs=1,
                lr=2e-4,
                min_lr=5e-5,
                val_every=10**6,
                checkpoint_every=10**6,
                train_samples=0 if loss == "mse" else train_blocks // 2,
                device=a.device,
                mse_loss="robust",
            )
            result = train(
                loss,
                init,
                work / f"{loss}-model",
                work / f"{loss}.json",
                settings,
                data_dir=data,
                pairs_dir=work / "pairs.zarr" if loss == "mse" else None,
                teacher_dir=model_dir,
            )
            train_s = result.seconds - result.validation_seconds
            rec.update(
                steps=result.total_steps,
                train_tokens=result.train_tokens,
                train_seconds=round(train_s, 2),
                validation_seconds=result.validation_seconds,
                peak_gpu_mb_train_log=result.peak_gpu_mb,
                tokens_per_s=round(result.train_tokens / train_s),
            )
            if loss != "mse":
                flops = train_flops(s, loss, block, 1, result.train_tokens, seq)
                rec.update(flops=flops, mfu=round(flops / train_s / PEAK_FLOPS, 4) if r.cuda else None)
            shutil.rmtree(work / f"{loss}-model", ignore_errors=True)  # 12 GB each at full size: the disk is 64 GB

        loss_blocks = train_blocks if loss == "mse" else train_blocks // 2
        r.stage(
            f"train_{loss}",
            training,
            P.train_need(
                m,
                loss=loss,
                net_params=s.layer_params,
                pruned_params=m.pruned_params(n, "transformer"),
                layers_after=s.layers - block[-1] - 1,
                teacher_layers=len(block) if loss == "kd" else 0,
                prefix_layers=block[0],
                blocks=loss_blocks,
                val_blocks=val_blocks,
                seq_len=seq,
                batch=batch if loss == "mse" else 2,
                gas=1,
                epochs=1,
                processes=1,
                deepspeed=False,
                device=dev,
                val_every=10**6,
                checkpoint_every=10**6,
                online=False,
                tp=tp,
            ),
        )
    shutil.rmtree(work / "pairs.zarr", ignore_errors=True)

    from streamline.evaluate import evaluate

    sys.path.insert(0, str(ROOT / "tests"))
    from workflow_utils import make_eval_data  # ARC-Easy's test split laid out as fetch-eval-data writes it

    eval_data = make_eval_data(work / "eval_data", 8)

    def evaluation(rec):
        e = evaluate(
            init,
            work / "eval.json",
            work / "samples.json.gz",
            tasks=["arc_easy"],
            limit=8,
            batch_size=4,
            offline_data_dir=eval_data,
            device=a.device,
            dtype="bfloat16",
            ppl_data_dir=data,
            ppl_split="val",
            original_dir=model_dir,
        )
        rec.update(
            accuracy=e.results["arc_easy"].acc,
            perplexity=e.perplexity.value,
            kl=e.kl_to_original.value,
            speedup=e.speed.speedup,
            speedup_ideal=e.speed.ideal,
        )

    r.stage(
        "evaluate_variant",
        evaluation,
        P.evaluate_need(
            m,
            pruned_params=m.pruned_params(n, "transformer"),
            questions=8,
            task_tokens=8 * P.TASK_TOKENS["arc_easy"],
            batch=4,
            seq_len=seq,
            val_blocks=val_blocks,
            device=dev,
            tp=tp,
        ),
    )

    from streamline.gguf_export import export_gguf

    r.stage(
        "export_gguf",
        lambda rec: rec.update(export_gguf(init, work / "model.gguf", "f16")),
        P.gguf_export_need(m, params=m.pruned_params(n, "transformer"), outtype="f16", tp=tp),
    )
    (work / "model.gguf").unlink(missing_ok=True)
    r.results["budget_s"] = a.budget
    r.save()
    print(json.dumps(r.results, indent=1))


if __name__ == "__main__":
    main()
