"""Does a CLIP run see shape? Three measurements, in a minute, of what the decoder can be given.

    python export/shapes/probe_clip.py [RUN_DIR] [--n 1600] [--threads 1]

1. Zero-shot (train_clip.ZeroShot): one-object scenes classified among every
   "a {c} {s} on a {b} background", accuracy per attribute.
2. Linear probe of the image tower: a 4-way shape classifier (logistic regression, LBFGS) fitted
   on 3/4 of `n` one-object scenes and scored on the rest, on the image embedding (what the prior
   predicts and the decoder gets) and on the patch tokens (mean and max over positions, what the
   tower computed before pooling). Below ~100% on the patch tokens, the tower has not learned the
   attribute at all; high on the tokens but low on the embedding, the projection drops it.
3. The text tower: cosine similarity between the shape words' token states in
   "a red {shape} on a blue background" (the decoder's cross-attention input) and between the
   pooled text embeddings. A text tower trained against an image tower blind to a distinction
   learns to drop it too (the shipped CLIP: circle ≈ square 0.996, triangle ≈ star 0.996), so the
   decoder cannot read that attribute from the caption either.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import training  # noqa: E402

training.ensure_import_path()
import models  # noqa: E402
import world  # noqa: E402
from clip_model import ClipTowers, clip_pixels  # noqa: E402
from render import render  # noqa: E402
from train_clip import ZeroShot  # noqa: E402


def linear_probe(x: torch.Tensor, y: torch.Tensor, train: int) -> tuple[float, torch.Tensor]:
    """Held-out accuracy and confusion matrix (rows: truth) of a logistic regression on `x`."""
    x = (x - x[:train].mean(0)) / (x[:train].std(0) + 1e-6)
    w = torch.zeros(x.shape[1], len(world.SHAPES), requires_grad=True)
    b = torch.zeros(len(world.SHAPES), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x[:train] @ w + b, y[:train]) + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (x[train:] @ w + b).argmax(1)
    confusion = torch.zeros(len(world.SHAPES), len(world.SHAPES), dtype=torch.long)
    for t, p in zip(y[train:].tolist(), pred.tolist()):
        confusion[t, p] += 1
    return (pred == y[train:]).float().mean().item(), confusion


@torch.no_grad()
def image_features(clip: ClipTowers, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    scenes = []
    while len(scenes) < n:
        scene = world.sample_scene(rng)
        if len(scene["objects"]) == 1:
            scenes.append(scene)
    labels = torch.tensor([world.SHAPES.index(s["objects"][0]["shape"]) for s in scenes])
    embeds, tokens = [], []
    for i in range(0, n, 100):
        out = clip.vision(clip_pixels([render(s, 224) for s in scenes[i: i + 100]]))
        patches = out.last_hidden_state[:, 1:]
        embeds.append(out.image_embeds)
        tokens.append(torch.cat([patches.mean(1), patches.amax(1)], dim=1))
    return torch.cat(embeds), torch.cat(tokens), labels


@torch.no_grad()
def text_similarity(clip: ClipTowers) -> dict:
    captions = [f"a red {s} on a blue background" for s in world.SHAPES]
    pooled, states, _ = clip.encode_text(captions, full_length=False)
    ids = clip.tokenizer(captions).input_ids
    # the shape word is the one token where the captions differ
    position = next(k for k in range(len(ids[0])) if len({i[k] for i in ids}) > 1)
    word = F.normalize(states[:, position], dim=-1)
    pooled = F.normalize(pooled, dim=-1)
    out = {}
    for a in range(len(world.SHAPES)):
        for b in range(a + 1, len(world.SHAPES)):
            out[f"{world.SHAPES[a]}~{world.SHAPES[b]}"] = (round((word[a] @ word[b]).item(), 3),
                                                          round((pooled[a] @ pooled[b]).item(), 3))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", type=Path, default=training.RUNS / "clip")
    ap.add_argument("--n", type=int, default=1600, help="one-object scenes for the linear probe")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clip = ClipTowers(args.run)
    zs = ZeroShot(models.tokenizer())(clip.text, clip.vision)
    print(f"{args.run.name} step {clip.step}")
    print("zero-shot: " + " ".join(f"{k[3:]} {v:.3f}" for k, v in zs.items()))
    embeds, tokens, labels = image_features(clip, args.n)
    train = args.n * 3 // 4
    for name, x in (("image embedding", embeds), ("patch tokens", tokens)):
        acc, confusion = linear_probe(x, labels, train)
        rows = ", ".join(f"{s}: {confusion[k].tolist()}" for k, s in enumerate(world.SHAPES))
        print(f"shape linear probe on the {name}: {acc:.3f} (confusion, rows = truth {world.SHAPES}: {rows})")
    print("text tower, cosine of the shape word's token states / of the pooled embeddings: "
          + ", ".join(f"{k} {v[0]:.3f}/{v[1]:.3f}" for k, v in text_similarity(clip).items()))


if __name__ == "__main__":
    main()
