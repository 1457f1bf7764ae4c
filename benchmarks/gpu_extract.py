"""GPU check: bf16 extraction (forward + hooks + Zarr writes) vs a bare bf16 forward, at Llama-3.1-8B's widths.

A random model with the 8B's hidden size, MLP width, heads and vocabulary (8 of its 32 layers, so it builds in
seconds), 2048-token blocks: the chunk of one (state, sample) is 16.8 MB, as for the real model. Needs a GPU and
no downloads:
    python benchmarks/gpu_extract.py OUT_DIR        # writes OUT_DIR/gpu_extract.json, ~10 GB of scratch in /tmp
"""

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

out = Path(sys.argv[1])
work = Path("/tmp/gpu-check")
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)
import transformers  # noqa: E402

print(
    "torch",
    torch.__version__,
    "transformers",
    transformers.__version__,
    "cuda",
    torch.cuda.get_device_name(0),
    flush=True,
)
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

config = LlamaConfig(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=8,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
t0 = time.time()
with torch.device("cuda"):
    model = LlamaForCausalLM(config).to(torch.bfloat16)
model.save_pretrained(work / "model")
del model
torch.cuda.empty_cache()
print(f"built and saved an 8-layer Llama-3.1-8B-wide model in {time.time() - t0:.1f} s", flush=True)

N, T = 64, 2048
rng = np.random.default_rng(0)
data = work / "data"
data.mkdir()
for split in ("calib", "train", "val"):
    np.save(data / f"{split}_input_ids.npy", rng.integers(3, 128000, size=(N, T)).astype(np.int32))
    np.save(data / f"{split}_attention_mask.npy", np.ones((N, T), dtype=np.uint8))

from streamline import data as sdata  # noqa: E402
from streamline.extract import extract_hidden_states  # noqa: E402
from streamline.loading import load_model  # noqa: E402
from streamline.manifests import DataMeta  # noqa: E402
from streamline.store import HiddenStore  # noqa: E402

counts = {split: N for split in ("calib", "train", "val")}
DataMeta(
    source="random", seq_len=T, pack=True, seed=0, counts=counts, tokens={s: N * T for s in counts}, documents=counts
).write(data / "meta.json")

results = {"model": "Llama-3.1-8B widths, 8 layers, bf16", "samples": N, "tokens_per_sample": T}
model, adapter = load_model(work / "model", dtype="bfloat16", device="cuda")
ids, mask = (np.asarray(a) for a in sdata.load_split(data, "calib"))
for batch in (8,):

    def bare():
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, N, batch):
                x = torch.from_numpy(ids[i : i + batch].astype(np.int64)).cuda()
                m = torch.from_numpy(mask[i : i + batch].astype(np.int64)).cuda()
                model.base_model(input_ids=x, attention_mask=m, use_cache=False)  # noqa: F821 (deleted after use)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    bare()  # warm-up
    bare_s = min(bare() for _ in range(3))
    results["bare_forward_s"] = bare_s
    results["bare_tokens_per_s"] = N * T / bare_s
del model
torch.cuda.empty_cache()
for writers in (2, 8):
    store = work / f"calib-{writers}.zarr"
    t = time.perf_counter()
    summary = extract_hidden_states(
        work / "model",
        data,
        store,
        split="calib",
        num_samples=N,
        dtype="bfloat16",
        batch_size=8,
        device="cuda",
        writers=writers,
    )
    s = time.perf_counter() - t
    results[f"extract_writers{writers}"] = {
        "seconds_total": s,
        "compute_seconds": summary["compute_seconds"],
        "gb": summary["gb"],
        "tokens_per_s": N * T / summary["compute_seconds"],
        "ratio_vs_bare": bare_s / summary["compute_seconds"],
        "gb_per_s": summary["gb"] / summary["compute_seconds"],
    }
    print(writers, results[f"extract_writers{writers}"], flush=True)
    st = HiddenStore(store)
    a = st.read(3, 5)
    results[f"extract_writers{writers}"]["dtype_read_back"] = str(a.dtype)
    shutil.rmtree(store)
results["disk_free_gb"] = shutil.disk_usage(work).free / 1e9
print(json.dumps(results, indent=1))
out.mkdir(parents=True, exist_ok=True)
(out / "gpu_extract.json").write_text(json.dumps(results, indent=1))
