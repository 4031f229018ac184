"""Measures what the shapes unCLIP draws, from the pixels: generates with the `unclip` binary (the
runtime we ship, not a Python re-implementation) and reads every picture back with a geometric
measurer that knows the synthetic world exactly (world.py, render.py).

    python export/shapes/eval.py [--model models/shapes] [--unclip target/release/unclip]
                                 [--images 4] [--threads 2] [--out docs] [--quick] [--default-only]
                                 [--unclip-flags "--device openvino --precision bf16"]
    python export/shapes/eval.py --self-test     # the measurer on rendered ground truth
    (--ablation-every N: the ablations and the sweep on every N-th caption, the default also scored
    on that subset; docs/shapes-eval.md was made with --images 2 --chunk 16 --ablation-every 3)

Why a Python script driving the CLI rather than `unclip eval`: the measurer must know the world
(palette, shapes, positions, held-out triples, caption forms), which lives in Python next to the
renderer and training; duplicating it in Rust would be a second definition to keep in sync. The
pictures themselves all come from `unclip generate`, so the figures are the runtime's.

Captions (deterministic, 212, canonical forms of world.REQUIRED_FORMS):
- 96 one-object "a {c} {s} on a {b} background" of seen (color, shape, background) triples,
- 36 one-object captions of the 12 held-out triples (world.HELD_OUT): the plain form and two
  "a {z} {c} {s} at the {p} on a {b} background",
- 40 seen "a {z} {c} {s} at the {p} on a {b} background",
- 40 two-object "a {c1} {s1} and a {c2} {s2} on a {b} background".
Each caption gets `--images` pictures (seeds shared by every configuration: common random numbers).

Measurement (64×64, the decoder's output; the upsamplers do not change attributes): background =
nearest palette color to the median border pixel; foreground = pixels far from it, split into
connected components (≥ MIN_AREA pixels); per component, color = nearest palette color to its
core pixels, shape = the best intersection-over-union among the four shapes rendered at its
centroid, at the size its area implies and at the world's rotations, position = nearest of the
world's five anchor points, size = small/large from the implied half-extent.

Metrics: shape / color / background accuracy (one-object captions); all-attributes = all three and
exactly one object; held-out all-attributes; binding = a two-object picture with exactly the two
named (color, shape) pairs, next to "bag" = the right colors and shapes in any pairing; position
and size accuracy where the caption names them; diversity = mean pairwise cosine distance of the
bundle's CLIP image embeddings among one caption's pictures. Configurations: the default
settings; DALL·E 2 §5.1's ablation (`--decoder-condition text-embedding`, `caption`); a decoder
guidance sweep. Results: OUT/shapes-eval.md (tables), .json, .png (plot).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import world  # noqa: E402
from render import outline, render  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SIZE = 64
MIN_AREA = 25  # pixels at 64²; the smallest object (small star) covers ~70
FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that starts a component
PALETTE = np.array([world.COLORS[c] for c in world.COLORS], dtype=np.float32)
PALETTE_NAMES = list(world.COLORS)
# Area of each outline per r² (render.py): circle π; square (2·0.9)²; equilateral triangle of
# circumradius 1.2: (3√3/4)·1.2²; star of radii 1.2 / 0.5 with five points: 10 · ½ · 1.2 · 0.5 · sin 36°.
AREA_PER_R2 = {
    "circle": math.pi,
    "square": (2 * 0.9) ** 2,
    "triangle": 3 * math.sqrt(3) / 4 * 1.2**2,
    "star": 10 * 0.5 * 1.2 * 0.5 * math.sin(math.pi / 5),
}
ANGLES = np.arange(-world.MAX_ANGLE, world.MAX_ANGLE + 1e-6, 3.0)
SMALL_LARGE_R = (world.SIZE_RANGE["small"][1] + world.SIZE_RANGE["large"][0]) / 2


def cpu_name() -> str:
    """The CPU's model name (Linux), for the report: figures are per machine."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "an unknown CPU"


# ---- captions ----------------------------------------------------------------------------------

