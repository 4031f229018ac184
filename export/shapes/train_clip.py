"""Trains the shapes CLIP: CLIPTextModelWithProjection + CLIPVisionModelWithProjection (224 px),
contrastive loss (Radford et al. 2021) on rendered scenes and their captions.

    python export/shapes/train_clip.py [--config clip] [--threads N] [--max-steps N] [--max-minutes M]
                                       [--init-from RUN]

Batches are built for attribute binding: a `hard_negative_fraction` of the scenes come with a
minimal edit of themselves (world.perturb: one color, shape, background, size or position changed,
or two objects' colors swapped), so a bag-of-words embedding cannot separate them. Targets are
soft: caption j is a positive for image i whenever it is true of scene i (world.matches — e.g.
"a red circle on a blue background" is true of every red circle on blue, whatever its size), not
only on the diagonal. Images are rendered at 224; some are degraded (rendered at 64 and upsampled,
or blurred) so the image tower also embeds the decoder's soft outputs faithfully (variations).
Every `eval_every` steps: zero-shot classification of held-out and seen one-object scenes among
all (color, shape, background) captions.
"""

from __future__ import annotations

import math
import os
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
from clip_model import clip_pixels  # noqa: E402
from render import render  # noqa: E402


def augment(scene: dict, rng: np.random.Generator, train: dict) -> Image.Image:
    u = rng.random()
    if u < train["lowres_prob"]:
        return render(scene, 64).resize((224, 224), Image.BICUBIC)
    image = render(scene, 224, supersample=2)
    if u < train["lowres_prob"] + train["blur_prob"]:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))
    return image


def batch_scenes(rng: np.random.Generator, size: int, hard_fraction: float,
                 kinds=world.PERTURB_KINDS) -> list[dict]:
    scenes: list[dict] = []
    while len(scenes) < size:
        scene = world.sample_scene(rng)
        scenes.append(scene)
        if len(scenes) < size and rng.random() < hard_fraction:
            scenes.append(world.perturb(scene, rng, kinds=kinds))
    return scenes


def token_batch(tokenizer, captions: list[str]) -> torch.Tensor:
    """Ids padded with "!" to the longest caption (equivalent to padding to 77: see clip_model)."""
    ids = tokenizer(captions, truncation=True, max_length=models.MAX_LENGTH).input_ids
    out = torch.full((len(ids), max(len(i) for i in ids)), models.PAD, dtype=torch.long)
    for k, i in enumerate(ids):
        out[k, : len(i)] = torch.tensor(i)
    return out


class ZeroShot:
    """Accuracy of classifying one-object scenes among every "a {c} {s} on a {b} background"."""

    def __init__(self, tokenizer, n: int = 96, seed: int = 1234):
        rng = np.random.default_rng(seed)
        self.triples = [(c, s, b) for c in world.COLORS for s in world.SHAPES for b in world.COLORS if b != c]
        self.captions = [f"a {c} {s} on a {b} background" for c, s, b in self.triples]
        self.ids = token_batch(tokenizer, self.captions)
        self.sets = {}
        for split in ("held_out", "train"):
            scenes = []
            while len(scenes) < n:
                s = world.sample_scene(rng, split)
                if len(s["objects"]) == 1:
                    scenes.append(s)
            truth = [self.triples.index((s["objects"][0]["color"], s["objects"][0]["shape"], s["background"]))
                     for s in scenes]
            self.sets[split] = (clip_pixels([render(s, 224) for s in scenes]), torch.tensor(truth))

    @torch.no_grad()
    def __call__(self, text_model, vision_model) -> dict:
        text = F.normalize(text_model(self.ids).text_embeds, dim=-1)
        out = {}
        for split, (pixels, truth) in self.sets.items():
            pred = (F.normalize(vision_model(pixels).image_embeds, dim=-1) @ text.T).argmax(-1)
            name = "heldout" if split == "held_out" else "seen"
            out[f"zs_{name}"] = (pred == truth).float().mean().item()
            for k, attr in enumerate(("color", "shape", "bg")):
                hit = [self.triples[p][k] == self.triples[t][k] for p, t in zip(pred.tolist(), truth.tolist())]
                out[f"zs_{name}_{attr}"] = float(np.mean(hit))
        return out


