"""Vectors of PyTorch's CPU generator for the bit-exact Rust port (docs/architecture.md,
"The torch-compatible RNG"; src/noise/torch.rs).

    python export/torch_rng_vectors.py [OUT_DIR]   # default tests/fixtures/rng

For each seed: one generator, calls of the listed sizes in order (so odd sizes < 16 exercise the
cached second Box–Muller sample between calls); each draw is saved as float32 `.npy`, and
`manifest.json` lists seeds, sizes and files. Deterministic.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO  # noqa: E402

SEEDS = [0, 1, 42, 2**32 + 5, 123456789]
SIZES = [1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 768, 1000, 2 * 768, 3 * 64 * 64]
# Calls on one generator mixing sizes < 16 (cached sample) and ≥ 16 (vector path), and shapes.
SEQUENCE = [[3], [1], [17], [768], [5], [2, 32], [1], [1, 3, 4, 4], [15], [7]]
BIG = [3, 256, 256]  # one super-resolution draw, for one seed only (fixture budget)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "tests" / "fixtures" / "rng"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.npy"):
        old.unlink()
    manifest = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "runs": []}

    def run(name: str, seed: int, shapes: list[list[int]]) -> None:
        g = torch.Generator("cpu").manual_seed(seed)
        files = []
        for k, shape in enumerate(shapes):
            x = torch.randn(shape, generator=g, dtype=torch.float32)
            f = f"{name}_{k:02}.npy"
            np.save(out / f, x.numpy())
            files.append({"shape": shape, "file": f})
        manifest["runs"].append({"name": name, "seed": seed, "draws": files})

    for seed in SEEDS:
        run(f"sizes_s{seed}", seed, [[n] for n in SIZES])
        run(f"sequence_s{seed}", seed, SEQUENCE)
    run("big_s42", 42, [BIG])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