def captions(seed: int = 0) -> list[dict]:
    """The evaluation captions with their claims and group."""
    rng = np.random.default_rng(seed)
    seen = world.seen_triples()
    out = []

    def add(group: str, scene: dict, template: str):
        text, claims = world.describe(scene, None, template)
        out.append({"group": group, "caption": text, "claims": claims})

    one, positional, two = world.REQUIRED_FORMS
    for k in rng.choice(len(seen), 96, replace=False):
        c, s, b = seen[k]
        add("one", world.scene_from(b, (c, s, "small", "center"), rng=rng), one)
    for c, s, b in world.HELD_OUT:
        add("held_out", world.scene_from(b, (c, s, "small", "center"), rng=rng), one)
        for _ in range(2):
            z, p = world._pick(rng, world.SIZES), world._pick(rng, world.POSITIONS)
            add("held_out", world.scene_from(b, (c, s, z, p), rng=rng), positional)
    for k in rng.choice(len(seen), 40, replace=False):
        c, s, b = seen[k]
        z, p = world._pick(rng, world.SIZES), world._pick(rng, world.POSITIONS)
        add("positional", world.scene_from(b, (c, s, z, p), rng=rng), positional)
    while sum(x["group"] == "two" for x in out) < 40:
        scene = world.sample_scene(rng)
        if len(scene["objects"]) == 2:
            add("two", scene, two)
    return out


# ---- measurement -------------------------------------------------------------------------------

def nearest_color(rgb: np.ndarray) -> str:
    return PALETTE_NAMES[int(np.argmin(((PALETTE - rgb) ** 2).sum(-1)))]


