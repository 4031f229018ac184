"""Python's overhead over the Rust call (issue #33's bar: at most 1% of a tiny-bundle generation):
times `Pipeline.__call__` from Python and subtracts the seconds the library reports for the same
run (`UnCLIPOutput.library_seconds`), over many runs.

    python python/examples/overhead.py [--model models/tiny] [--runs 30] [--output-type pil|np]
"""

import argparse
import statistics
import time
from pathlib import Path

import unclip

REPO = Path(__file__).resolve().parents[2]

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=str(REPO / "models" / "tiny"))
ap.add_argument("--runs", type=int, default=30)
ap.add_argument("--output-type", default="pil")
args = ap.parse_args()

pipe = unclip.Pipeline(args.model, progress=False)
pipe("warm-up", seed=0)
shares, walls = [], []
for i in range(args.runs):
    started = time.perf_counter()
    out = pipe("a red circle on a blue background", seed=i, output_type=args.output_type)
    wall = time.perf_counter() - started
    walls.append(wall)
    shares.append((wall - out.library_seconds) / wall)
print(f"{args.model}: {args.runs} runs, median wall {statistics.median(walls) * 1e3:.1f} ms, "
      f"Python overhead median {100 * statistics.median(shares):.2f}% (max {100 * max(shares):.2f}%)")
