"""Run the model over token blocks and stream raw hidden states into a Zarr store.

RAM stays bounded: one batch is computed while the previous one is written by a small
thread pool, and nothing else is held. A killed run resumes: only samples with a missing
chunk are recomputed, so the final store is identical to an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch

from . import data, progress
from .adapters import get_adapter, run_with_capture
from .atomic import exclusive
from .errors import StreamlineError
from .loading import load_config, load_model, model_fingerprint, resolve_device
from .manifests import StoreManifest
from .ownership import require_owned
from .store import STORAGE_DTYPES, HiddenStore, to_storage
from .versions import VERSIONS

log = logging.getLogger(__name__)


def _fingerprint(
    model_dir: Path, data_dir: Path, split: str, num_samples: int, keep: list, dtype: str, codec: str, level: int
) -> str:
    meta = (Path(data_dir) / "meta.json").read_bytes()
    text = f"{model_fingerprint(model_dir)}|{hashlib.sha256(meta).hexdigest()}|{split}|{num_samples}|{keep}|{dtype}|{codec}|{level}"
    if VERSIONS["extract"] > 1:  # a store of another extraction version is restarted (version 1: the stores of old)
        text += f"|v{VERSIONS['extract']}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def extract_hidden_states(
    model_dir: str | Path,
    data_dir: str | Path,
    store_path: str | Path,
    *,
    split: str = "calib",
    num_samples: int | None = None,
    keep: list[int | str] | None = None,
    dtype: str = "float32",
    codec: str = "none",
    level: int = 3,
    batch_size: int = 4,
    device: str = "auto",
    writers: int = 2,
    manifest: str | Path | None = None,
) -> dict:
    """Store hidden states h_k for k in `keep` (default: all, h_0..h_L) of `num_samples` blocks of `split`.

    h_0 is the input of layer 0 and h_k the RAW output of layer k-1 (before the final norm); "y{l}" and
    "m{l}" are the residual entering layer l's MLP and the MLP's output (h_{l+1} = y + m).
    Only layers 0..max(k)-1 run.
    """
    model_dir, data_dir, store_path = Path(model_dir), Path(data_dir), Path(store_path)
    resolve_device(device)  # one line now, not after the store is created, if the device is not here
    config = load_config(model_dir)
    adapter = get_adapter(config.model_type)
    num_layers = config.num_hidden_layers
    keep = list(range(num_layers + 1)) if keep is None else list(keep)
    states = [k for k in keep if isinstance(k, int)]
    sublayers = sorted({int(k[1:]) for k in keep if isinstance(k, str)})
    if not states or min(states) < 0 or max(states) > num_layers or any(l >= max(states) for l in sublayers):
        raise StreamlineError(f"hidden states {keep} out of range 0..{num_layers} for {model_dir.name}")
    ids, mask = data.load_split(data_dir, split)
    num_samples = len(ids) if num_samples is None else num_samples
    if num_samples > len(ids):
        raise StreamlineError(f"{split} split of {data_dir} has {len(ids)} blocks, {num_samples} requested")
    data.check_token_ids(ids[:num_samples], config.vocab_size, data_dir / f"{split}_input_ids.npy")
    seq_len, hidden = ids.shape[1], config.hidden_size
    attrs = {
        "fingerprint": _fingerprint(model_dir, data_dir, split, num_samples, keep, dtype, codec, level),
        "layers": keep,
        "num_layers": num_layers,
        "model": str(model_dir),
        "data": str(data_dir),
        "split": split,
    }
    # Before the lock: taking it creates the store's parent dir, and a refused run leaves nothing behind.
    require_owned(store_path, "hidden-state store")
    check_disk(
        store_path,
        num_samples * len(keep) * seq_len * hidden * np.dtype(STORAGE_DTYPES[dtype]).itemsize,
        codec,
        pairs=split != "calib",
    )
    with exclusive(store_path):  # one writer per store
        store = HiddenStore.create_or_resume(
            store_path,
            shape=(len(keep), num_samples, seq_len, hidden),
            dtype=dtype,
            codec=codec,
            level=level,
            attrs=attrs,
        )
        todo = store.missing_samples(verify=True)  # resuming: every done sample is checked against its checksums
        bytes_per_sample = len(keep) * seq_len * hidden * np.dtype(store.hidden.dtype).itemsize
        log.info(
            "extracting %d x %d hidden states of %d tokens x %d (%s) into %s: %.2f GB; %d of %d samples to do",
            num_samples,
            len(keep),
            seq_len,
            hidden,
            dtype,
            store_path,
            num_samples * bytes_per_sample / 1e9,
            len(todo),
            num_samples,
        )
        start = time.time()
        compute_seconds = 0.0
        if todo:
            model, _ = load_model(model_dir, dtype=dtype, device=device)
            t0 = time.perf_counter()
            _run(model, adapter, store, ids, mask, todo, keep, batch_size, writers, bytes_per_sample, sublayers)
            compute_seconds = time.perf_counter() - t0
        if store.missing_samples(verify=False):
            raise RuntimeError(f"{store_path}: extraction finished with samples missing")
        seconds = time.time() - start
        summary = {
            "store": str(store_path),
            "shape": list(store.hidden.shape),
            "dtype": dtype,
            "codec": codec,
            "layers": keep,
            "samples": num_samples,
            "computed_samples": len(todo),
            "seconds": round(seconds, 2),
            "compute_seconds": round(compute_seconds, 3),
            "gb": round(num_samples * bytes_per_sample / 1e9, 3),
            "device": str(resolve_device(device)),
        }
        if manifest:
            StoreManifest(**summary).write(manifest)
        log.info("extraction done in %.1f s (%d samples computed)", seconds, len(todo))
        return summary


def check_disk(store_path: Path, total_bytes: int, codec: str, pairs: bool) -> None:
    """Refuse to start a store the disk cannot hold (uncompressed size; codecs only make it smaller)."""
    import shutil

    have = sum(f.stat().st_size for f in store_path.rglob("*") if f.is_file()) if store_path.exists() else 0
    needed = max(0, total_bytes - have)
    existing = next(p for p in [store_path, *store_path.parents] if p.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        way_out = "pairs.mode: online (no pair store at all)" if pairs else "a smaller cosine_num_data"
        up_to = f" (uncompressed; {codec} makes it smaller)" if codec != "none" else ""
        raise StreamlineError(
            f"disk: {store_path} needs {needed / 1e9:.3f} GB{up_to} and {existing} has "
            f"{free / 1e9:.3f} GB free; free space, or use {way_out}"
        )


def _run(
    model,
    adapter,
    store: HiddenStore,
    ids: np.ndarray,
    mask: np.ndarray,
    todo: list[int],
    keep: list,
    batch_size: int,
    writers: int,
    bytes_per_sample: int,
    sublayers: list[int],
) -> None:
    device = next(model.parameters()).device
    slot = {k: i for i, k in enumerate(keep)}
    pending: list[Future] = []
    pending_masks: list[int] = []
    bar = progress.bar(total=len(todo), unit="sample", desc=f"extract {store.path.name}")
    start = time.time()
    with ThreadPoolExecutor(max_workers=writers) as pool:
        for b in range(0, len(todo), batch_size):
            rows = todo[b : b + batch_size]
            batch_ids = torch.from_numpy(ids[rows].astype(np.int64)).to(device)
            batch_mask = torch.from_numpy(mask[rows].astype(np.int64)).to(device)
            futures: list[Future] = []

            def on_hidden(k: int, h: torch.Tensor) -> None:
                if k in slot:
                    arr = to_storage(h)
                    # One write per contiguous run of samples: zarr then stores those chunks concurrently.
                    for j0, j1 in _runs(rows):
                        futures.append(pool.submit(store.write_range, slot[k], rows[j0], arr[j0:j1]))

            run_with_capture(
                adapter,
                model,
                batch_ids,
                batch_mask,
                on_hidden,
                last=max(k for k in keep if isinstance(k, int)),
                sublayers=tuple(sublayers),
            )
            # Keep one batch in flight: bounded RAM, and the writes overlap the next forward.
            _finish(store, pending, pending_masks, mask)
            pending, pending_masks = futures, rows
            bar.update(len(rows))
            done = (bar.n - bar.start_n) * bytes_per_sample / 1e6
            bar.set_postfix_str(progress.rate(done / max(time.time() - start, 1e-9), "MB"))
        _finish(store, pending, pending_masks, mask)
    bar.close()


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """[j0, j1) index ranges of `rows` whose values are consecutive integers."""
    runs, start = [], 0
    for j in range(1, len(rows) + 1):
        if j == len(rows) or rows[j] != rows[j - 1] + 1:
            runs.append((start, j))
            start = j
    return runs


def _finish(store: HiddenStore, futures: list[Future], rows: list[int], mask: np.ndarray) -> None:
    for f in wait(futures).done:
        f.result()  # re-raise a failed write
    for n in rows:
        store.finish_sample(n, mask[n].astype(np.uint8))  # mask, then the checksum row: sample n is done


# --- the command: streamline extract-calibration ------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .arguments import add_extraction_arguments

    add_extraction_arguments(p)


def run(a: argparse.Namespace) -> None:
    from .arguments import extraction_options

    extract_hidden_states(
        a.model,
        a.data,
        a.out,
        split="calib",
        num_samples=a.num_samples,
        **extraction_options(a),
    )