def components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as index arrays (flat), largest first."""
    h, w = mask.shape
    label = np.full(mask.shape, -1, dtype=np.int32)
    found = []
    for start in zip(*np.nonzero(mask)):
        if label[start] >= 0:
            continue
        stack, members = [start], []
        label[start] = len(found)
        while stack:
            y, x = stack.pop()
            members.append(y * w + x)
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and label[ny, nx] < 0:
                    label[ny, nx] = len(found)
                    stack.append((ny, nx))
        found.append(np.array(members))
    return sorted(found, key=len, reverse=True)


_TEMPLATE_CACHE: dict = {}


def shape_mask(shape: str, x: float, y: float, r: float, angle: float) -> np.ndarray:
    """Coverage ≥ ½ of one object rendered by render.py at 64² (white on black)."""
    key = (shape, round(x * SIZE * 2), round(y * SIZE * 2), round(r * SIZE * 4), angle)
    if key not in _TEMPLATE_CACHE:
        obj = {"shape": shape, "x": key[1] / (2 * SIZE), "y": key[2] / (2 * SIZE), "r": key[3] / (4 * SIZE),
               "angle": angle, "rgb": [255, 255, 255]}
        scene = {"bg_rgb": [0, 0, 0], "objects": [obj]}
        _TEMPLATE_CACHE[key] = np.asarray(render(scene, SIZE, 4))[..., 0] >= 128
    return _TEMPLATE_CACHE[key]


def split_by_color(a: np.ndarray, found: list[np.ndarray]) -> list[np.ndarray]:
    """Components of at least MIN_AREA pixels; one that holds two objects of different colors
    (touching shapes) is split by each pixel's nearest palette color when two colors each cover
    MIN_AREA pixels and a fifth of it."""
    out = []
    for members in found:
        if len(members) < MIN_AREA:
            continue
        labels = np.argmin(((a.reshape(-1, 3)[members][:, None] - PALETTE) ** 2).sum(-1), axis=1)
        counts = np.bincount(labels, minlength=len(PALETTE))
        major = [k for k in range(len(PALETTE)) if counts[k] >= max(MIN_AREA, 0.2 * len(members))]
        if len(major) < 2:
            out.append(members)
            continue
        for k in major:
            mask = np.zeros(SIZE * SIZE, dtype=bool)
            mask[members[labels == k]] = True
            out += [m for m in components(mask.reshape(SIZE, SIZE)) if len(m) >= MIN_AREA]
    return sorted(out, key=len, reverse=True)


def measure(image: np.ndarray) -> dict:
    """What a 64×64 RGB picture shows: background and objects (largest first)."""
    a = image.astype(np.float32)
    border = np.concatenate([a[:2].reshape(-1, 3), a[-2:].reshape(-1, 3), a[:, :2].reshape(-1, 3),
                             a[:, -2:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    dist = np.sqrt(((a - bg) ** 2).sum(-1))
    objects = []
    for members in split_by_color(a, components(dist > FOREGROUND_DISTANCE)):
        ys, xs = np.divmod(members, SIZE)
        pixels = a.reshape(-1, 3)[members]
        far = dist.reshape(-1)[members]
        fg = np.median(pixels[far >= np.quantile(far, 0.5)], axis=0)
        # Coverage of each pixel: its projection on the background → object color line, so the
        # anti-aliased edge counts by half, as render.py draws it.
        line = fg - bg
        coverage = ((a - bg) @ line) / max(float(line @ line), 1e-6)
        mask = np.zeros((SIZE, SIZE), dtype=bool)
        mask.reshape(-1)[members] = coverage.reshape(-1)[members] >= 0.5
        area = float(np.clip(coverage.reshape(-1)[members], 0, 1).sum())
        cx, cy = (xs.mean() + 0.5) / SIZE, (ys.mean() + 0.5) / SIZE
        best = ("circle", -1.0, 0.0)
        for shape, per_r2 in AREA_PER_R2.items():
            r = math.sqrt(area / per_r2) / SIZE
            for angle in ANGLES if shape != "circle" else [0.0]:
                # Triangles and stars are centred on their centroid (render.outline), as measured.
                template = shape_mask(shape, cx, cy, r, float(angle))
                union = np.logical_or(template, mask).sum()
                iou = np.logical_and(template, mask).sum() / max(union, 1)
                if iou > best[1]:
                    best = (shape, float(iou), r)
        shape, iou, r = best
        position = min(world.POSITION_XY, key=lambda p: (world.POSITION_XY[p][0] - cx) ** 2
                       + (world.POSITION_XY[p][1] - cy) ** 2)
        objects.append({"color": nearest_color(fg), "shape": shape, "iou": iou, "x": float(cx), "y": float(cy),
                        "size": "small" if r < SMALL_LARGE_R else "large", "position": position,
                        "area": area})
    return {"background": nearest_color(bg), "objects": objects}


def score(item: dict, seen: dict) -> dict:
    """Per-picture hits for one caption's claims (None where the metric does not apply)."""
    claims, objs = item["claims"], seen["objects"]
    bg_ok = claims["background"] is None or claims["background"] == seen["background"]
    out = {"background": bg_ok, "count": len(objs) == len(claims["objects"])}
    if len(claims["objects"]) == 1:
        want = claims["objects"][0]
        got = objs[0] if objs else {"color": None, "shape": None, "size": None, "position": None}
        out.update(shape=got["shape"] == want["shape"], color=got["color"] == want["color"])
        out["all"] = out["shape"] and out["color"] and bg_ok and out["count"]
        out["position"] = None if want["position"] is None else out["count"] and got["position"] == want["position"]
        out["size"] = None if want["size"] is None else out["count"] and got["size"] == want["size"]
    else:
        pairs = sorted((o["color"], o["shape"]) for o in claims["objects"])
        got = sorted((o["color"], o["shape"]) for o in objs[:2])
        out["binding"] = out["count"] and got == pairs and bg_ok
        out["bag"] = (out["count"] and sorted(c for c, _ in got) == sorted(c for c, _ in pairs)
                      and sorted(s for _, s in got) == sorted(s for _, s in pairs) and bg_ok)
        out["all"] = out["binding"]
    return out


# ---- generation --------------------------------------------------------------------------------

def work_dir(work: Path, config: dict) -> Path:
    """Where one configuration's pictures live under --work."""
    return work / config["name"].replace(" ", "-").replace("(", "").replace(")", "")


