"""The pruned model in llama.cpp: perplexity agreement with streamline's own (HF) perplexity, and the
prefill/decode speedup of pruned over original measured inside llama.cpp, next to the ideal.

For each outtype, both models are exported to GGUF (streamline/gguf_export.py) and measured by
streamline/gguf_check.py on the prepared val blocks (token ids fed directly). Needs the [gguf] extra.
Run after `snakemake` (the defaults are the default run's paths), or point it at any two model dirs:
    python benchmarks/llamacpp.py [--original DIR] [--pruned DIR] [--data DIR] [--outtypes f16 q8_0]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from streamline.gguf_check import default_threads, gguf_check
from streamline.gguf_export import OUTTYPES, export_gguf
from streamline.layout import Paths, Variant

MODEL = "SmolLM2-135M-Instruct"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    paths = Paths(MODEL, 8)
    p.add_argument("--original", default=paths.model_dir)
    p.add_argument("--pruned", default=paths.model_out(Variant.parse("transformer-mse")))
    p.add_argument("--data", default=paths.data_dir("lambada"))
    p.add_argument("--outtypes", nargs="+", default=["f16", "q8_0"], choices=OUTTYPES)
    p.add_argument("--work", help="where the GGUF files go (default: a temp dir, removed)")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        rows, hf = [], {}
        for outtype in args.outtypes:
            files = {}
            for name, model_dir in (("original", args.original), ("pruned", args.pruned)):
                files[name] = work / f"{name}-{outtype}.gguf"
                export_gguf(model_dir, files[name], outtype)
            checks = {
                "original": gguf_check(
                    files["original"],
                    args.data,
                    threads=args.threads,
                    hf_model=None if "original" in hf else args.original,
                ),
                "pruned": gguf_check(
                    files["pruned"],
                    args.data,
                    original_gguf=files["original"],
                    threads=args.threads,
                    repeats=args.repeats,
                    hf_model=None if "pruned" in hf else args.pruned,
                ),
            }
            for name, check in checks.items():
                hf.setdefault(name, check.hf_ppl)
            rows.append((outtype, {k: f.stat().st_size for k, f in files.items()}, checks))

    first = rows[0][2]["pruned"]
    print(
        f"llama.cpp (llama-cpp-python {first.llama_cpp_python}), {args.threads} threads; "
        f"{first.blocks} val blocks, {first.tokens} predicted tokens"
    )
    print("\n| outtype | model | GGUF MB | HF ppl | llama.cpp ppl | llama.cpp / HF |")
    print("|---|---|---:|---:|---:|---:|")
    for outtype, sizes, checks in rows:
        for name in ("original", "pruned"):
            ppl = checks[name].gguf_ppl
            print(
                f"| {outtype} | {name} ({checks[name].layers} layers) | {sizes[name] / 1e6:.1f} | "
                f"{hf[name]:.2f} | {ppl:.2f} | {ppl / hf[name]:.4f} |"
            )
    print("\n| outtype | phase | original tok/s | pruned tok/s | speedup | ideal | speedup / ideal |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for outtype, _files, checks in rows:
        s = checks["pruned"].speed_llamacpp
        for phase in ("prefill", "decode"):
            tps = s.prefill_tokens_per_s if phase == "prefill" else s.decode_tokens_per_s
            print(
                f"| {outtype} | {phase} | {tps['original']:.1f} | {tps['pruned']:.1f} | {s.speedup[phase]:.3f}x | "
                f"{s.ideal[phase]:.3f}x | {s.speedup[phase] / s.ideal[phase]:.3f} |"
            )
    s = first.speed_llamacpp
    print(
        f"\n(batch 1; prefill: one {s.prefill_tokens}-token block; decode: {s.decode_steps} steps after "
        f"{s.decode_prompt_tokens} prompt tokens; best of {s.repeats}, alternating)"
    )


if __name__ == "__main__":
    main()
