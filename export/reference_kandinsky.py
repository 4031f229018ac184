"""Runs diffusers' Kandinsky 2.2 pipelines on tests/fixtures/tiny-kandinsky and records, per case,
every noise tensor drawn (in order, with the stage that drew it) and every intermediate: the ground
truth of the Kandinsky parity tests.

    python export/reference_kandinsky.py [--checkpoint DIR] [--out tests/fixtures/ref-kandinsky] [--case NAME ...]

The parity target is `KandinskyV22CombinedPipeline` (and `KandinskyV22Img2ImgCombinedPipeline`)
with one `torch.Generator`: the prior's draws, then the decoder's, from one seed. The variation
case runs `KandinskyV22PriorPipeline.interpolate([image], [1.0])` then `KandinskyV22Pipeline` on
one generator, which is what the combined pipelines do for a text prompt. Writes
`<out>/<case>/*.npy`, the final images as `image_<i>.png` and `case.json` (parameters, seed,
versions, the noise draws with their stage and shape, the files written).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO  # noqa: E402
from make_tiny_kandinsky import TINY_KANDINSKY, combined  # noqa: E402

# name → parameters: `steps` = (prior, decoder), `gs` = (prior, decoder) guidance, `size` = (height, width).
CASES = {
    "basic": dict(prompt="a red circle on a blue background", seed=0, steps=(5, 5), gs=(4.0, 4.0), size=(64, 64),
                  record_steps=True),
    "negative": dict(prompt="a green square", negative_prompt="blurry, low quality", seed=1, steps=(3, 3),
                     gs=(4.0, 4.0), size=(64, 64)),
    "batch2x2": dict(prompt=["a yellow star", "a purple triangle on a white background"], images_per_prompt=2,
                     seed=2, steps=(2, 3), gs=(4.0, 4.0), size=(64, 64)),
    "no_guidance": dict(prompt="an orange circle", seed=3, steps=(3, 3), gs=(1.0, 1.0), size=(64, 64)),
    "non_square": dict(prompt="a wide blue landscape", seed=4, steps=(2, 3), gs=(4.0, 4.0), size=(64, 128)),
    "img2img_03": dict(prompt="a blue square", image="shapes_64.png", strength=0.3, seed=5, steps=(2, 10),
                       gs=(4.0, 4.0), size=(64, 64)),
    "img2img_075": dict(prompt="a blue square", image="shapes_64.png", strength=0.75, seed=6, steps=(2, 8),
                        gs=(4.0, 4.0), size=(64, 64)),
    "variation": dict(variation=True, image="shapes_64.png", seed=7, steps=(2, 4), gs=(4.0, 4.0), size=(64, 64)),
    "ddim": dict(prompt="a red circle on a blue background", seed=8, steps=(2, 5), gs=(4.0, 4.0), size=(64, 64),
                 scheduler="ddim"),
    "dpm++": dict(prompt="a red circle on a blue background", seed=9, steps=(2, 5), gs=(4.0, 4.0), size=(64, 64),
                  scheduler="dpm++"),
}


def source_image(name: str) -> Image.Image:
    """Deterministic synthetic sources."""
    if name == "shapes_64.png":
        img = Image.new("RGB", (64, 64), (30, 60, 200))
        d = ImageDraw.Draw(img)
        d.ellipse((8, 8, 36, 36), fill=(220, 30, 30))
        d.rectangle((36, 30, 58, 56), fill=(240, 220, 20))
        return img
    raise KeyError(name)


class Recorder:
    """Wraps diffusers' `randn_tensor` where the Kandinsky pipelines and their schedulers import it,
    labelling each draw with the stage running."""

    def __init__(self):
        import diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2 as p_dec
        import diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_img2img as p_i2i
        import diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_prior as p_prior
        import diffusers.schedulers.scheduling_ddim as s_ddim
        import diffusers.schedulers.scheduling_ddpm as s_ddpm
        import diffusers.schedulers.scheduling_dpmsolver_multistep as s_dpm
        import diffusers.schedulers.scheduling_unclip as s_unclip

        self.draws: list[tuple[str, torch.Tensor]] = []
        self.stage = "prior"
        self.modules = [m for m in (p_dec, p_i2i, p_prior, s_ddim, s_ddpm, s_dpm, s_unclip) if hasattr(m, "randn_tensor")]
        self.original = p_prior.randn_tensor
        for m in self.modules:
            m.randn_tensor = self.randn_tensor

    def randn_tensor(self, *args, **kwargs):
        t = self.original(*args, **kwargs)
        self.draws.append((self.stage, t.detach().clone()))
        return t

    def restore(self):
        for m in self.modules:
            m.randn_tensor = self.original


def first_output(o) -> torch.Tensor:
    """A model's first output, whether it was called with `return_dict` or not."""
    return o[0] if isinstance(o, tuple) else o.to_tuple()[0]


