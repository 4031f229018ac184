"""Records what diffusers + transformers make of image files, as the ground truth of tests/vision.rs.

    python export/vision_reference.py [--out tests/fixtures/vision]

The path mirrored (src/vision/): `diffusers.utils.load_image(path)` (EXIF transpose, then
`convert("RGB")`, which drops alpha) → `CLIPImageProcessorPil` configured by
tests/fixtures/tiny-karlo/feature_extractor/preprocessor_config.json (resize shortest edge 224 with
Pillow BICUBIC, center crop 224, rescale 1/255, normalize with CLIP's mean/std). The Pillow class is
imported by name: `CLIPImageProcessor` would pick the torchvision backend if torchvision were
installed, and that one differs by up to 0.03.

Writes into `<out>` (deterministic: a rerun writes the same bytes):
- synthetic source images in every format unclip reads (`src_*`): PNG RGB / gray 8-bit / RGB 16-bit /
  gray 16-bit / RGBA, lossy WebP, JPEGs (EXIF orientation 6; a 4:2:0 photo-like one), a tall, a
  small (upscaled) and an exactly 224×224 image;
- per case `<case>.crop.webp`: the uint8 224×224 RGB image transformers holds after resize + center
  crop, as lossless WebP (it proves the resize bit for bit at a fifth of an .npy's size, and 35% less
  than PNG; the script checks the round trip);
- per case `<case>.rows.npy`: float32 `pixel_values[0, :, ROWS, :]`, and for the cases marked `full`
  the whole float32 `<case>.pixel_values.npy` (1, 3, 224, 224);
- `normalization_table.npy`: float32 (3, 256), the pixel value transformers gives each 8-bit value of
  each channel (rescale in float64 → float32, then `(x - mean) / std` in float32); every case's
  pixel_values are asserted here to equal `table[c, crop]` exactly, so crop + table prove all values;
- `orient_<n>.jpg` / `orient_<n>.png`: tiny JPEGs with EXIF orientation n = 1…8 and Pillow's
  `ImageOps.exif_transpose` of each (lossless);
- `manifest.json`: versions, the processor settings, and per case its source, how it is loaded, its
  processor settings, reference files, resized size and notes.

Known gaps, measured here and recorded in the manifest:
- JPEG: Pillow decodes with libjpeg-turbo, unclip with zune-jpeg; on 4:2:0 color photos they differ by
  a few levels. `src_exif6.jpg` is grayscale with 8×8-constant blocks, which both decode identically;
  `photo_420` (a color 4:2:0 JPEG) is checked with a looser tolerance in tests/vision.rs.
- 16-bit grayscale PNG: Pillow opens it as `I;16` and `convert("RGB")` clips values > 255 to white
  (Pillow #2574, #3011). unclip keeps the high byte, as Pillow does for 16-bit RGB/RGBA/LA PNGs; the
  `gray16` reference is therefore made from `(v >> 8)` as an 8-bit gray image, and the manifest
  records how far diffusers' own (clipped) result is.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, features

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, TINY_KARLO  # noqa: E402

import diffusers  # noqa: E402
import PIL  # noqa: E402
import transformers  # noqa: E402
from diffusers.utils import load_image  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

ROWS = [0, 111, 223]

# Resampling names as bundle.json writes them ↔ PIL's enum values.
RESAMPLE = {"bicubic": 3, "bilinear": 2}


# ---- deterministic synthetic content ---------------------------------------------------------

def pattern(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w, 3) uint8 content that exercises a resampling filter and still compresses well:
    smooth color fields, saturated hard-edged shapes (the cubic's negative lobes overshoot and get
    clipped), a one-pixel checkerboard (worst-case aliasing) and a patch of hashed noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    f = 1.0 + seed * 0.37
    img = np.stack([
        128 + 90 * np.sin(x / (13.0 * f) + y / 29.0),
        128 + 90 * np.cos(x / 31.0 - y / (11.0 * f)),
        128 + 90 * np.sin((x + 2 * y) / (47.0 * f)),
    ], -1)
    img[(x > w * 0.15) & (x < w * 0.35) & (y > h * 0.2) & (y < h * 0.5)] = (255, 0, 0)
    img[(x - w * 0.7) ** 2 + (y - h * 0.3) ** 2 < (min(h, w) * 0.15) ** 2] = (0, 0, 255)
    img[(y > h * 0.75) & (y < h * 0.8)] = 255
    checker = (x > w * 0.55) & (y > h * 0.55) & (x < w * 0.8) & (y < h * 0.72)
    img[checker] = np.where(((x + y) % 2 == 0)[checker, None], 250.0, 5.0)
    noise = (x < w * 0.08) & (y > h * 0.65)
    hashed = (((x * 73856093).astype(np.int64) ^ (y * 19349663).astype(np.int64) ^ (seed * 83492791)) % 251)
    img[noise] = np.stack([hashed, (hashed * 7) % 256, (hashed * 13) % 256], -1)[noise]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """Photo-like color content: smooth fields with mild noise (what JPEG chroma subsampling is for)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([
        128 + 100 * np.sin(x / 37.0 + y / 53.0),
        128 + 100 * np.cos(x / 31.0 - y / 29.0),
        128 + 90 * np.sin((x + y) / 71.0),
    ], -1)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def write_png(path: Path, arr: np.ndarray, bit_depth: int) -> None:
    """A plain PNG writer: Pillow cannot write 16-bit RGB. Color type from the channel count."""
    arr = arr if arr.ndim == 3 else arr[..., None]
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = [np.frombuffer(arr[y].astype(dtype).tobytes(), np.uint8) for y in range(h)]
    # filter type 2 ("Up": each byte minus the byte above) so smooth 16-bit content compresses
    raw = b"".join(b"\x02" + (row - prev).tobytes() for row, prev in zip(rows, [np.zeros_like(rows[0])] + rows))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9))
                     + chunk(b"IEND", b""))


