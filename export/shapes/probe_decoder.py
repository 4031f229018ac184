"""Does the decoder use its CLIP image embedding? A cheap check on a training checkpoint.

    python export/shapes/probe_decoder.py [RUN_DIR] [--scenes 16] [--t 990 975 960] [--raw]

For scenes the decoder was trained on, it predicts x̂₀ from an x_t that holds no signal
(x_t = √(1−ᾱ_t)·ε: the gray image noised), with the scene's embedding and an empty caption, and
compares the predicted background (the mean of a 6-pixel border) with the scene's. A decoder that
ignores its embedding predicts the dataset's mean color whatever the embedding says; one that uses
it predicts each scene's background. This is the question sampling asks at its first steps, where
x_t carries no signal (the ε-loss alone barely rewards getting it right: at t = 960 x̂₀'s error
is worth SNR ≈ 0.004 of it).

Prints, per t, the mean absolute error of the predicted background in 8-bit units, that of the
dataset-mean background (what ignoring the embedding scores) and the share of scenes whose
predicted background is nearest (among the world's colors) to the right one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import training  # noqa: E402

training.ensure_import_path()
import world  # noqa: E402
from clip_model import ClipTowers  # noqa: E402
from diffusion import Schedule  # noqa: E402
from embed_scenes import DEFAULT_OUT, load_scenes  # noqa: E402
from render import render, to_array  # noqa: E402
from train_decoder import DecoderWithProj, prediction_type  # noqa: E402


def border_rgb(x: torch.Tensor) -> np.ndarray:
    """Mean color of the 6-pixel border of images in [−1, 1], as 8-bit RGB."""
    mask = torch.ones(x.shape[-2:], dtype=torch.bool)
    mask[6:-6, 6:-6] = False
    return ((x[:, :, mask].mean(dim=-1) + 1) * 127.5).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", type=Path, default=training.RUNS / "decoder")
    ap.add_argument("--clip-run", type=Path, default=training.RUNS / "clip")
    ap.add_argument("--scenes", type=int, default=16)
    ap.add_argument("--t", type=int, nargs="+", default=[990, 975, 960])
    ap.add_argument("--raw", action="store_true", help="the trained weights, not their EMA")
    args = ap.parse_args()
    torch.set_num_threads(1)
    state = training.require_run(args.run, "decoder")
    clip = ClipTowers(args.clip_run)
    data = load_scenes(DEFAULT_OUT, clip)
    model = DecoderWithProj(state["config"]["decoder"], clip.config["embed_dim"]).eval()
    model.load_state_dict(state["model"] if args.raw else state["ema"]["model"])
    schedule = Schedule()
    n = args.scenes
    x0 = torch.from_numpy(np.stack([to_array(render(data["scenes"][i], 64)) for i in range(n)]))
    truth = border_rgb(x0)
    names = list(world.COLORS)
    palette = np.array([world.COLORS[c] for c in names], dtype=np.float64)
    text_embeds, states, mask = clip.encode_text([""] * n, full_length=False)
    g = torch.Generator().manual_seed(0)
    print(f"{args.run} step {state['step']} ({'raw' if args.raw else 'EMA'}), {n} scenes")
    for t_value in args.t:
        t = torch.full((n,), t_value)
        noise = torch.randn(x0.shape, generator=g)
        xt = schedule.q_sample(torch.zeros_like(x0), t, noise)
        with torch.no_grad():
            out = model(xt, t, data["image_embeds"][:n], text_embeds, states, mask)[:, :3]
        if prediction_type(state["config"]) == "sample":
            x0_pred = out.clamp(-1, 1)
        else:
            x0_pred = (schedule._at(schedule.sqrt_recip_ac, t, xt) * xt
                       - schedule._at(schedule.sqrt_recipm1_ac, t, xt) * out).clamp(-1, 1)
        pred = border_rgb(x0_pred)
        nearest = lambda rgb: np.argmin(((palette[None] - rgb[:, None]) ** 2).sum(-1), axis=1)  # noqa: E731
        right = (nearest(pred) == nearest(truth)).mean()
        baseline = np.abs(truth - truth.mean(0)).mean()
        print(f"t={t_value}: background error {np.abs(pred - truth).mean():.1f} (ignoring the embedding: "
              f"{baseline:.1f}), nearest color right {100 * right:.0f}%")


if __name__ == "__main__":
    main()