def main() -> None:
    ap = training.arguments(__doc__, "clip")
    ap.add_argument("--init-from", type=Path,
                    help="another CLIP run (e.g. the one unpack_clip.py re-creates from the shipped checkpoint) "
                         "whose towers and temperature start this run, with a fresh optimizer")
    args = ap.parse_args()
    config = models.load_config(args.config)
    run = training.Run(args, config)
    train, seed = config["train"], config["seed"]
    torch.manual_seed(seed)
    tokenizer = models.tokenizer()
    text_model = models.text_encoder(config).train()
    vision_model = models.image_encoder(config).train()
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = list(text_model.parameters()) + list(vision_model.parameters()) + [logit_scale]
    opt = training.optimizer(params, train)
    start = 0
    if (state := run.load()) is None and args.init_from is not None:
        init = training.require_run(args.init_from, "--init-from")
        text_model.load_state_dict(init["text_encoder"])
        vision_model.load_state_dict(init["image_encoder"])
        with torch.no_grad():
            logit_scale.copy_(init["logit_scale"])
        run.log(f"initialized from {args.init_from} at its step {init['step']} (fresh optimizer)")
    elif state is not None:
        text_model.load_state_dict(state["text_encoder"])
        vision_model.load_state_dict(state["image_encoder"])
        with torch.no_grad():
            logit_scale.copy_(state["logit_scale"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        if state.get("unpacked") and start < run.max_steps:
            raise SystemExit(f"{run.dir} was unpacked from {state['unpacked']} (unpack_clip.py): training it further "
                             "would change the embeddings its decoder was trained on; use another --run-dir")
    zero_shot = ZeroShot(tokenizer)

    def step_fn(step: int) -> dict:
        rng, _ = training.generators(seed, step)
        scenes = batch_scenes(rng, train["batch_size"], train["hard_negative_fraction"],
                              train.get("perturb_kinds", world.PERTURB_KINDS))
        described = [world.describe(s, rng) for s in scenes]
        captions = [d[0] for d in described]
        # targets[i, j]: caption j is true of scene i
        targets = torch.tensor([[world.matches(d[1], s) for d in described] for s in scenes], dtype=torch.float32)
        pixels = clip_pixels([augment(s, rng, train) for s in scenes])
        ids = token_batch(tokenizer, captions)
        for group in opt.param_groups:
            group["lr"] = training.learning_rate(train, step)
        with training.autocast(train):
            text = F.normalize(text_model(ids).text_embeds.float(), dim=-1)
            image = F.normalize(vision_model(pixels).image_embeds.float(), dim=-1)
        logits = logit_scale.exp().clamp(max=100) * image @ text.T
        loss_i2t = -(targets / targets.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
        loss_t2i = -(targets / targets.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0).mean()
        loss = (loss_i2t + loss_t2i) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train.get("grad_clip", 1.0))
        opt.step()
        with torch.no_grad():
            acc = targets.gather(1, logits.argmax(1, keepdim=True)).mean().item()
        values = {"loss": loss.item(), "acc_i2t": acc, "scale": logit_scale.exp().item()}
        if (step + 1) % train["eval_every"] == 0:
            text_model.eval(), vision_model.eval()
            zs = zero_shot(text_model, vision_model)
            text_model.train(), vision_model.train()
            run.log("eval step %d: %s" % (step + 1, " ".join(f"{k} {v:.3f}" for k, v in zs.items())))
            run.metrics({"step": step + 1, **zs})
        return values

    def state_fn(step: int) -> dict:
        init = {} if args.init_from is None else {"init_from": os.path.relpath(args.init_from, training.HERE)}
        return {"step": step, "config": config, "text_encoder": text_model.state_dict(),
                "image_encoder": vision_model.state_dict(), "logit_scale": logit_scale.detach().clone(),
                "optimizer": opt.state_dict(), **init}

    training.train_loop(run, step_fn, state_fn, start)


if __name__ == "__main__":
    main()
