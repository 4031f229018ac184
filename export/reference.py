"""Runs diffusers' UnCLIP pipelines on tests/fixtures/tiny-karlo and records, per case, every noise
tensor drawn (in order) and every intermediate, as the ground truth of the Rust parity tests.

    python export/reference.py [--out tests/fixtures/ref] [--case NAME ...]

Writes `<out>/<case>/*.npy` and `case.json` (parameters, seed, versions, the noise draws with
their stage and shape, the files written). File names are the ones `unclip generate --dump DIR`
writes. Size policy (the 40 MB fixture budget): tensors at 256×256 are large; every case stores
the prior and decoder noise and all ≤ 64×64 intermediates in full, but 256×256 tensors (the
super-resolution noise, the upsampled low-res input, the super-res output) are stored in full only
for cases marked `full`; other cases store `<name>.sub4.npy` = `x[..., ::4, ::4]` (every 16th
value) and the final uint8 images in full (`image_<i>.png`). Their super-res noise comes from the torch-compatible
generator (bit-exact, proven by tests/fixtures/rng).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, TINY_KARLO, load_unclip  # noqa: E402

LONG_PROMPT = " ".join(
    ["a large red circle and a small blue square on a yellow background, drawn carefully"] * 4
)

# name → parameters. `stages` = (prior, decoder, super-res) steps; `gs` = (prior, decoder) guidance.
CASES = {
    "basic": dict(prompt="a red circle on a blue background", seed=0, stages=(5, 5, 2), gs=(4.0, 8.0),
                  full=True, prior_steps_record=True),
    "empty_prompt": dict(prompt="", seed=1, stages=(2, 2, 2), gs=(4.0, 8.0)),
    "long_prompt": dict(prompt=LONG_PROMPT, seed=2, stages=(2, 2, 2), gs=(4.0, 8.0)),
    "batch2": dict(prompt=["a green square on a white background", "a yellow star at the left on a black background"],
                   seed=3, stages=(2, 2, 2), gs=(4.0, 8.0)),
    "per_prompt2": dict(prompt="a small purple triangle", images_per_prompt=2, seed=4, stages=(2, 2, 2), gs=(4.0, 8.0)),
    "no_cfg": dict(prompt="an orange star on a green background", seed=5, stages=(5, 5, 2), gs=(1.0, 1.0)),
    "prior_cfg_only": dict(prompt="a white circle", seed=6, stages=(2, 2, 2), gs=(4.0, 1.0)),
    "steps25": dict(prompt="a blue triangle at the top on a red background", seed=42, stages=(25, 25, 2),
                    gs=(4.0, 8.0)),
    "seed_2p32p5": dict(prompt="two black squares", seed=2**32 + 5, stages=(2, 2, 5), gs=(2.0, 3.0)),
    "unicode": dict(prompt="A Café — naïve résumé!!  🍎 RED\tcircle", seed=123456789, stages=(2, 2, 2), gs=(4.0, 8.0)),
    "variation": dict(variation=True, image="shapes_300x200.png", seed=7, stages=(0, 2, 2), gs=(0.0, 8.0),
                      pixel_values=True),
    "variation_per2": dict(variation=True, image="gray_160x240.png", images_per_prompt=2, seed=8, stages=(0, 5, 2),
                           gs=(0.0, 4.0)),
}
# Cases for the trained shapes checkpoint (export/shapes/assemble.py), not tiny-karlo: run with
# `--checkpoint export/shapes/checkpoint --out tests/fixtures/ref-shapes --case shapes_default`
# after exporting models/shapes from it. The case runs the bundle's default steps and guidance (read
# from its bundle.json, so the test follows the defaults a user gets; docs/shapes-eval.md) and the
# 64→256 upsampler, which is what UnCLIPPipeline runs (it has no 256→1024 stage). At diffusers'
# decoder default 8 this trained decoder saturates, and guidance 8 multiplies ORT's ~2e-6 per-call
# difference from torch by 15 at every step: 25 of 12,288 decoder outputs then differ by up to
# 2.7e-3 (the decoder of 2026-12-06).
def bundle_defaults(bundle: Path) -> dict:
    meta = json.loads((bundle / "bundle.json").read_text())
    first_upsampler = meta["upsamplers"][0]
    return dict(stages=(meta["prior"]["default_steps"], meta["decoder"]["default_steps"],
                        first_upsampler["default_steps"]),
                gs=(meta["prior"]["default_guidance_scale"], meta["decoder"]["default_guidance_scale"]))


CHECKPOINT_CASES = {
    "shapes_default": dict(prompt="a red circle on a blue background", seed=0,
                           **bundle_defaults(REPO / "models/shapes")),
}
# diffusers' UnCLIPScheduler.set_timesteps(1) divides by zero ((T-1)/(N-1)): no reference exists for
# one step; the Rust scheduler defines it (see src/schedulers/unclip.rs) and this is recorded here.
UNSUPPORTED = {"steps1": "UnCLIPScheduler.set_timesteps(1) raises ZeroDivisionError in diffusers 0.42.1"}


def source_image(name: str) -> Image.Image:
    """Deterministic synthetic sources for the variation cases."""
    if name == "shapes_300x200.png":
        img = Image.new("RGB", (300, 200), (30, 60, 200))
        d = ImageDraw.Draw(img)
        d.ellipse((40, 40, 140, 140), fill=(220, 30, 30))
        d.rectangle((170, 60, 260, 150), fill=(240, 220, 20))
        return img
    if name == "gray_160x240.png":
        ramp = np.tile(np.linspace(0, 255, 160, dtype=np.float32), (240, 1))
        return Image.fromarray(ramp.astype(np.uint8), mode="L")
    raise KeyError(name)


class Recorder:
    """Wraps diffusers' `randn_tensor` where the unCLIP pipelines and scheduler import it."""

    def __init__(self):
        self.draws: list[tuple[str, torch.Tensor]] = []
        self.stage = "?"
        import diffusers.pipelines.deprecated.unclip.pipeline_unclip as p1
        import diffusers.pipelines.deprecated.unclip.pipeline_unclip_image_variation as p2
        import diffusers.schedulers.scheduling_unclip as s

        self.modules = [p1, p2, s]
        self.original = s.randn_tensor
        for m in self.modules:
            m.randn_tensor = self.randn_tensor

    def randn_tensor(self, *args, **kwargs):
        t = self.original(*args, **kwargs)
        self.draws.append((self.stage, t.detach().clone()))
        return t


