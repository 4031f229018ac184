"""Records torch's antialiased bicubic resize and diffusers' tensor → uint8 conversion as the ground
truth of tests/image_io.rs.

    python export/image_io_reference.py [--out tests/fixtures/image_io]

What diffusers 0.42.1 does (pipelines/deprecated/unclip/pipeline_unclip.py, `UnCLIPPipeline.__call__`):
- before super-resolution: `F.interpolate(image_small, size=[h, w], mode="bicubic",
  align_corners=False, antialias=True)` — on CPU that is ATen's `_upsample_bicubic2d_aa`
  (aten/src/ATen/native/cpu/UpSampleKernel.cpp, `upsample_bicubic2d_aa_kernel_impl` →
  `separable_upsample_generic_Nd_kernel_impl`);
- at the end: `image * 0.5 + 0.5`, `clamp(0, 1)`, then `numpy_to_pil` (diffusers/utils/pil_utils.py):
  `(images * 255).round().astype("uint8")`.

Writes into `<out>` (~2.95 MB, deterministic: a rerun writes the same bytes):
- `manifest.json`: torch version, the ATen CPU capability the outputs were computed with, and per
  resize case its input/output file names and shapes;
- `<case>_input.npy`, `<case>_torch.npy`: float32 NCHW input and torch's output;
- `to_rgb8_input.npy` (float32 NCHW) and `to_rgb8_expected.npy` (uint8 NHWC): values on and around
  every rounding boundary k + 0.5 of `x * 255`, plus out-of-range and special values.

The resize outputs depend on how ATen was compiled: its AVX2/AVX512 kernels fuse the cubic filter's
polynomial and the scalar tail of the `acc += t * w` loop into FMA instructions, the DEFAULT (SSE)
kernel fuses nothing, and the two differ by up to 2.5e-6. unclip follows the AVX2/AVX512 rounding
(src/image_io.rs, `weighted_sum`), so this script refuses to run with the DEFAULT capability
(ATEN_CPU_CAPABILITY=default, or a CPU without AVX2). The strong downsamples (up to 55 taps per
output) pin down which taps of the accumulation are fused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO  # noqa: E402

from diffusers.utils.pil_utils import numpy_to_pil  # noqa: E402

# (name, input NCHW shape, output (h, w), value distribution, seed). `decoder` values are what the
# decoder hands to the first upsampler: clamped to [-1, 1], with many saturated pixels; `uniform`
# values are general ones in [-1.5, 1.5].
RESIZE_CASES = [
    ("up4_b2", (2, 3, 64, 64), (256, 256), "uniform", 1),  # decoder 64² → super-res 256², batch 2
    ("up4_16", (1, 3, 16, 16), (64, 64), "decoder", 2),  # same ×4 factor, decoder-like values
    ("up4_1024_rows", (1, 1, 3, 256), (3, 1024), "uniform", 3),  # 256 → 1024 weights, width only
    ("up4_1024_cols", (1, 1, 256, 3), (1024, 3), "uniform", 4),  # 256 → 1024 weights, height only
    ("down_300x200", (1, 3, 300, 200), (224, 149), "uniform", 5),  # downsampling (wider support)
    ("up_nonsquare", (1, 3, 21, 32), (49, 80), "uniform", 6),  # ×2.33 high, ×2.5 wide
    ("mixed_up_down", (1, 2, 30, 50), (45, 20), "uniform", 7),  # height up, width down
    ("down_odd", (1, 3, 7, 9), (3, 4), "uniform", 8),  # tiny, borders dominate
    ("down_13x_rows", (1, 2, 3, 300), (3, 23), "uniform", 10),  # up to 55 taps per output, width
    ("down_11x_cols", (1, 2, 260, 4), (23, 4), "uniform", 11),  # up to 47 taps per output, height
]


def values(shape: tuple[int, ...], kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.uniform(-1.5, 1.5, size=shape).astype(np.float32)
    return np.clip(rng.normal(0.0, 0.8, size=shape), -1.0, 1.0).astype(np.float32)


def torch_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    y = F.interpolate(torch.from_numpy(x), size=list(size), mode="bicubic", align_corners=False, antialias=True)
    return y.numpy()


def rounding_boundary_inputs() -> np.ndarray:
    """Decoder-space values x whose `(x * 0.5 + 0.5) * 255` lands on or next to k + 0.5 for every
    k in 0..255 (where half-to-even and half-away-from-zero disagree), plus range ends."""
    xs: list[np.float32] = []
    for k in range(256):
        centre = np.float32(2.0 * (k + 0.5) / 255.0 - 1.0)
        x = centre
        for _ in range(4):
            x = np.nextafter(x, np.float32(-np.inf))
        for _ in range(9):
            xs.append(x)
            x = np.nextafter(x, np.float32(np.inf))
    specials = [-1.0, 1.0, 0.0, -0.0, -1.5, 1.5, -100.0, 100.0, 1e-30, -1e-30, 0.5, -0.5,
                np.float32(1.0) - np.float32(2 ** -24), np.float32(-1.0) + np.float32(2 ** -23),
                np.inf, -np.inf]
    xs.extend(np.float32(s) for s in specials)
    arr = np.array(xs, dtype=np.float32)
    # (N, 3, H, W) with N·3·H·W ≥ len(arr); pad with uniform values.
    n, h, w = 2, 20, 20
    pad = values((n * 3 * h * w - arr.size,), "uniform", 9)
    return np.concatenate([arr, pad]).reshape(n, 3, h, w)


def diffusers_to_uint8(x: np.ndarray) -> np.ndarray:
    """`UnCLIPPipeline.__call__`'s post-processing, line for line, then the PIL images as arrays."""
    image = torch.from_numpy(x)
    image = image * 0.5 + 0.5
    image = image.clamp(0, 1)
    image = image.cpu().permute(0, 2, 3, 1).float().numpy()
    return np.stack([np.asarray(im) for im in numpy_to_pil(image)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "image_io")
    args = parser.parse_args()

    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "DEFAULT":
        raise SystemExit("ATen runs its DEFAULT (non-FMA) kernels here; unclip matches the AVX2/AVX512 "
                         "ones. Unset ATEN_CPU_CAPABILITY or use a CPU with AVX2.")
    args.out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {
        "torch": torch.__version__,
        "aten_cpu_capability": capability,
        "op": "F.interpolate(x, size=(h, w), mode='bicubic', align_corners=False, antialias=True)",
        "resize": [],
    }
    for name, shape, size, kind, seed in RESIZE_CASES:
        x = values(shape, kind, seed)
        y = torch_resize(x, size)
        np.save(args.out / f"{name}_input.npy", x)
        np.save(args.out / f"{name}_torch.npy", y)
        manifest["resize"].append({"name": name, "input": f"{name}_input.npy", "output": f"{name}_torch.npy",
                                   "input_shape": list(shape), "output_shape": list(y.shape), "values": kind})
        if name == "up4_b2":
            # A batch of one must give the first image of the batch of two, bit for bit: the Rust
            # test checks (1, 3, 64, 64) → 256 against this slice instead of a second 0.8 MB file.
            single = torch_resize(x[:1].copy(), size)
            assert np.array_equal(single, y[:1]), "torch's resize depends on the batch"

    x = rounding_boundary_inputs()
    expected = diffusers_to_uint8(x)
    np.save(args.out / "to_rgb8_input.npy", x)
    np.save(args.out / "to_rgb8_expected.npy", expected)
    manifest["to_rgb8"] = {"input": "to_rgb8_input.npy", "expected": "to_rgb8_expected.npy",
                           "input_shape": list(x.shape), "expected_shape": list(expected.shape)}

    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({total / 1e6:.2f} MB, ATen capability {capability})")


if __name__ == "__main__":
    main()
