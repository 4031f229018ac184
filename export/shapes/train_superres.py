"""Trains a super-resolution stage: UNet2DModel on cat(noisy high-res, upsampled low-res), ε or x₀
prediction, 4× (64→256 with `--config superres_256`, 256→1024 with `--config superres_1024`).

    python export/shapes/train_superres.py --config superres_256|superres_1024 [--threads N]
                                           [--max-steps N] [--max-minutes M] [--init-from RUN]

`prediction_type` in the config's `super_res` section: "epsilon" (Karlo's) or "sample". The ε
upsamplers drew the right shapes in the wrong colors (64→256 with 7 steps: mean color off by 50–110
levels per channel), because their x̂₀ at t ≥ 980 was off by 40–76 levels and UnCLIPScheduler's
first step (999 → 832) passes it on with weight √ᾱ₈₃₂ = 0.26; the `*_x0` configs fine-tune them to
predict x₀ (diffusion.py `simple_loss`).

As DALL·E 2 (§2.1 and appendix C) and Karlo: the model is fully convolutional (no attention), so
it trains on random crops of the high-res image (`crop`, biased towards object edges, where all
the work is: flat color elsewhere) and runs on the whole image at sampling. The conditioning is
the low-res render degraded as the paper does — Gaussian blur for the first upsampler, a BSR-like
mix (blur, down-up resizing, Gaussian noise, JPEG, in random order) for the second — then
upsampled exactly as `UnCLIPPipeline` does (torch bicubic, antialias, align_corners=False). The
low-res image is rendered at the previous stage's resolution with the same supersampling the
previous stage trained on. The same weights serve as `super_res_first` and `super_res_last`
(assemble.py).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
import training  # noqa: E402

training.ensure_import_path()
import models  # noqa: E402
import world  # noqa: E402
from diffusion import Schedule  # noqa: E402
from render import render, to_array  # noqa: E402

SCALE = 4
MARGIN = 3  # low-res pixels around a crop: bicubic taps reach 2 pixels, so the crop is exact


def degrade(image: Image.Image, rng: np.random.Generator, d: dict) -> np.ndarray:
    """Random degradations of the low-res conditioning image, in random order; returns CHW in
    [−1, 1]. Keys: blur_prob/blur_sigma, resize_prob/resize_factor, jpeg_prob/jpeg_quality,
    noise_prob/noise_std (std in [−1, 1] units, applied last, as sensor noise)."""
    ops = ["blur", "resize", "jpeg"]
    rng.shuffle(ops)
    for op in ops:
        if rng.random() >= d.get(f"{op}_prob", 0.0):
            continue
        if op == "blur":
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(*d["blur_sigma"]))))
        elif op == "resize":
            f = float(rng.uniform(*d["resize_factor"]))
            small = max(8, round(image.width / f))
            image = image.resize((small, small), Image.BICUBIC).resize(image.size, Image.BICUBIC)
        elif op == "jpeg":
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=int(rng.integers(*d["jpeg_quality"])))
            image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    array = to_array(image)
    if rng.random() < d.get("noise_prob", 0.0):
        array = array + rng.normal(0.0, rng.uniform(*d["noise_std"]), array.shape).astype(np.float32)
    return array


def upsample(low: torch.Tensor, size: int) -> torch.Tensor:
    """`UnCLIPPipeline`'s low-res → high-res interpolation."""
    return F.interpolate(low, size=[size, size], mode="bicubic", align_corners=False, antialias=True)


def crop_origin(scene: dict, size: int, crop: int, rng: np.random.Generator, edge_prob: float) -> tuple[int, int]:
    """Top-left of a crop, aligned to the 4× grid (so it maps to whole low-res pixels): near a
    random object's outline with probability `edge_prob`, else uniform."""
    if rng.random() < edge_prob:
        obj = scene["objects"][int(rng.integers(len(scene["objects"])))]
        a = rng.uniform(0, 2 * np.pi)
        cx = (obj["x"] + obj["r"] * np.cos(a)) * size + rng.normal(0, crop / 4)
        cy = (obj["y"] + obj["r"] * np.sin(a)) * size + rng.normal(0, crop / 4)
    else:
        cx, cy = rng.uniform(0, size), rng.uniform(0, size)
    x0 = int(np.clip(round((cx - crop / 2) / SCALE) * SCALE, 0, size - crop))
    y0 = int(np.clip(round((cy - crop / 2) / SCALE) * SCALE, 0, size - crop))
    return x0, y0