def generate(items: list[dict], config: dict, args, out_dir: Path, make: bool = True) -> list[list[np.ndarray]]:
    """Pictures per caption from `unclip generate`, in chunks of prompts (one process each); pictures
    already in out_dir are reused. With make=False a missing picture is an error instead."""
    if make:
        out_dir.mkdir(parents=True, exist_ok=True)
    pictures: list[list[np.ndarray]] = []
    for j in range(0, len(items), args.chunk):
        chunk = items[j: j + args.chunk]
        stem = out_dir / f"chunk{j // args.chunk:03d}"
        paths = [stem.parent / f"{stem.name}_{i}.png" for i in range(len(chunk) * args.images)]
        if not all(p.exists() for p in paths):
            if not make:
                sys.exit(f"{next(p for p in paths if not p.exists())} is missing: give the --work of a run "
                         "with the same --images, --chunk and --every")
            cmd = [str(args.unclip), "generate", *[x["caption"] for x in chunk], "--model", str(args.model),
                   "--num-images", str(args.images), "--size", str(SIZE), "--seed", str(1000 + j // args.chunk),
                   "--threads", str(args.threads), "-q", "-o", f"{stem}.png", *config.get("flags", []),
                   *shlex.split(args.unclip_flags)]
            subprocess.run(cmd, check=True)
        images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        pictures += [images[k * args.images:(k + 1) * args.images] for k in range(len(chunk))]
    return pictures


class Embedder:
    """CLIP image embeddings from the bundle's image_encoder.onnx, preprocessed as bundle.json says."""

    def __init__(self, model: Path):
        import onnxruntime as ort

        manifest = json.loads((model / "bundle.json").read_text())
        self.proc = manifest["image_processor"]
        self.session = ort.InferenceSession(str(model / manifest["models"]["image_encoder"]["file"]),
                                            providers=["CPUExecutionProvider"])

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        side = self.proc["crop_size"]
        x = np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.BICUBIC), dtype=np.float32)
                      for im in images]) * self.proc["rescale_factor"]
        x = (x - np.array(self.proc["mean"], dtype=np.float32)) / np.array(self.proc["std"], dtype=np.float32)
        (emb,) = self.session.run(None, {self.session.get_inputs()[0].name: x.transpose(0, 3, 1, 2).copy()})
        return emb


def diversity(embedder: Embedder | None, pictures: list[list[np.ndarray]]) -> float | None:
    if embedder is None or len(pictures[0]) < 2:
        return None
    values = []
    for group in pictures:
        e = embedder(group)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        sim = e @ e.T
        k = len(group)
        values.append(float((1 - sim[np.triu_indices(k, 1)]).mean()))
    return float(np.mean(values))


def summarize(items: list[dict], pictures: list[list[np.ndarray]]) -> dict:
    rows: dict[str, list] = {}
    for item, group in zip(items, pictures):
        for im in group:
            hit = score(item, measure(im))
            for key, value in hit.items():
                if value is not None:
                    rows.setdefault(f"{item['group']}:{key}", []).append(bool(value))
    metric = {k: float(np.mean(v)) for k, v in rows.items()}

    def pooled(groups, key):
        v = [x for g in groups for x in rows.get(f"{g}:{key}", [])]
        return float(np.mean(v)) if v else None

    single = ("one", "positional")
    return {
        "shape": pooled(single, "shape"), "color": pooled(single, "color"),
        "background": pooled(single, "background"), "all_attributes": pooled(single, "all"),
        "held_out_all_attributes": pooled(("held_out",), "all"),
        "held_out_shape": pooled(("held_out",), "shape"),
        "binding": pooled(("two",), "binding"), "bag_of_attributes": pooled(("two",), "bag"),
        "position": pooled(("positional", "held_out"), "position"),
        "size": pooled(("positional", "held_out"), "size"),
        "by_group": metric,
    }


# ---- report ------------------------------------------------------------------------------------

def pct(x):
    return "—" if x is None else f"{100 * x:.1f}%"


