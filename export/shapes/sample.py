"""Samples an assembled shapes checkpoint with diffusers (plus the 256→1024 upsampler, which
`UnCLIPPipeline` lacks), and scores generalization to the held-out (color, shape, background)
triples.

    python export/shapes/sample.py [CKPT] [--prompt P ...] [--seed 0] [--out /tmp/shapes-samples.png]
                                   [--prior-steps 25] [--decoder-steps 25] [--sr-steps 7]
                                   [--sr1024] [--threads N]
    python export/shapes/sample.py [CKPT] --eval K [--out /tmp/shapes-eval.png]

--eval K generates K images for each held-out triple ("a {c} {s} on a {b} background") and for a
seen control of each (same color and shape, the next background in COLORS that is neither the
color nor held out for them), and reports, per split, how often the result shows the asked
background and object color (pixels: median border color, median of the pixels far from it,
nearest named color) and the asked triple (the checkpoint's own CLIP, zero-shot among all 224
one-object captions — bounded by CLIP's own accuracy on renders, which train_clip.py logs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import training  # noqa: E402

training.ensure_import_path()
import world  # noqa: E402
from _common import load_unclip  # noqa: E402
from assemble import DEFAULT_OUT, SR1024_PREFIX  # noqa: E402
from render import contact_sheet  # noqa: E402, F401

DEFAULT_PROMPTS = [
    "a red circle on a blue background",
    "a small green square at the left on a white background",
    "a large yellow star at the center on a purple background",
    "a blue triangle and a orange circle on a black background",
    "a red star on a blue background",  # held out
    "a purple triangle on a yellow background",  # held out
]


def load_sr1024(ckpt: Path):
    from diffusers import UnCLIPScheduler, UNet2DModel

    first = UNet2DModel.from_pretrained(ckpt / f"{SR1024_PREFIX}_first").eval()
    last = UNet2DModel.from_pretrained(ckpt / f"{SR1024_PREFIX}_last").eval()
    scheduler = UnCLIPScheduler.from_pretrained(ckpt / f"{SR1024_PREFIX}_scheduler")
    return first, last, scheduler


@torch.no_grad()
def super_res_1024(image: torch.Tensor, first, last, scheduler, steps: int = 7, generator=None) -> torch.Tensor:
    """The second upsampler, as `UnCLIPPipeline`'s super-res loop (no guidance; `last` on the last
    step): `image` (B, 3, 256, 256) in [−1, 1] → (B, 3, 1024, 1024) in [−1, 1]."""
    image = image.clamp(-1, 1)
    size = first.config.sample_size
    scheduler.set_timesteps(steps)
    latents = torch.randn((image.shape[0], 3, size, size), generator=generator) * scheduler.init_noise_sigma
    upsampled = F.interpolate(image, size=[size, size], mode="bicubic", align_corners=False, antialias=True)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        unet = last if i == len(timesteps) - 1 else first
        noise_pred = unet(torch.cat([latents, upsampled], dim=1), t).sample
        prev = None if i + 1 == len(timesteps) else timesteps[i + 1]
        latents = scheduler.step(noise_pred, t, latents, prev_timestep=prev, generator=generator).prev_sample
    return latents.clamp(-1, 1)


def nearest_color(rgb: np.ndarray) -> str:
    names = list(world.COLORS)
    d = [np.linalg.norm(rgb - np.array(world.COLORS[n])) for n in names]
    return names[int(np.argmin(d))]


def pixel_colors(image: np.ndarray) -> tuple[str, str | None]:
    """(background, object color) of an HWC uint8 image, from pixels."""
    h = image.shape[0]
    ring = max(2, h // 25)
    border = np.concatenate([image[:ring].reshape(-1, 3), image[-ring:].reshape(-1, 3),
                             image[:, :ring].reshape(-1, 3), image[:, -ring:].reshape(-1, 3)]).astype(float)
    bg = np.median(border, axis=0)
    far = image.reshape(-1, 3)[np.linalg.norm(image.reshape(-1, 3) - bg, axis=1) > 80]
    obj = nearest_color(np.median(far, axis=0)) if len(far) > image.shape[0] * image.shape[1] * 0.005 else None
    return nearest_color(bg), obj


def controls() -> list[tuple[str, str, str]]:
    out = []
    for c, s, b in world.HELD_OUT:
        names = list(world.COLORS)
        k = names.index(b)
        for j in range(1, len(names)):
            cand = names[(k + j) % len(names)]
            if cand != c and (c, s, cand) not in world.HELD_OUT:
                out.append((c, s, cand))
                break
    return out


def evaluate(pipe, k: int, seed: int, steps: dict, out: Path) -> dict:
    from transformers import CLIPVisionModelWithProjection

    ckpt = Path(pipe.config._name_or_path)
    vision = CLIPVisionModelWithProjection.from_pretrained(ckpt / "image_encoder").eval()
    triples = [(c, s, b) for c in world.COLORS for s in world.SHAPES for b in world.COLORS if b != c]
    captions = [f"a {c} {s} on a {b} background" for c, s, b in triples]
    ids = pipe.tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        text = F.normalize(pipe.text_encoder(ids).text_embeds, dim=-1)
    from clip_model import clip_pixels

    report, tiles, labels = {}, [], []
    for split, asked in (("held_out", list(world.HELD_OUT)), ("seen", controls())):
        hits = {"background": 0, "color": 0, "triple_clip": 0, "n": 0}
        for c, s, b in asked:
            g = torch.Generator().manual_seed(seed)
            prompt = f"a {c} {s} on a {b} background"
            images = pipe([prompt] * k, generator=g, output_type="np", **steps).images
            u8 = (images * 255).round().astype(np.uint8)
            pil = [Image.fromarray(x).resize((224, 224), Image.BICUBIC) for x in u8]
            with torch.no_grad():
                emb = F.normalize(vision(clip_pixels(pil)).image_embeds, dim=-1)
            pred = (emb @ text.T).argmax(-1).tolist()
            for x, p in zip(u8, pred):
                bg, obj = pixel_colors(x)
                hits["background"] += bg == b
                hits["color"] += obj == c
                hits["triple_clip"] += triples[p] == (c, s, b)
                hits["n"] += 1
            tiles.append(u8[0])
            labels.append(f"{'HELD ' if split == 'held_out' else ''}{prompt}")
        n = hits.pop("n")
        report[split] = {key: v / n for key, v in hits.items()} | {"images": n}
    sheet = Image.new("RGB", (len(tiles) // 2 * 130, 2 * 130), (128, 128, 128))
    for i, tile in enumerate(tiles):
        sheet.paste(Image.fromarray(tile).resize((128, 128)), ((i % 12) * 130, (i // 12) * 130))
    sheet.save(out)
    report["sheet"] = str(out)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", nargs="?", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--prompt", action="append")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--prior-steps", type=int, default=25)
    ap.add_argument("--decoder-steps", type=int, default=25)
    ap.add_argument("--sr-steps", type=int, default=7)
    ap.add_argument("--prior-guidance", type=float, default=4.0)
    ap.add_argument("--decoder-guidance", type=float, default=8.0)
    ap.add_argument("--sr1024", action="store_true", help="also run the 256→1024 upsampler")
    ap.add_argument("--eval", type=int, metavar="K", help="score K images per held-out / seen triple")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_unclip(args.ckpt)
    pipe.set_progress_bar_config(disable=True)
    steps = {"prior_num_inference_steps": args.prior_steps, "decoder_num_inference_steps": args.decoder_steps,
             "super_res_num_inference_steps": args.sr_steps, "prior_guidance_scale": args.prior_guidance,
             "decoder_guidance_scale": args.decoder_guidance}
    if args.eval:
        report = evaluate(pipe, args.eval, args.seed, steps, args.out or Path("/tmp/shapes-eval.png"))
        print(json.dumps(report, indent=2))
        return
    prompts = args.prompt or DEFAULT_PROMPTS
    g = torch.Generator().manual_seed(args.seed)
    images = pipe(prompts, generator=g, output_type="np", **steps).images
    out = args.out or Path("/tmp/shapes-samples.png")
    if args.sr1024:
        big = super_res_1024(torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1, *load_sr1024(args.ckpt),
                             steps=args.sr_steps, generator=g)
        for i, x in enumerate(((big + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()):
            path = out.with_name(f"{out.stem}-{i}-1024.png")
            Image.fromarray(x).save(path)
            print(path)
    tile = 256
    sheet = Image.new("RGB", (len(prompts) * (tile + 4), tile + 4), (128, 128, 128))
    for i, x in enumerate((images * 255).round().astype(np.uint8)):
        sheet.paste(Image.fromarray(x), (i * (tile + 4) + 2, 2))
    sheet.save(out)
    print(out)
    for i, p in enumerate(prompts):
        print(f"  {i}: {p}")


if __name__ == "__main__":
    main()