def save_png(path: Path, img: Image.Image) -> None:
    img.save(path, format="PNG", optimize=True)


def jpeg_with_orientation(path: Path, gray: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(gray, "L").save(path, format="JPEG", quality=100, exif=exif.tobytes())


def block_gray(h: int, w: int, seed: int) -> np.ndarray:
    """Gray image constant on 8×8 blocks: its JPEG has DC-only blocks, which every decoder
    reconstructs to the same pixels (no chroma, no IDCT rounding)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (h // 8, w // 8)).astype(np.uint8)
    return np.kron(blocks, np.ones((8, 8), np.uint8))


def make_sources(out: Path) -> dict[str, dict]:
    """Writes the source files; returns name → {file, mode, note}."""
    src = {}

    def add(name, file, note=""):
        src[name] = {"file": file, "note": note}

    save_png(out / "src_rgb_300x200.png", Image.fromarray(pattern(200, 300, 0)))
    add("rgb_300x200", "src_rgb_300x200.png", "PNG RGB 8-bit, landscape (resized to 336×224)")

    save_png(out / "src_gray_257x181.png", Image.fromarray(pattern(181, 257, 1)[..., 1], "L"))
    add("gray_257x181", "src_gray_257x181.png", "PNG gray 8-bit, odd sizes")

    # low bytes vary (a ramp): Pillow must drop them, and they must not round the high byte up
    rgb16 = pattern(330, 220, 2).astype(np.uint16) * 256 + (np.arange(220, dtype=np.uint16)[None, :, None] + 20)
    write_png(out / "src_rgb16_220x330.png", rgb16, 16)
    add("rgb16_220x330", "src_rgb16_220x330.png", "PNG RGB 16-bit: Pillow keeps the high byte")

    gray16 = pattern(150, 190, 3)[..., 0].astype(np.uint16) * 256 + 200
    write_png(out / "src_gray16_190x150.png", gray16, 16)
    add("gray16_190x150", "src_gray16_190x150.png",
        "PNG gray 16-bit: Pillow clips values > 255 to white; unclip keeps the high byte")

    rgba = np.concatenate([pattern(240, 260, 4), (np.arange(260)[None, :, None] * 255 // 259).repeat(240, 0).astype(np.uint8)], -1)
    rgba[:40, :, 3] = 0  # fully transparent band: the stored color survives convert("RGB")
    save_png(out / "src_rgba_260x240.png", Image.fromarray(rgba, "RGBA"))
    add("rgba_260x240", "src_rgba_260x240.png", "PNG RGBA with an alpha ramp")

    jpeg_with_orientation(out / "src_exif6.jpg", block_gray(160, 240, 5), 6)
    add("exif6", "src_exif6.jpg", "JPEG gray 240×160 stored, EXIF orientation 6 (displayed 160×240)")

    Image.fromarray(pattern(210, 280, 6)).save(out / "src_lossy.webp", format="WEBP", quality=80, method=6)
    add("webp", "src_lossy.webp", "lossy WebP 280×210")

    save_png(out / "src_tall_160x480.png", Image.fromarray(pattern(480, 160, 7)))
    add("tall_160x480", "src_tall_160x480.png", "PNG portrait (resized to 224×672)")

    save_png(out / "src_tall_230x560.png", Image.fromarray(pattern(560, 230, 11)))
    add("tall_230x560", "src_tall_230x560.png",
        "PNG portrait downscaled to 224×545: Pillow 13 runs the vertical pass first here")

    save_png(out / "src_small_50x40.png", Image.fromarray(pattern(40, 50, 8)))
    add("small_50x40", "src_small_50x40.png", "PNG upscaled to 280×224")

    save_png(out / "src_square_224.png", Image.fromarray(pattern(224, 224, 9)))
    add("square_224", "src_square_224.png", "PNG exactly 224×224: no resize, no crop")

    Image.fromarray(photo(240, 320, 10)).save(out / "src_photo_420.jpg", format="JPEG", quality=85)
    add("photo_420", "src_photo_420.jpg", "JPEG color 4:2:0: decoders differ (libjpeg-turbo vs zune-jpeg)")
    return src


# ---- the reference ---------------------------------------------------------------------------

def processor(overrides: dict) -> CLIPImageProcessorPil:
    proc = CLIPImageProcessorPil.from_pretrained(TINY_KARLO / "feature_extractor", **overrides)
    assert proc.backend == "pil"
    return proc


def settings(proc: CLIPImageProcessorPil) -> dict:
    """The processor's settings in bundle.json's `image_processor` form."""
    name = {v: k for k, v in RESAMPLE.items()}[int(proc.resample)]
    return {
        "shortest_edge": proc.size["shortest_edge"], "crop_size": proc.crop_size["height"],
        "resample": name, "rescale_factor": proc.rescale_factor,
        "mean": list(proc.image_mean), "std": list(proc.image_std),
    }


def table_image(crop: int) -> np.ndarray:
    """A crop×crop RGB image holding every 8-bit value in every channel (tests/vision.rs builds the
    same): value = (y·crop + x + 85·c) mod 256."""
    y, x = np.mgrid[0:crop, 0:crop]
    return np.stack([(y * crop + x + 85 * c) % 256 for c in range(3)], -1).astype(np.uint8)


def normalization_table(proc: CLIPImageProcessorPil) -> np.ndarray:
    crop = proc.crop_size["height"]
    img = table_image(crop)
    pv = proc(images=Image.fromarray(img), return_tensors="np").pixel_values[0]
    table = np.zeros((3, 256), np.float32)
    for c in range(3):
        table[c, img[..., c].ravel()] = pv[c].ravel()
        # every occurrence of a value maps to the same float: the mapping is elementwise
        assert (table[c, img[..., c]] == pv[c]).all()
    return table


def run_case(proc, img: Image.Image):
    pv = proc(images=img, return_tensors="np").pixel_values
    crop = proc(images=img, do_rescale=False, do_normalize=False, return_tensors="np").pixel_values
    assert pv.dtype == np.float32 and crop.dtype == np.uint8, (pv.dtype, crop.dtype)
    return pv, crop[0].transpose(1, 2, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "vision")
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file():
            old.unlink()

    assert features.check("webp"), "Pillow without WebP support"
    sources = make_sources(out)
    base = processor({})
    table = normalization_table(base)
    np.save(out / "normalization_table.npy", table)

    def rgb_file(name):  # diffusers' load_image
        return load_image(str(out / sources[name]["file"]))

    def gray16_high_byte(name):
        arr = np.array(Image.open(out / sources[name]["file"]))
        assert arr.dtype == np.uint16 or arr.max() > 255
        return Image.fromarray((arr.astype(np.uint32) >> 8).astype(np.uint8), "L").convert("RGB")

    def rgba_memory(name):  # the PIL RGBA image handed to the processor directly
        img = Image.open(out / sources[name]["file"])
        img.load()
        assert img.mode == "RGBA"
        return img

    # case name → (source, loader, how unclip loads it, processor overrides, full pixel_values?)
    cases = [
        ("rgb_300x200", "rgb_300x200", rgb_file, "file", {}, True),
        ("gray_257x181", "gray_257x181", rgb_file, "file", {}, False),
        ("rgb16_220x330", "rgb16_220x330", rgb_file, "file", {}, False),
        ("gray16_190x150", "gray16_190x150", gray16_high_byte, "file", {}, False),
        ("rgba_260x240", "rgba_260x240", rgb_file, "file", {}, False),
        ("rgba_260x240_memory", "rgba_260x240", rgba_memory, "memory", {}, False),
        ("exif6", "exif6", rgb_file, "file", {}, False),
        ("webp", "webp", rgb_file, "file", {}, False),
        ("tall_160x480", "tall_160x480", rgb_file, "file", {}, False),
        ("tall_230x560", "tall_230x560", rgb_file, "file", {}, False),
        ("small_50x40", "small_50x40", rgb_file, "file", {}, False),
        ("square_224", "square_224", rgb_file, "file", {}, False),
        ("photo_420", "photo_420", rgb_file, "file", {}, False),
        ("rgb_300x200_bilinear", "rgb_300x200", rgb_file, "file", {"resample": 2}, False),
        ("small_50x40_pad", "small_50x40", rgb_file, "file", {"size": {"shortest_edge": 200}}, False),
    ]
    manifest_cases = []
    for case, source, loader, mode, overrides, full in cases:
        proc = processor(overrides)
        img = loader(source)
        pv, crop = run_case(proc, img)
        if not overrides:
            assert (table[np.arange(3)[:, None, None], crop.transpose(2, 0, 1)] == pv[0]).all(), case
        crop_file = f"{case}.crop.webp"
        if img.size == (224, 224) and (np.array(img.convert("RGB")) == crop).all():
            crop_file = sources[source]["file"]  # no resize, no crop: the source is the reference
        else:
            Image.fromarray(crop).save(out / crop_file, format="WEBP", lossless=True, quality=100,
                                       method=6, exact=True)
            assert (np.array(Image.open(out / crop_file).convert("RGB")) == crop).all(), case
        np.save(out / f"{case}.rows.npy", np.ascontiguousarray(pv[0][:, ROWS, :]))
        entry = {
            "name": case, "source": sources[source]["file"], "load": mode,
            "processor": settings(proc), "input_size": list(img.size),
            "crop": crop_file, "rows": f"{case}.rows.npy", "row_indices": ROWS,
            "note": sources[source]["note"],
        }
        if full:
            np.save(out / f"{case}.pixel_values.npy", pv)
            entry["pixel_values"] = f"{case}.pixel_values.npy"
        if case == "gray16_190x150":
            clipped, _ = run_case(proc, rgb_file(source))
            entry["diffusers_clipped_max_abs_diff"] = float(np.abs(clipped - pv).max())
        manifest_cases.append(entry)
        print(f"{case}: {img.size} → crop {crop.shape}", file=sys.stderr)

    orientations = []
    for n in range(1, 9):
        jpeg_with_orientation(out / f"orient_{n}.jpg", block_gray(16, 24, 20 + n), n)
        shown = ImageOps.exif_transpose(Image.open(out / f"orient_{n}.jpg"))
        save_png(out / f"orient_{n}.png", shown)
        orientations.append({"orientation": n, "jpeg": f"orient_{n}.jpg", "expected": f"orient_{n}.png",
                             "size": list(shown.size)})

    manifest = {
        "versions": {"transformers": transformers.__version__, "diffusers": diffusers.__version__,
                     "pillow": PIL.__version__, "numpy": np.__version__},
        "processor": settings(base),
        "normalization_table": "normalization_table.npy",
        "cases": manifest_cases,
        "orientations": orientations,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} files, {total / 1e6:.2f} MB, to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