def report(results: list[dict], args, seconds: float) -> None:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "shapes-eval.json").write_text(json.dumps({"model": str(args.model), "images_per_caption": args.images,
                                                      "unclip_flags": args.unclip_flags, "seconds": seconds,
                                                      "results": results}, indent=2) + "\n")
    extra = f' --unclip-flags "{args.unclip_flags}"' if args.unclip_flags else ""
    cols = ["captions", "all_attributes", "shape", "color", "background", "held_out_all_attributes", "binding",
            "bag_of_attributes", "position", "size", "diversity"]
    lines = ["# Shapes model: fidelity measured from the pixels", "",
             f"`python export/shapes/eval.py --images {args.images} --ablation-every {args.ablation_every}{extra}` "
             f"({len(captions()[:: args.every])} captions for the default configuration, every "
             f"{args.ablation_every}-th of them for the others; {args.images} pictures per caption, 64×64, "
             f"measured {time.strftime('%Y-%m-%d')} on {cpu_name()}, {seconds / 60:.0f} min). Every picture comes "
             "from `unclip generate`; "
             "accuracies are the share of pictures (see the script's docstring for the measurer).", "",
             "| configuration | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for r in results:
        m = r["metrics"]
        cells = [str(m[c]) if c == "captions" else pct(m[c]) if c != "diversity"
                 else ("—" if m[c] is None else f"{m[c]:.4f}") for c in cols]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    lines += ["", "all_attributes: one-object captions, shape + color + background right and exactly one object. "
              "binding: two-object captions with exactly the named (color, shape) pairs; bag_of_attributes: the "
              "right colors and shapes in any pairing. diversity: mean pairwise cosine distance of CLIP image "
              "embeddings among one caption's pictures.", ""]
    (out / "shapes-eval.md").write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    # The ablations and the sweep are compared with the default scored on their captions.
    base = "default-subset" if any(r["kind"] == "default-subset" for r in results) else "default"
    ablation = [r for r in results if r["kind"] in (base, "ablation")]
    ax1.bar([r["name"].split(",")[0] for r in ablation], [100 * (r["metrics"]["all_attributes"] or 0) for r in ablation])
    ax1.set_ylabel("all-attributes accuracy (%)")
    ax1.set_title("decoder conditioning (DALL·E 2 §5.1)")
    sweep = sorted((r for r in results if r["kind"] in (base, "sweep")), key=lambda r: r["guidance"])
    g = [r["guidance"] for r in sweep]
    ax2.plot(g, [100 * (r["metrics"]["all_attributes"] or 0) for r in sweep], "o-", label="fidelity (all-attributes %)")
    ax2.set_xlabel("decoder guidance scale")
    ax2.set_ylabel("all-attributes accuracy (%)")
    if all(r["metrics"]["diversity"] is not None for r in sweep):
        twin = ax2.twinx()
        twin.plot(g, [r["metrics"]["diversity"] for r in sweep], "s--", color="tab:orange", label="diversity")
        twin.set_ylabel("diversity (mean pairwise cosine distance)")
    ax2.set_title("guidance: fidelity vs diversity")
    fig.tight_layout()
    fig.savefig(out / "shapes-eval.png", dpi=100)


def configurations(default_guidance: float, quick: bool) -> list[dict]:
    scales = [1.0, 2.0, 4.0, 16.0] if not quick else [1.0]
    configs = [{"name": "default (prior)", "kind": "default", "guidance": default_guidance, "flags": []},
               {"name": "text embedding", "kind": "ablation", "flags": ["--decoder-condition", "text-embedding"]},
               {"name": "caption only", "kind": "ablation", "flags": ["--decoder-condition", "caption"]}]
    configs += [{"name": f"decoder guidance {s:g}", "kind": "sweep", "guidance": s,
                 "flags": ["--decoder-guidance-scale", str(s)]} for s in scales if s != default_guidance]
    return configs


def self_test(args) -> None:
    """The measurer on pictures rendered from each caption's own scene: it must read them back."""
    items = captions()
    rng = np.random.default_rng(7)
    pictures = []
    for item in items:
        group = []
        for _ in range(args.images):
            objs = [(o["color"], o["shape"], o["size"] or world._pick(rng, world.SIZES),
                     o["position"] or ("center" if len(item["claims"]["objects"]) == 1 else None))
                    for o in item["claims"]["objects"]]
            if len(objs) == 2:
                layout = world.TWO_OBJECT_LAYOUTS[int(rng.integers(2))]
                objs = [(c, s, z, p) for (c, s, z, _), p in zip(objs, layout)]
            scene = world.scene_from(item["claims"]["background"], *objs, rng=rng)
            group.append(np.asarray(render(scene, SIZE)))
        pictures.append(group)
    m = summarize(items, pictures)
    print(json.dumps({k: v for k, v in m.items() if k != "by_group"}, indent=1))
    worst = min(v for k, v in m.items() if k != "by_group" and v is not None)
    if worst < 0.97:
        raise SystemExit(f"self-test: the measurer reads rendered ground truth at {worst:.3f} < 0.97")
    print("self-test ok")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models/shapes")
    ap.add_argument("--unclip", type=Path, default=REPO / "target/release/unclip")
    ap.add_argument("--images", type=int, default=4, help="pictures per caption")
    ap.add_argument("--chunk", type=int, default=8, help="captions per unclip process")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    ap.add_argument("--work", type=Path, default=Path("/tmp/shapes-eval"), help="pictures (reused when present)")
    ap.add_argument("--quick", action="store_true", help="fewer configurations")
    ap.add_argument("--default-only", action="store_true", help="only the default configuration")
    ap.add_argument("--unclip-flags", default="",
                    help='added to every `unclip generate`, e.g. "--device openvino --precision bf16" to measure '
                         "the fast mode's fidelity (give it its own --work and --out)")
    ap.add_argument("--every", type=int, default=1, help="use every N-th caption (smoke runs)")
    ap.add_argument("--ablation-every", type=int, default=1,
                    help="the ablations and the sweep use every N-th of those captions (the default "
                         "configuration is also scored on that subset, for a like-for-like comparison)")
    ap.add_argument("--paired-with", type=Path, metavar="WORK",
                    help="another run's --work (same --images, --chunk, --every): compare the default "
                         "configuration's pictures one by one (all-attributes verdicts, McNemar's z, pixel "
                         "differences), e.g. the fast mode against the exact mode; writes OUT/shapes-eval-paired.json")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        self_test(args)
        return
    manifest = json.loads((args.model / "bundle.json").read_text())
    items = captions()[:: args.every]
    embedder = Embedder(args.model) if "image_encoder" in manifest else None
    started = time.time()
    results = []
    subset = items[:: args.ablation_every]

    def add(config: dict, its: list[dict], pictures: list, t0: float) -> None:
        metrics = summarize(its, pictures)
        metrics["diversity"] = diversity(embedder, pictures)
        metrics["captions"] = len(its)
        results.append({**{k: v for k, v in config.items() if k != "flags"}, "flags": config["flags"],
                        "metrics": metrics, "seconds": round(time.time() - t0, 1)})
        print(f"{config['name']:<24} all {pct(metrics['all_attributes'])} held-out "
              f"{pct(metrics['held_out_all_attributes'])} binding {pct(metrics['binding'])} "
              f"diversity {metrics['diversity']}  ({time.time() - t0:.0f} s)", flush=True)

    configs = configurations(float(manifest["decoder"]["default_guidance_scale"]), args.quick)
    for config in configs[:1] if args.default_only else configs:
        t0 = time.time()
        its = items if config["kind"] == "default" else subset
        pictures = generate(its, config, args, work_dir(args.work, config))
        add(config, its, pictures, t0)
        if config["kind"] == "default" and args.ablation_every > 1:
            add({**config, "name": f"{config['name']}, ablation captions", "kind": "default-subset"}, subset,
                pictures[:: args.ablation_every], t0)
        if config["kind"] == "default" and args.paired_with is not None:
            other = generate(items, config, args, work_dir(args.paired_with, config), make=False)
            stats = paired(items, pictures, other)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "shapes-eval-paired.json").write_text(json.dumps(stats, indent=2) + "\n")
            print(f"paired with {args.paired_with}: {stats}", flush=True)
    report(results, args, time.time() - started)


