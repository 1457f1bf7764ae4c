"""Distillation and online pairs, as ratios measured in one run (after `snakemake`, default config).

1. KD peak RSS: streamline's weight-sharing teacher (the original block only, on the student's own prefix and
   suffix; the loss over chunks of positions) vs a separate full teacher model, same batch, same steps, each in
   a fresh process (target <= 0.75; the weights alone give about 0.57 on SmolLM2 with n = 8). Two baselines:
   the usual way (whole logits), and the same chunked loss with a separate teacher, which isolates what
   sharing the teacher's weights saves from what the chunked loss saves;
2. MSE training throughput with pairs computed online by the frozen prefix vs read from pairs.zarr.

    python benchmarks/distill.py [--n 8] [--steps 3] [--batch-size 8]
"""

from __future__ import annotations

import argparse

from fresh import run_fresh  # benchmarks/fresh.py

from streamline.layout import Paths, pairs_name

SHARED = """
import json, resource, sys
from streamline.training.recipes import build_recipe
from streamline.training.core import fit
from streamline.training.settings import TrainSettings
a = json.loads(sys.argv[1])
s = TrainSettings(**a["settings"])
fit(build_recipe("kd", a["init"], s, data_dir=a["data"], teacher_dir=a["model"]), s, lambda result, state: None)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

# A second, whole model as the teacher, run from scratch for every batch; the KL on whole logits (the usual
# way) or over chunks of positions by streamline's own loss code ("chunked").
SEPARATE = """
import json, resource, sys
import numpy as np, torch
from streamline.data import load_split
from streamline.pruned import load_pruned
from streamline.training.losses import kl_per_token, sum_over_chunks
from streamline.training.model import trainable_parameter_names
from streamline.training.replacement import Replacement
a = json.loads(sys.argv[1])
s = a["settings"]
student, teacher = load_pruned(a["init"]), load_pruned(a["model"]).eval().requires_grad_(False)
names = trainable_parameter_names(student, Replacement.read(a["init"]).slots)
for n, p in student.named_parameters():
    p.requires_grad_(n in names)
opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=s["lr"])
ids, mask = load_split(a["data"], "train")


def kl_loss(x, m):
    w = m.reshape(-1).float()
    if not a["chunked"]:
        with torch.no_grad():
            t = teacher(input_ids=x, attention_mask=m).logits
        return (kl_per_token(student(input_ids=x, attention_mask=m).logits, t).reshape(-1) * w).sum() / w.sum()
    with torch.no_grad():  # last hidden states (after the final norm); the heads run per chunk
        t = teacher.model(input_ids=x, attention_mask=m).last_hidden_state.flatten(0, 1)
    hidden = student.model(input_ids=x, attention_mask=m).last_hidden_state
    head = lambda h: student.lm_head(h).float()
    chunk = lambda logits, c: (kl_per_token(logits, teacher.lm_head(t[c]).float()) * w[c]).sum()
    return sum_over_chunks(head, student.config.vocab_size, hidden, chunk) / w.sum()


for step in range(a["steps"]):
    for micro in range(s["gradient_accumulation_step"]):
        i = (step * s["gradient_accumulation_step"] + micro) * s["batch_size"]
        x = torch.from_numpy(np.asarray(ids[i:i + s["batch_size"]], dtype=np.int64))
        m = torch.from_numpy(np.asarray(mask[i:i + s["batch_size"]], dtype=np.int64))
        kl_loss(x, m).backward()
    opt.step()
    opt.zero_grad()
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(code: str, payload: dict) -> float:
    return run_fresh(code, payload)["peak_rss_mb"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--data", default="lambada")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--samples", type=int, default=64, help="train blocks for the throughput ratio")
    args = p.parse_args()
    paths = Paths(args.model, args.n)
    payload = {
        "init": paths.init("transformer"),
        "model": paths.model_dir,
        "data": paths.data_dir(args.data),
        "steps": args.steps,
        "settings": {
            "batch_size": args.batch_size,
            "gradient_accumulation_step": 1,
            "epochs": 1,
            "lr": 2e-4,
            "min_lr": 5e-5,
            "val_every": 10**9,
            "train_samples": args.steps * args.batch_size,
            "device": "cpu",
        },
    }
    shared = child(SHARED, payload)
    separate = child(SEPARATE, {**payload, "chunked": False})
    chunked = child(SEPARATE, {**payload, "chunked": True})
    print(
        f"KD peak RSS, batch {args.batch_size}, {args.steps} steps: streamline (weight-sharing teacher, chunked loss) "
        f"{shared:.0f} MB; separate full teacher, whole logits (the usual way) {separate:.0f} MB; separate full "
        f"teacher, same chunked loss {chunked:.0f} MB"
    )
    print(
        f"ratio vs the usual way {shared / separate:.3f} (target <= 0.75); ratio vs a separate teacher with the same "
        f"loss {shared / chunked:.3f} (the teacher's weights alone)"
    )

    from streamline.training.core import fit
    from streamline.training.recipes import build_recipe
    from streamline.training.settings import TrainSettings

    s = TrainSettings(
        batch_size=args.batch_size,
        gradient_accumulation_step=1,
        epochs=1,
        val_every=10**9,
        train_samples=args.samples,
        device="cpu",
    )
    rates = {}
    for mode in ("store", "online", "store", "online"):  # alternate, keep the best of two
        recipe = build_recipe(
            "mse",
            payload["init"],
            s,
            data_dir=payload["data"],
            teacher_dir=payload["model"],
            pairs_dir=paths.pairs(pairs_name(1)) if mode == "store" else None,
        )
        rate = fit(recipe, s, lambda result, state: None).samples_per_second
        rates[mode] = max(rates.get(mode, 0.0), rate)
    print(
        f"MSE training throughput: online pairs {rates['online']:.2f} samples/s, pairs.zarr {rates['store']:.2f} "
        f"samples/s; ratio {rates['online'] / rates['store']:.3f} (online also runs layers 0..b+n+k per batch)"
    )


if __name__ == "__main__":
    main()
