"""How long a no-op `snakemake` takes on the completed default workflow (everything cached).

Run from the repository root after a complete `snakemake`:
    python benchmarks/noop.py [--repeat 3]
Target: under 5 s. The Snakefile imports no torch or transformers at parse time for this reason.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "snakemake"], capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0 or "Nothing to be done" not in proc.stdout + proc.stderr:
            sys.exit("the workflow is not complete: run `snakemake` first\n" + proc.stderr[-2000:])
    print(
        f"no-op snakemake on the completed workflow: best {min(times):.2f} s, "
        f"median {sorted(times)[len(times) // 2]:.2f} s over {args.repeat} runs  (target < 5 s)"
    )


if __name__ == "__main__":
    main()