def paired(items: list[dict], a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> dict:
    """Two runs' pictures of the same captions and seeds, one by one: how often the all-attributes
    verdict agrees, the pixel differences (uint8 levels), and per kind of caption (one object, two
    objects) the discordant pairs with McNemar's z = (b − c) / √(b + c): b pictures right only in
    this run, c only in the other; |z| ≥ 1.96 is a difference at the 5% level. With common random
    numbers this separates two candidates that an unpaired comparison of accuracies (±1.3 points
    at --images 4) cannot."""
    same, means, peak = 0, [], 0
    discordant = {"one_object": [0, 0], "two_objects": [0, 0]}
    for item, xs, ys in zip(items, a, b):
        kind = "one_object" if len(item["claims"]["objects"]) == 1 else "two_objects"
        for x, y in zip(xs, ys):
            d = np.abs(x.astype(np.int16) - y.astype(np.int16))
            means.append(float(d.mean()))
            peak = max(peak, int(d.max()))
            here, there = score(item, measure(x))["all"], score(item, measure(y))["all"]
            same += here == there
            if here != there:
                discordant[kind][0 if here else 1] += 1
    return {"pictures": len(means), "same_all_attributes_verdict": same,
            "mean_abs_pixel_diff": round(float(np.mean(means)), 2),
            "median_per_picture_mean_abs_pixel_diff": round(float(np.median(means)), 2),
            "max_abs_pixel_diff": peak,
            **{kind: {"only_this_run": only_here, "only_other_run": only_there,
                      "mcnemar_z": round((only_here - only_there) / math.sqrt(only_here + only_there), 2)
                      if only_here + only_there else 0.0}
               for kind, (only_here, only_there) in discordant.items()}}


if __name__ == "__main__":
    main()