def wrap_step(scheduler, stage: str, rec: Recorder, log: list):
    original = scheduler.step

    def step(*args, **kwargs):
        rec.stage = stage
        out = original(*args, **kwargs)
        log.append(out.prev_sample.detach().clone())
        return out

    scheduler.step = step


def run_case(name: str, spec: dict, out_root: Path, text_pipe, var_pipe) -> dict:
    out = out_root / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    full = spec.get("full", False)
    pipe = var_pipe if spec.get("variation") else text_pipe
    rec = Recorder()
    saved: dict[str, list] = {}

    def save(fname: str, x, subsample: bool = False) -> None:
        a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if a.ndim == 4 and a.shape[-1] >= 256 and (subsample or not full):
            a = np.ascontiguousarray(a[..., ::4, ::4])
            fname = fname + ".sub4"
        np.save(out / f"{fname}.npy", a)
        saved[fname] = list(a.shape)

    # -- hooks on the reference pipeline's components
    te_calls, proj_calls, prior_calls, dec_calls = [], [], [], []
    hooks = [
        pipe.text_encoder.register_forward_hook(lambda m, a, k, o: te_calls.append((k, o)), with_kwargs=True),
        pipe.text_proj.register_forward_hook(lambda m, a, k, o: proj_calls.append((k, o)), with_kwargs=True),
        pipe.decoder.register_forward_hook(lambda m, a, k, o: dec_calls.append(k), with_kwargs=True),
    ]
    prior_log, decoder_log, sr_log = [], [], []
    prior_out = {}
    if not spec.get("variation"):
        hooks.append(pipe.prior.register_forward_hook(
            lambda m, a, k, o: prior_calls.append(dict(k, output=o.predicted_image_embedding)), with_kwargs=True))
        wrap_step(pipe.prior_scheduler, "prior", rec, prior_log)
        orig_post = pipe.prior.post_process_latents

        def post(latents):
            prior_out["latents"] = latents.clone()
            return orig_post(latents)

        pipe.prior.post_process_latents = post
    wrap_step(pipe.decoder_scheduler, "decoder", rec, decoder_log)
    wrap_step(pipe.super_res_scheduler, "super_res", rec, sr_log)

    prior_steps, decoder_steps, sr_steps = spec["stages"]
    prior_gs, decoder_gs = spec["gs"]
    n = spec.get("images_per_prompt", 1)
    g = torch.Generator("cpu").manual_seed(spec["seed"])
    common = dict(
        num_images_per_prompt=n,
        decoder_num_inference_steps=decoder_steps,
        super_res_num_inference_steps=sr_steps,
        decoder_guidance_scale=decoder_gs,
        generator=g,
        output_type="np",
    )
    # Latents drawn by `prepare_latents` are labelled by the stage that draws them next.
    orig_prepare = pipe.prepare_latents

    def prepare(shape, dtype, device, generator, latents, scheduler):
        rec.stage = {id(getattr(pipe, "prior_scheduler", None)): "prior", id(pipe.decoder_scheduler): "decoder",
                     id(pipe.super_res_scheduler): "super_res"}[id(scheduler)]
        return orig_prepare(shape, dtype, device, generator, latents, scheduler)

    pipe.prepare_latents = prepare
    with torch.no_grad():
        if spec.get("variation"):
            src = source_image(spec["image"])
            src.save(out / "source.png")
            pixel_values = pipe.feature_extractor(images=src, return_tensors="pt").pixel_values
            if spec.get("pixel_values"):
                save("pixel_values", pixel_values)
            images = pipe(image=src, **common).images
        else:
            images = pipe(prompt=spec["prompt"], prior_num_inference_steps=prior_steps,
                          prior_guidance_scale=prior_gs, **common).images
    for h in hooks:
        h.remove()
    pipe.prepare_latents = orig_prepare
    for m in rec.modules:
        m.randn_tensor = rec.original

    # -- tokens (the same tokenizer calls as UnCLIPPipeline._encode_prompt)
    prompts = [""] if spec.get("variation") else spec["prompt"]
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    save("prompt_ids", tok.input_ids)
    save("prompt_mask", tok.attention_mask)
    cfg = (decoder_gs > 1.0) if spec.get("variation") else (prior_gs > 1.0 or decoder_gs > 1.0)
    # -- text encoder: what the next stage received (CFG batch [uncond, cond], repeated per image)
    if spec.get("variation"):
        k = proj_calls[0][0]
    else:
        k = prior_calls[0]
        save("text_embeds", k["proj_embedding"])
        save("text_hidden_states", k["encoder_hidden_states"])
        save("text_mask", k["attention_mask"].to(torch.int64))
        if spec.get("prior_steps_record"):
            for i, kw in enumerate(prior_calls):
                save(f"prior_model_out_{i:02}", kw["output"])
            for i, x in enumerate(prior_log):
                save(f"prior_step_{i:02}", x)
        save("prior_latents", prior_out["latents"])
    pk, (hidden, additive) = proj_calls[0]
    save("image_embeddings", pk["image_embeddings"])
    if spec.get("variation"):
        save("text_embeds", pk["prompt_embeds"])
        save("text_hidden_states", pk["text_encoder_hidden_states"])
    save("decoder_hidden_states", hidden)
    save("additive_clip_time_embeddings", additive)
    save("decoder_mask", dec_calls[0]["attention_mask"].to(torch.int64))
    decoder_out = decoder_log[-1].clamp(-1, 1)
    save("decoder_out", decoder_out)
    size = pipe.super_res_first.config.sample_size
    upsampled = F.interpolate(decoder_out, size=[size, size], mode="bicubic", align_corners=False, antialias=True)
    # Always subsampled: it is a pure function of decoder_out, checked in full by tests/image_io.rs.
    save("upsampled", upsampled, subsample=True)
    save("sr_out", sr_log[-1])
    # The final uint8 images as lossless PNG (numpy_to_pil's rounding), one per image: saturated
    # random-weight outputs compress ~5×, which the .npy form would not.
    image_u8 = (images * 255).round().astype("uint8")
    for i, im in enumerate(image_u8):
        Image.fromarray(im).save(out / f"image_{i}.png", optimize=False, compress_level=9)
    saved["image"] = list(image_u8.shape)

    # -- noise, in draw order
    noise = []
    for i, (stage, t) in enumerate(rec.draws):
        entry = {"stage": stage, "shape": list(t.shape)}
        if stage != "super_res" or full:
            entry["file"] = f"noise_{i:03}.npy"
            np.save(out / entry["file"], t.numpy())
        noise.append(entry)

    import diffusers

    case = {
        "name": name,
        "kind": "variation" if spec.get("variation") else "text",
        "prompt": None if spec.get("variation") else spec["prompt"],
        "image": spec.get("image"),
        "seed": spec["seed"],
        "num_images_per_prompt": n,
        "prior_steps": prior_steps,
        "decoder_steps": decoder_steps,
        "super_res_steps": sr_steps,
        "prior_guidance_scale": prior_gs,
        "decoder_guidance_scale": decoder_gs,
        "classifier_free_guidance": cfg,
        "full": full,
        "noise": noise,
        "files": saved,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
    }
    (out / "case.json").write_text(json.dumps(case, indent=1, ensure_ascii=False) + "\n")
    return case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=TINY_KARLO)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "ref")
    ap.add_argument("--case", action="append",
                    help=f"only these cases (default: every tiny-karlo case; also {', '.join(CHECKPOINT_CASES)})")
    args = ap.parse_args()
    torch.set_num_threads(1)  # reproducible reductions
    text_pipe = load_unclip(args.checkpoint)
    var_pipe = load_unclip(args.checkpoint, variation=True)
    for p in (text_pipe, var_pipe):
        p.set_progress_bar_config(disable=True)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.case or list(CASES)
    for name in names:
        case = run_case(name, {**CASES, **CHECKPOINT_CASES}[name], args.out, text_pipe, var_pipe)
        print(f"{name}: {len(case['noise'])} noise draws, {len(case['files'])} tensors")
    if args.case is None:
        (args.out / "unsupported.json").write_text(json.dumps(UNSUPPORTED, indent=1) + "\n")


if __name__ == "__main__":
    main()
