"""How well does a decoder checkpoint draw what it is asked? Samples a training checkpoint in torch
and scores the pictures with eval.py's measurer, without assembling or exporting anything (or, given
an assembled checkpoint such as export/shapes/checkpoint, its decoder: --clip-run must be its CLIP).

    python export/shapes/probe_samples.py [RUN_DIR | CKPT] [--n 48] [--guidance 8] [--steps 25]
                                          [--condition image|text] [--start-t T ...] [--out /tmp/probe.png]

For `n` one-object scenes (half "a {c} {s} on a {b} background" of seen triples, half the same
form of held-out triples), the decoder is conditioned as `UnCLIPPipeline` conditions it (text_proj
on an image embedding, the CLIP text embedding and token states; classifier-free guidance against
the learned null embedding and the empty prompt, on the first 3 channels only;
pipeline_unclip.py, decoder loop) and sampled with the run's UnCLIPScheduler. The image embedding
is the CLIP image embedding of the scene itself (`image`, what a perfect prior would give) or, with
`--condition text`, the caption's text embedding (the paper's §5.1 ablation). This separates the
decoder's fidelity from the prior's; eval.py measures the shipped pipeline end to end. `--start-t T`
also samples from the true pictures noised to timestep T (SDEdit; Meng et al. 2022): the noise
levels at which the decoder loses an outline it was given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import training  # noqa: E402

training.ensure_import_path()
import eval as shapes_eval  # noqa: E402
import models  # noqa: E402
import world  # noqa: E402
from clip_model import ClipTowers  # noqa: E402
from render import render, to_array  # noqa: E402
from train_decoder import DecoderWithProj, init_weights, prediction_type  # noqa: E402


def probe_items(n: int, seed: int = 0) -> list[tuple[dict, dict]]:
    """(scene, eval item) pairs: alternately a seen and a held-out triple, small or large, centred."""
    rng = np.random.default_rng(seed)
    seen = world.seen_triples()
    out = []
    for k in range(n):
        group, triples = ("held_out", world.HELD_OUT) if k % 2 else ("one", seen)
        c, s, b = triples[int(rng.integers(len(triples)))]
        scene = world.scene_from(b, (c, s, world._pick(rng, world.SIZES), "center"), rng=rng)
        text, claims = world.describe(scene, None, world.REQUIRED_FORMS[0])
        out.append((scene, {"group": group, "caption": text, "claims": claims}))
    return out


@torch.no_grad()
def sample(model: DecoderWithProj, clip: ClipTowers, captions: list[str], image_embeds: torch.Tensor,
           guidance: float, steps: int, prediction: str, seed: int = 0,
           start: torch.Tensor | None = None, start_t: int | None = None) -> torch.Tensor:
    """Samples from pure noise, or (SDEdit) from `start` (the true 64² pictures) noised to the first
    strided timestep ≤ `start_t`: which noise levels lose the shape the embedding asks for."""
    sched = models.schedulers(decoder_prediction=prediction)["decoder_scheduler"]
    sched.set_timesteps(steps)
    b = len(captions)
    text_embeds, states, mask = clip.encode_text([""] * b + captions, full_length=False)
    null = model.text_proj.learned_classifier_free_guidance_embeddings[None].expand(b, -1)
    images = torch.cat([null, image_embeds])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 64, 64, generator=g) * sched.init_noise_sigma
    timesteps = sched.timesteps
    if start is not None and start_t is not None:
        timesteps = timesteps[timesteps <= start_t]
        abar = sched.alphas_cumprod[int(timesteps[0])]
        x = abar.sqrt() * start + (1 - abar).sqrt() * x
    for i, t in enumerate(timesteps):
        out = model(torch.cat([x, x]), torch.full((2 * b,), int(t)), images, text_embeds, states, mask)
        uncond, cond = out.chunk(2)
        pred = uncond[:, :3] + guidance * (cond[:, :3] - uncond[:, :3])
        pred = torch.cat([pred, cond[:, 3:]], dim=1)
        prev = None if i + 1 == len(timesteps) else timesteps[i + 1]
        x = sched.step(pred, t, x, prev_timestep=prev, generator=g).prev_sample
    return x.clamp(-1, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", type=Path, default=training.RUNS / "decoder_x0s")
    ap.add_argument("--clip-run", type=Path, default=training.RUNS / "clip")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--guidance", type=float, nargs="+", default=[8.0])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--condition", choices=("image", "text"), default="image")
    ap.add_argument("--raw", action="store_true", help="the trained weights, not their EMA")
    ap.add_argument("--start-t", type=int, nargs="+", default=[],
                    help="also sample from the true pictures noised to these timesteps (SDEdit)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="contact sheet of the pictures (PNG)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clip = ClipTowers(args.clip_run)
    if (args.run / "shapes_unclip.json").exists():  # an assembled checkpoint (its decoder holds EMA weights)
        if args.raw:
            raise SystemExit(f"--raw: {args.run} is an assembled checkpoint, which keeps only the EMA weights")

        made = training.assembled_components(args.run)
        state = {"step": made["decoder"]["step"], "config": made["decoder"]["config"]}
        model = DecoderWithProj(state["config"]["decoder"], clip.config["embed_dim"]).eval()
        init_weights(model, args.run, made, clip)
    else:
        state = training.require_run(args.run, "decoder")
        model = DecoderWithProj(state["config"]["decoder"], clip.config["embed_dim"]).eval()
        model.load_state_dict(state["model"] if args.raw else state["ema"]["model"])
    pairs = probe_items(args.n)
    captions = [item["caption"] for _, item in pairs]
    if args.condition == "image":
        embeds = clip.encode_images([render(scene, 224) for scene, _ in pairs])
    else:
        embeds = clip.encode_text(captions)[0]
    truth = torch.from_numpy(np.stack([to_array(render(scene, 64)) for scene, _ in pairs])) if args.start_t else None
    runs = [(g, None) for g in args.guidance] + [(g, t) for t in args.start_t for g in args.guidance]
    for guidance, start_t in runs:
        x = sample(model, clip, captions, embeds, guidance, args.steps, prediction_type(state["config"]),
                   start=truth, start_t=start_t)
        pictures = [[((im.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)] for im in x]
        m = shapes_eval.summarize([item for _, item in pairs], pictures)
        print(f"{args.run.name} step {state['step']} guidance {guidance:g} ({args.condition}): "
              f"all {shapes_eval.pct(m['all_attributes'])} shape {shapes_eval.pct(m['shape'])} "
              f"color {shapes_eval.pct(m['color'])} background {shapes_eval.pct(m['background'])} "
              f"held-out all {shapes_eval.pct(m['held_out_all_attributes'])}"
              + ("" if start_t is None else f" (from the true pictures at t ≤ {start_t})"), flush=True)
        if args.out is not None:
            from PIL import Image

            tiles = [Image.fromarray(p[0]) for p in pictures]
            cols = 8
            grid = Image.new("RGB", (64 * cols, 64 * ((len(tiles) + cols - 1) // cols)))
            for k, tile in enumerate(tiles):
                grid.paste(tile, (64 * (k % cols), 64 * (k // cols)))
            tag = "" if start_t is None else f"-t{start_t}"
            path = args.out.with_name(f"{args.out.stem}-g{guidance:g}{tag}{args.out.suffix}")
            grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(path)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
