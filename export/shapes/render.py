"""Renders shapes-world scenes (world.py) with Pillow, anti-aliased by supersampling.

A scene is drawn on a canvas `supersample` times larger than the output and reduced by box
averaging (`Image.reduce`): each output pixel is the area coverage of the shapes, as a
resolution-independent picture should be. `box` renders only a window of the full image (the
super-resolution scripts train on random crops of 256² and 1024² images without drawing the rest).

    python export/shapes/render.py [--out /tmp/shapes-grid.png] [--n 24] [--size 128] [--seed 0]
                                   [--split train|held_out|any]

writes a contact sheet of random scenes with their captions.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
import world  # noqa: E402

# Outline of each shape relative to its half-extent r, chosen so the four shapes of one size word
# cover similar areas (a star's points reach further than a circle's edge).
SQUARE_HALF_SIDE = 0.9
TRIANGLE_RADIUS = 1.2  # circumradius of the equilateral triangle, centred on its centroid
STAR_OUTER, STAR_INNER = 1.2, 0.5


def outline(obj: dict) -> list[tuple[float, float]] | None:
    """Polygon vertices of `obj` in image fractions (None for a circle). Rotation is clockwise on
    screen for positive angles; triangles and stars point up."""
    r, shape = obj["r"], obj["shape"]
    if shape == "circle":
        return None
    if shape == "square":
        h = SQUARE_HALF_SIDE * r
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "triangle":
        R = TRIANGLE_RADIUS * r
        pts = [(R * math.sin(a), -R * math.cos(a)) for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]
    elif shape == "star":
        pts = []
        for k in range(10):
            R = (STAR_OUTER if k % 2 == 0 else STAR_INNER) * r
            a = k * math.pi / 5
            pts.append((R * math.sin(a), -R * math.cos(a)))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    t = math.radians(obj["angle"])
    c, s = math.cos(t), math.sin(t)
    return [(obj["x"] + c * px - s * py, obj["y"] + s * px + c * py) for px, py in pts]


def render(scene: dict, size: int, supersample: int = 4, box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """The scene as an RGB image of `size`×`size` pixels, or only the window `box` = (x0, y0, w, h)
    of it (in output pixels), anti-aliased by drawing at `supersample`× and box-averaging."""
    x0, y0, w, h = box if box is not None else (0, 0, size, size)
    ss = supersample
    canvas = Image.new("RGB", (w * ss, h * ss), tuple(scene["bg_rgb"]))
    draw = ImageDraw.Draw(canvas)

    def px(u: float, v: float) -> tuple[float, float]:
        return ((u * size - x0) * ss, (v * size - y0) * ss)

    for obj in scene["objects"]:
        fill = tuple(obj["rgb"])
        pts = outline(obj)
        if pts is None:
            (ax, ay), (bx, by) = px(obj["x"] - obj["r"], obj["y"] - obj["r"]), px(obj["x"] + obj["r"], obj["y"] + obj["r"])
            draw.ellipse([ax, ay, bx, by], fill=fill)
        else:
            draw.polygon([px(u, v) for u, v in pts], fill=fill)
    return canvas.reduce(ss) if ss > 1 else canvas


def to_array(image: Image.Image) -> np.ndarray:
    """HWC uint8 → CHW float32 in [−1, 1] (the diffusion models' pixel range)."""
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def contact_sheet(scenes: list[dict], captions: list[str], size: int, columns: int = 6) -> Image.Image:
    """Tiles with their caption under each (wrapped), for looking at the world."""
    font = ImageFont.load_default(size=max(9, size // 12))
    text_h = 4 * (max(9, size // 12) + 2)
    rows = math.ceil(len(scenes) / columns)
    sheet = Image.new("RGB", (columns * (size + 4), rows * (size + text_h + 4)), (128, 128, 128))
    draw = ImageDraw.Draw(sheet)
    for i, (scene, text) in enumerate(zip(scenes, captions)):
        x, y = (i % columns) * (size + 4) + 2, (i // columns) * (size + text_h + 4) + 2
        sheet.paste(render(scene, size), (x, y))
        line, lines = "", []
        for word in text.split():
            if draw.textlength(f"{line} {word}".strip(), font=font) > size:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        draw.multiline_text((x, y + size + 1), "\n".join(lines[:4]), fill=(0, 0, 0), font=font, spacing=2)
    return sheet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/shapes-grid.png"))
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=["train", "held_out", "any"], default="train")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    scenes = [world.sample_scene(rng, args.split) for _ in range(args.n)]
    captions = [world.caption(s, rng) for s in scenes]
    contact_sheet(scenes, captions, args.size).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
