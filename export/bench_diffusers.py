"""Times diffusers' UnCLIPPipeline on torch CPU with the same weights and steps as
`unclip bench`, for side-by-side ratios. JSON on stdout.

    python export/bench_diffusers.py [CHECKPOINT] [--runs K] [--warmup W] [--prompt P]
        [--num-images N] [--prior-steps N] [--decoder-steps N] [--sr-steps N]
        [--prior-guidance-scale F] [--decoder-guidance-scale F] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TINY_KARLO, load_unclip  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", type=Path, default=TINY_KARLO)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--prompt", default="a red circle on a blue background")
    ap.add_argument("--num-images", type=int, default=1)
    ap.add_argument("--prior-steps", type=int, default=25)
    ap.add_argument("--decoder-steps", type=int, default=25)
    ap.add_argument("--sr-steps", type=int, default=7)
    ap.add_argument("--prior-guidance-scale", type=float, default=4.0)
    ap.add_argument("--decoder-guidance-scale", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pipe = load_unclip(args.checkpoint)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - started
    times = []
    for run in range(args.warmup + args.runs):
        g = torch.Generator("cpu").manual_seed(args.seed)
        t0 = time.perf_counter()
        pipe(
            args.prompt,
            num_images_per_prompt=args.num_images,
            prior_num_inference_steps=args.prior_steps,
            decoder_num_inference_steps=args.decoder_steps,
            super_res_num_inference_steps=args.sr_steps,
            prior_guidance_scale=args.prior_guidance_scale,
            decoder_guidance_scale=args.decoder_guidance_scale,
            generator=g,
            output_type="np",
        )
        if run >= args.warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({
        "runtime": "diffusers",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_seconds": load,
        "total": {"min": min(times), "median": statistics.median(times), "max": max(times)},
        "steps": {"prior": args.prior_steps, "decoder": args.decoder_steps, "super_res": args.sr_steps},
        "batch": args.num_images,
    }, indent=2))


if __name__ == "__main__":
    main()
