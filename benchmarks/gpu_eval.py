"""Whole splits on a GPU: the default model and its pruned variant(s) on every question of the seven tasks.

The demo's accuracies are 20 questions per task (about ±20 points). On a GPU the whole splits (18,934
questions, stock lm-eval's splits) take minutes with the packed scorer. This runs, in one process and
within one time budget (8 minutes by default: the script stops before a step it cannot finish in time
and says so):

    1. evaluate the original (lm-eval, packed scorer, limit none; perplexity on the held-out blocks);
    2. evaluate each variant (the same, plus the KL to the original and the measured speedup);
    3. stability of each variant against the original, from the two samples files;
    4. the report stage on those files: OUT/summary.md (+ .json): accuracy with intervals, paired differences,
       retention, stability and flips, per task, next to the device it ran on (OUT/gpu_eval.json).

Run from the workflow's working dir after the default run (`snakemake`), so that its model dirs exist:
    python benchmarks/gpu_eval.py OUT                                   # defaults: the default run's paths
    python benchmarks/gpu_eval.py OUT --variant transformer-mse/model transformerx2-llm/model
A CPU rehearsal with a limit (what the tests run): --device cpu --limit 3.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from streamline.eval_tasks import PAPER_TASKS
from streamline.layout import EVAL_DATA, SUMMARY, Paths


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--model", default="SmolLM2-135M-Instruct", help="the model's name under resources/ and results/")
    p.add_argument("--n", type=int, default=8)
    p.add_argument(
        "--variant",
        nargs="+",
        default=["transformer-mse/model"],
        help="model dirs relative to results/{model}/n{n}/ (or absolute)",
    )
    p.add_argument("--baseline", help="the original's model dir (default: resources/models/{model})")
    p.add_argument("--eval-data", default=EVAL_DATA)
    p.add_argument(
        "--ppl-data", help="prepared data dir for perplexity and KL (default: resources/data/{model}/lambada)"
    )
    p.add_argument("--tasks", nargs="+", default=PAPER_TASKS)
    p.add_argument("--limit", type=int, default=None, help="questions per task (default: the whole splits)")
    p.add_argument("--batch-size", type=int, default=64, help="packed questions per forward pass")
    p.add_argument("--dtype", default="float32", help="the default run's dtype")
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=480.0)
    args = p.parse_args(argv)

    from streamline.evaluate import evaluate
    from streamline.report import read_manifest, report
    from streamline.stability import stability_from_samples

    paths = Paths(args.model, args.n)
    baseline = Path(args.baseline or paths.model_dir)
    ppl = Path(args.ppl_data or paths.data_dir("lambada"))
    variants = [Path(v) if Path(v).is_absolute() else Path(paths.base) / v for v in args.variant]
    for d in [baseline, *variants, Path(args.eval_data), ppl]:
        if not d.is_dir():
            raise SystemExit(f"{d}: not found (run the default workflow first, or pass its path)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, steps = time.time(), {}
    common = dict(
        tasks=args.tasks,
        limit=args.limit,
        batch_size=args.batch_size,
        offline_data_dir=Path(args.eval_data),
        device=args.device,
        dtype=args.dtype,
        ppl_data_dir=ppl,
        scorer="packed",
    )

    def timed(name: str, fn, estimate: float = 0.0):
        """Run one step unless the budget cannot hold it (its estimate: the baseline's own time)."""
        if time.time() - t0 + estimate > args.budget_s:
            print(f"{name}: skipped, {args.budget_s - (time.time() - t0):.0f} s of the budget left", flush=True)
            return None
        t = time.time()
        result = fn()
        steps[name] = round(time.time() - t, 1)
        print(f"{name}: {steps[name]} s", flush=True)
        return result

    base = timed(
        "evaluate original",
        lambda: evaluate(baseline, out / "baseline/eval.json", out / "baseline/samples.json.gz", **common),
    )
    rows = []
    for i, v in enumerate(variants):
        name = v.parent.name if v.name in ("model", "init") else v.name
        d = out / f"variant{i}-{name}"
        ev = timed(
            f"evaluate {name}",
            lambda: evaluate(v, d / "eval.json", d / "samples.json.gz", original_dir=baseline, **common),
            steps["evaluate original"],
        )
        if ev is None:
            break
        st = stability_from_samples(out / "baseline/samples.json.gz", d / "samples.json.gz")
        st.write(d / "stability.json")  # signed, as the stability stage writes it
        train_log = v.parent / "train_log.json"
        rows.append(
            {
                "name": name,
                "eval": str(d / "eval.json"),
                "samples": str(d / "samples.json.gz"),
                "stability": str(d / "stability.json"),
                "train_log": str(train_log) if train_log.is_file() else None,
            }
        )
    manifest = {
        "baseline": {
            "name": baseline.name,
            "eval": str(out / "baseline/eval.json"),
            "samples": str(out / "baseline/samples.json.gz"),
        },
        "rows": rows,
        "scores": [],
    }
    report(
        read_manifest(json.dumps(manifest)),
        out_json=out / Path(SUMMARY["json"]).name,
        out_md=out / Path(SUMMARY["md"]).name,
        plots_dir=out / "plots",
    )
    import torch

    device = (
        torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    )
    facts = {
        "device": device,
        "dtype": args.dtype,
        "limit": args.limit,
        "tasks": args.tasks,
        "questions": {t: r.n for t, r in base.results.items()},
        "steps_s": steps,
        "total_s": round(time.time() - t0, 1),
        "variants": [r["name"] for r in rows],
    }
    (out / "gpu_eval.json").write_text(json.dumps(facts, indent=1))
    print(json.dumps(facts, indent=1))
    print((out / Path(SUMMARY["md"]).name).read_text())
    return facts


if __name__ == "__main__":
    main()