def upsampled_crop(low: torch.Tensor, x0: int, y0: int, crop: int) -> torch.Tensor:
    """The (3, crop, crop) window at (x0, y0) of upsample(low, 4 × low size), computed from a
    low-res patch with a margin instead of the whole image."""
    n = low.shape[-1]
    lx, ly, lc = x0 // SCALE, y0 // SCALE, crop // SCALE
    ax, ay = max(0, lx - MARGIN), max(0, ly - MARGIN)
    bx, by = min(n, lx + lc + MARGIN), min(n, ly + lc + MARGIN)
    patch = F.interpolate(low[None, :, ay:by, ax:bx], size=[SCALE * (by - ay), SCALE * (bx - ax)],
                          mode="bicubic", align_corners=False, antialias=True)[0]
    ox, oy = SCALE * (lx - ax), SCALE * (ly - ay)
    return patch[:, oy : oy + crop, ox : ox + crop]


def check_upsampled_crop(size: int, crop: int) -> float:
    """upsampled_crop equals cropping the pipeline's full upsampling (interior and borders)."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(3, size // SCALE, size // SCALE, generator=g) * 2 - 1
    full = upsample(low[None], size)[0]
    worst = 0.0
    for x0, y0 in [(0, 0), (size - crop, size - crop), (SCALE * 5, size - crop), (size // 2, SCALE * 3)]:
        part = upsampled_crop(low, x0, y0, crop)
        worst = max(worst, (part - full[:, y0 : y0 + crop, x0 : x0 + crop]).abs().max().item())
    if not worst <= 1e-5:
        raise SystemExit(f"upsampled_crop differs from the full upsampling by {worst:.3e}")
    return worst


def prediction_type(config: dict) -> str:
    """What the upsampler predicts: "epsilon" (the default, Karlo's) or "sample" (x₀; diffusion.py
    `simple_loss`). assemble.py writes it into the upsampler's scheduler."""
    return config["super_res"].get("prediction_type", "epsilon")


def main() -> None:
    ap = training.arguments(__doc__, "superres_256")
    training.add_init_from(ap)
    args = ap.parse_args()
    config = models.load_config(args.config)
    run = training.Run(args, config)
    train, seed, data = config["train"], config["seed"], config["data"]
    torch.manual_seed(seed)
    size, crop = config["super_res"]["sample_size"], data["crop"]
    low_size = size // SCALE
    schedule = Schedule()
    model = models.super_res(config["super_res"]).train()
    ema = training.EMA(model, train["ema_decay"])
    opt = training.optimizer(model.parameters(), train)
    start = training.restore(run, args.init_from, "super_res", model, ema, opt)
    diff = check_upsampled_crop(size, crop)
    run.log(f"super-res {low_size}→{size}: {models.count_parameters(model) / 1e6:.2f} M parameters, "
            f"crops {crop}², crop upsampling = full upsampling within {diff:.1e}")

    def step_fn(step: int) -> dict:
        rng, g = training.generators(seed, step)
        highs, lows = [], []
        for _ in range(train["batch_size"]):
            scene = world.sample_scene(rng)
            x0, y0 = crop_origin(scene, size, crop, rng, data["edge_crop_prob"])
            highs.append(to_array(render(scene, size, data["supersample"], box=(x0, y0, crop, crop))))
            low = torch.from_numpy(degrade(render(scene, low_size, data["low_supersample"]), rng, data["degradation"]))
            lows.append(upsampled_crop(low, x0, y0, crop))
        high = torch.from_numpy(np.stack(highs))
        cond = torch.stack(lows)
        t = schedule.sample_t(len(highs), g)
        noise = torch.randn(high.shape, generator=g)
        xt = schedule.q_sample(high, t, noise)
        for group in opt.param_groups:
            group["lr"] = training.learning_rate(train, step)
        with training.autocast(train):
            pred = model(torch.cat([xt, cond], dim=1), t).sample
        loss = schedule.simple_loss(pred.float(), high, xt, t, noise, prediction_type(config),
                                    train.get("snr_cap", 5.0))[0].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(model.parameters(), train.get("grad_clip", 1.0))
        opt.step()
        ema.update(model)
        return {"loss": loss.item(), "grad": grad.item()}

    def state_fn(step: int) -> dict:
        return {"step": step, "config": config, "model": model.state_dict(), "ema": ema.state_dict(),
                "optimizer": opt.state_dict()}

    training.train_loop(run, step_fn, state_fn, start)


if __name__ == "__main__":
    main()