def run_case(name: str, spec: dict, out_root: Path, checkpoint: Path) -> dict:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, KandinskyV22Pipeline, KandinskyV22PriorPipeline

    out = out_root / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    saved: dict[str, list] = {}

    def save(fname: str, x) -> None:
        a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        np.save(out / f"{fname}.npy", a)
        saved[fname] = list(a.shape)

    img2img = "strength" in spec
    if spec.get("variation"):
        prior_pipe = KandinskyV22PriorPipeline.from_pretrained(checkpoint / "prior")
        decoder_pipe = KandinskyV22Pipeline.from_pretrained(checkpoint / "decoder")
        pipe = None
    else:
        pipe = combined(checkpoint, img2img=img2img)
        prior_pipe, decoder_pipe = pipe.prior_pipe, pipe.decoder_pipe
    # `from_config` keeps the DDPM config's `variance_type: learned_range` as a hidden key, and the
    # pipeline then passes DDIM the 8-channel output (a shape error) and DPM-Solver++ slices it to
    # `[:, :3]` (wrong for 4 latent channels): both get it without, so the pipeline drops the
    # variance half, which is what unclip's converted schedulers do with it.
    config = {k: v for k, v in decoder_pipe.scheduler.config.items() if k != "variance_type"}
    if spec.get("scheduler") == "ddim":
        decoder_pipe.scheduler = DDIMScheduler.from_config(config)
    elif spec.get("scheduler") == "dpm++":
        decoder_pipe.scheduler = DPMSolverMultistepScheduler.from_config(config)
    for p in (prior_pipe, decoder_pipe, pipe):
        if p is not None:
            p.set_progress_bar_config(disable=True)

    rec = Recorder()
    prior_calls, unet_calls, prior_steps, decoder_steps, movq_calls = [], [], [], [], []
    hooks = [
        prior_pipe.prior.register_forward_hook(
            lambda m, a, k, o: prior_calls.append(dict(k, output=first_output(o))), with_kwargs=True),
        decoder_pipe.unet.register_forward_hook(
            lambda m, a, k, o: unet_calls.append(dict(k, output=first_output(o))), with_kwargs=True),
    ]

    def wrap_step(scheduler, stage: str, log: list):
        original = scheduler.step

        def step(*args, **kwargs):
            rec.stage = stage
            result = original(*args, **kwargs)
            log.append((result.prev_sample if hasattr(result, "prev_sample") else result[0]).detach().clone())
            return result

        scheduler.step = step

    wrap_step(prior_pipe.scheduler, "prior", prior_steps)
    wrap_step(decoder_pipe.scheduler, "decoder", decoder_steps)
    prior_out = {}
    original_post = prior_pipe.prior.post_process_latents

    def post(latents):
        prior_out["latents"] = latents.clone()
        return original_post(latents)

    prior_pipe.prior.post_process_latents = post
    # The decoder's first draw (its latents, or img2img's add_noise noise) belongs to the decoder.
    original_prepare = decoder_pipe.prepare_latents

    def prepare(*args, **kwargs):
        rec.stage = "decoder"
        return original_prepare(*args, **kwargs)

    decoder_pipe.prepare_latents = prepare
    original_decode = decoder_pipe.movq.decode

    def decode(latents, *args, **kwargs):
        result = original_decode(latents, *args, **kwargs)
        movq_calls.append((latents.detach().clone(), result.sample.detach().clone()))
        return result

    decoder_pipe.movq.decode = decode

    prior_n, decoder_n = spec["steps"]
    prior_gs, decoder_gs = spec["gs"]
    height, width = spec["size"]
    n = spec.get("images_per_prompt", 1)
    g = torch.Generator("cpu").manual_seed(spec["seed"])
    with torch.no_grad():
        if spec.get("variation"):
            src = source_image(spec["image"])
            src.save(out / "source.png")
            pixel_values = prior_pipe.image_processor(src, return_tensors="pt").pixel_values
            save("pixel_values", pixel_values)
            embeds = prior_pipe.interpolate([src], [1.0], num_inference_steps=prior_n, num_images_per_prompt=n,
                                            generator=g, guidance_scale=prior_gs)
            images = decoder_pipe(image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                                  height=height, width=width, num_inference_steps=decoder_n, guidance_scale=decoder_gs,
                                  generator=g, output_type="np").images
        else:
            kwargs = dict(prompt=spec["prompt"], negative_prompt=spec.get("negative_prompt"),
                          num_inference_steps=decoder_n, guidance_scale=decoder_gs, num_images_per_prompt=n,
                          height=height, width=width, prior_guidance_scale=prior_gs,
                          prior_num_inference_steps=prior_n, generator=g, output_type="np")
            if img2img:
                src = source_image(spec["image"])
                src.save(out / "source.png")
                kwargs.update(image=src, strength=spec["strength"])
            images = pipe(**kwargs).images
    for h in hooks:
        h.remove()
    rec.restore()

    # -- prior: tokens and what the prior received (CFG batch [uncond, cond])
    tokenizer = prior_pipe.tokenizer
    if not spec.get("variation"):
        prompts = spec["prompt"] if isinstance(spec["prompt"], list) else [spec["prompt"]]
        tok = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt")
        save("prompt_ids", tok.input_ids)
        save("prompt_mask", tok.attention_mask)
    if prior_calls:
        k = prior_calls[0]
        save("text_embeds", k["proj_embedding"])
        save("text_hidden_states", k["encoder_hidden_states"])
        save("text_mask", k["attention_mask"].to(torch.int64))
        if spec.get("record_steps"):
            for i, kw in enumerate(prior_calls):
                save(f"prior_model_out_{i:02}", kw["output"])
            for i, x in enumerate(prior_steps):
                save(f"prior_step_{i:02}", x)
    if "latents" in prior_out:
        save("prior_latents", prior_out["latents"])
    # -- decoder: the embeddings it was conditioned on ([negative, positive] under CFG)
    first = unet_calls[0]
    save("decoder_image_embeds", first["added_cond_kwargs"]["image_embeds"])
    save("decoder_sample_0", first["sample"])
    save("unet_out_0", first["output"])
    save("unet_out_last", unet_calls[-1]["output"])
    if spec.get("record_steps"):
        for i, x in enumerate(decoder_steps):
            save(f"decoder_step_{i:02}", x)
    save("decoder_timesteps", torch.tensor([int(kw["timestep"]) for kw in unet_calls], dtype=torch.int64))
    latents, decoded = movq_calls[-1]
    save("decoder_latents", latents)
    save("movq_out", decoded)
    image_u8 = (images * 255).round().astype("uint8")
    for i, im in enumerate(image_u8):
        Image.fromarray(im).save(out / f"image_{i}.png", optimize=False, compress_level=9)
    saved["image"] = list(image_u8.shape)

    noise = []
    for i, (stage, t) in enumerate(rec.draws):
        entry = {"stage": stage, "shape": list(t.shape), "file": f"noise_{i:03}.npy"}
        np.save(out / entry["file"], t.numpy())
        noise.append(entry)

    import diffusers

    case = {
        "name": name,
        "kind": "variation" if spec.get("variation") else "img2img" if img2img else "text",
        "prompt": spec.get("prompt"),
        "negative_prompt": spec.get("negative_prompt"),
        "image": spec.get("image"),
        "strength": spec.get("strength"),
        "seed": spec["seed"],
        "num_images_per_prompt": n,
        "prior_steps": prior_n,
        "decoder_steps": decoder_n,
        "prior_guidance_scale": prior_gs,
        "decoder_guidance_scale": decoder_gs,
        "height": height,
        "width": width,
        "decoder_scheduler": spec.get("scheduler", "ddpm"),
        "noise": noise,
        "files": saved,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
    }
    (out / "case.json").write_text(json.dumps(case, indent=1, ensure_ascii=False) + "\n")
    return case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=TINY_KANDINSKY,
                    help="directory with decoder/ and prior/ (export/make_tiny_kandinsky.py)")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "ref-kandinsky")
    ap.add_argument("--case", action="append", help=f"only these cases (default: all of {', '.join(CASES)})")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # reproducible reductions
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.case or list(CASES):
        case = run_case(name, CASES[name], args.out, args.checkpoint)
        print(f"{name}: {len(case['noise'])} noise draws, {len(case['files'])} tensors")


if __name__ == "__main__":
    main()
