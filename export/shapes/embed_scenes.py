"""Renders a fixed set of training scenes and embeds them with the trained CLIP image tower, once,
for the prior and the decoder (computed once, not at every training step).

    python export/shapes/embed_scenes.py [--clip-run export/shapes/runs/clip] [--n 60000]
                                         [--seed 1] [--threads N] [--out export/shapes/runs/scenes.pt]

The file holds the scenes (world.py dicts, no held-out triple), their image embeddings
(CLIPVisionModelWithProjection `image_embeds` of the 224 px render, unnormalized — what the
variation pipeline feeds the decoder) and the CLIP run's step, so a stale dataset is detected.
Captions are not stored: the training scripts draw a fresh phrasing per use.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import training  # noqa: E402

training.ensure_import_path()
import world  # noqa: E402
from clip_model import ClipTowers  # noqa: E402
from render import render  # noqa: E402

DEFAULT_OUT = training.RUNS / "scenes.pt"


def load_scenes(path: Path, clip: ClipTowers) -> dict:
    if not path.exists():
        raise SystemExit(f"no {path}: run export/shapes/embed_scenes.py first")
    data = torch.load(path, map_location="cpu", weights_only=False)
    if data["clip_step"] != clip.step or data["clip_config"] != clip.config:
        raise SystemExit(f"{path} was embedded with another CLIP checkpoint (step {data['clip_step']}, "
                         f"now {clip.step}): run embed_scenes.py again")
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip-run", type=Path, default=training.RUNS / "clip")
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clip = ClipTowers(args.clip_run)
    rng = np.random.default_rng(args.seed)
    scenes = [world.sample_scene(rng) for _ in range(args.n)]
    started = time.time()
    chunks = []
    for i in range(0, args.n, args.batch):
        chunks.append(clip.encode_images([render(s, 224) for s in scenes[i : i + args.batch]]))
        done = min(args.n, i + args.batch)
        if (i // args.batch) % 20 == 0 or done == args.n:
            print(f"{done}/{args.n} scenes, {time.time() - started:.0f} s", flush=True)
    embeds = torch.cat(chunks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    torch.save({"scenes": scenes, "image_embeds": embeds, "clip_step": clip.step, "clip_config": clip.config,
                "seed": args.seed}, tmp)
    tmp.replace(args.out)
    print(f"wrote {args.out}: {args.n} scenes, embeddings {tuple(embeds.shape)}, "
          f"norm mean {embeds.norm(dim=-1).mean():.3f}, {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
