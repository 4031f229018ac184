"""Times diffusers' UnCLIPPipeline on torch CPU with the same weights and steps as
`unclip bench`, for side-by-side ratios. JSON on stdout.

    python export/bench_diffusers.py [CHECKPOINT] [--runs K] [--warmup W] [--prompt P]
        [--num-images N] [--prior-steps N] [--decoder-steps N] [--sr-steps N]
        [--prior-guidance-scale F] [--decoder-guidance-scale F] [--threads N]
        [--autocast bf16] [--save-image OUT.npy]

Per-stage seconds come from forward hooks on each network (text = text encoder + text_proj,
prior, decoder, sr256 = both super-resolution UNets), so they add up to model time, not wall time.
`--autocast bf16` runs under `torch.autocast("cpu", torch.bfloat16)`, diffusers' fastest CPU setting.
`--save-image` writes the first timed run's images (N, H, W, 3) in [0, 1] for pixel comparisons.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TINY_KARLO, load_unclip  # noqa: E402


def autocast_module(module: torch.nn.Module) -> None:
    """Runs `module` under bf16 autocast and hands float32 back: the pipeline's own glue (the
    antialiased bicubic resize before super-resolution has no bf16 kernel) stays in float32, as
    in the usual recipe of autocasting the networks only."""
    forward = module.forward

    def to_f32(value):
        if torch.is_tensor(value) and value.is_floating_point():
            return value.float()
        if isinstance(value, tuple):
            return type(value)(to_f32(v) for v in value)
        if hasattr(value, "keys"):  # diffusers BaseOutput / transformers ModelOutput
            for key in list(value.keys()):
                value[key] = to_f32(value[key])
        return value

    def wrapped(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return to_f32(forward(*args, **kwargs))

    module.forward = wrapped


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
    ap.add_argument("--autocast", choices=["bf16"], help="torch.autocast on the CPU in this dtype")
    ap.add_argument("--save-image", type=Path, help="first timed run's images as .npy (N, H, W, 3) in [0, 1]")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pipe = load_unclip(args.checkpoint)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - started
    stage_of = {"text_encoder": "text", "text_proj": "text", "prior": "prior", "decoder": "decoder",
                "super_res_first": "sr256", "super_res_last": "sr256"}
    spent: dict[str, float] = {}

    def timed(module: torch.nn.Module, stage: str) -> None:
        def before(*_):
            module._bench_t0 = time.perf_counter()

        def after(*_):
            spent[stage] = spent.get(stage, 0.0) + time.perf_counter() - module._bench_t0

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    for name, stage in stage_of.items():
        timed(getattr(pipe, name), stage)
    if args.autocast == "bf16":
        for name in dict.fromkeys(stage_of):
            autocast_module(getattr(pipe, name))
    times = []
    stages: dict[str, list[float]] = {}
    for run in range(args.warmup + args.runs):
        g = torch.Generator("cpu").manual_seed(args.seed)
        spent.clear()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = pipe(
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
            for stage, seconds in spent.items():
                stages.setdefault(stage, []).append(seconds)
            if args.save_image and run == args.warmup:
                import numpy as np

                np.save(args.save_image, np.asarray(out.images, dtype=np.float32))

    def stats(values: list[float]) -> dict:
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    print(json.dumps({
        "runtime": "diffusers",
        "torch": torch.__version__,
        "autocast": args.autocast,
        "threads": torch.get_num_threads(),
        "load_seconds": load,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stages": {stage: stats(values) for stage, values in stages.items()},
        "total": stats(times),
        "steps": {"prior": args.prior_steps, "decoder": args.decoder_steps, "super_res": args.sr_steps},
        "batch": args.num_images,
    }, indent=2))


if __name__ == "__main__":
    main()
