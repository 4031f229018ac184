"""Writes the trained shapes unCLIP as a Karlo-layout diffusers checkpoint directory.

    python export/shapes/assemble.py [OUT] [--runs export/shapes/runs] [--clip DIR] [--prior DIR]
                                     [--decoder DIR] [--sr256 DIR] [--sr1024 DIR] [--base CKPT] [--no-check]

OUT (default export/shapes/checkpoint, the committed shipped checkpoint) gets what `UnCLIPPipeline.save_pretrained`
writes for Karlo — model_index.json, tokenizer, text_encoder, prior, text_proj, decoder,
super_res_first, super_res_last, prior_scheduler, decoder_scheduler, super_res_scheduler — plus,
beside them and not in model_index.json (so diffusers ignores them):
- image_encoder/ + feature_extractor/   the CLIP image tower for variations (as Karlo's
                                        image-variation checkpoint);
- super_res_1024_first/, super_res_1024_last/, super_res_1024_scheduler/
                                        the second upsampler 256→1024 (UNet2DModel, same input
                                        convention as super_res_*: cat(noisy, upsampled image));
- shapes_unclip.json                    provenance: each component's run, step and config, the
                                        world's vocabulary and held-out triples.
Prior, decoder/text_proj and super-resolution weights are the runs' EMA weights. Each upsampler
was trained once; its weights are saved as both `first` and `last` (Karlo's separate last-step
model is a refinement this small model does without). Unless --no-check, the result is loaded
with diffusers and generates a 2-step image (text and variation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import training  # noqa: E402

training.ensure_import_path()
import models  # noqa: E402
import world  # noqa: E402
from _common import load_unclip, register_text_proj  # noqa: E402
import train_decoder  # noqa: E402
import train_superres  # noqa: E402

DEFAULT_OUT = training.HERE / "checkpoint"
# The runs models/shapes is made of (train_all.sh trains them): the decoder and both upsamplers
# predict x₀ from the start (train_decoder.py, train_superres.py `prediction_type`); the decoder is
# the last of its three runs (train_all.sh).
SHIPPED_RUNS = (("clip", "clip"), ("prior", "prior"), ("decoder", "decoder_x0s_ft2"), ("sr256", "superres_256_x0s"),
                ("sr1024", "superres_1024_x0s"))
SR1024_PREFIX = "super_res_1024"


def ema_weights(state: dict) -> dict:
    return state["ema"]["model"] if "ema" in state else state["model"]


class Base:
    """The components of an assembled checkpoint (`--base`), each loaded as the module its run's
    would be, with a run-like state: its provenance (run, step, config, …) plus "clip_step" and "from"."""

    def __init__(self, path: Path):
        self.path = path
        self.components = training.assembled_components(path)

    def state(self, name: str) -> dict:
        made = self.components[name]
        return {**made, "clip_step": self.components["clip"]["step"], "from": os.path.relpath(self.path, training.HERE)}

    def load(self, name: str):
        from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel
        from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

        register_text_proj()
        from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

        if name == "clip":
            return (CLIPTextModelWithProjection.from_pretrained(self.path / "text_encoder"),
                    CLIPVisionModelWithProjection.from_pretrained(self.path / "image_encoder"))
        if name == "prior":
            return PriorTransformer.from_pretrained(self.path / "prior")
        if name == "decoder":
            return (UNet2DConditionModel.from_pretrained(self.path / "decoder"),
                    UnCLIPTextProjModel.from_pretrained(self.path / "text_proj"))
        return UNet2DModel.from_pretrained(self.path / f"{name}_first")


def build(args) -> dict:
    """Loads every run into its diffusers/transformers module; returns the modules by component.
    With `args.base` (an assembled checkpoint), a component whose run was not named on the command
    line comes from the base instead."""
    base = Base(args.base) if args.base is not None else None
    from_base = lambda flag: base is not None and flag not in args.given  # noqa: E731

    if from_base("clip"):
        clip_state = base.state("clip")
        text_encoder, image_encoder = base.load("clip")
    else:
        clip_state = training.require_run(args.clip, "CLIP")
        text_encoder = models.text_encoder(clip_state["config"])
        text_encoder.load_state_dict(clip_state["text_encoder"])
        image_encoder = models.image_encoder(clip_state["config"])
        image_encoder.load_state_dict(clip_state["image_encoder"])
    embed_dim = clip_state["config"]["embed_dim"]

    if from_base("prior"):
        prior_state, prior = base.state("prior"), base.load("prior")
    else:
        prior_state = training.require_run(args.prior, "prior")
        prior = models.prior(prior_state["config"]["prior"], embed_dim)
        prior.load_state_dict(ema_weights(prior_state))

    if from_base("decoder"):
        decoder_state = base.state("decoder")
        decoder, text_proj = base.load("decoder")
    else:
        decoder_state = training.require_run(args.decoder, "decoder")
        weights = ema_weights(decoder_state)
        dec_cfg = decoder_state["config"]["decoder"]
        decoder = models.decoder(dec_cfg)
        decoder.load_state_dict({k[len("decoder."):]: v for k, v in weights.items() if k.startswith("decoder.")})
        text_proj = models.text_proj(dec_cfg, embed_dim)
        text_proj.load_state_dict({k[len("text_proj."):]: v for k, v in weights.items() if k.startswith("text_proj.")})

    for name, state in (("prior", prior_state), ("decoder", decoder_state)):
        if state["clip_step"] != clip_state["step"]:
            raise SystemExit(f"the {name} was trained on CLIP step {state['clip_step']}, the CLIP run is at step "
                             f"{clip_state['step']}: retrain it on this CLIP (or point --clip at the matching run)")

    upsamplers = {}
    for flag, key, path in (("sr256", "super_res", args.sr256), ("sr1024", SR1024_PREFIX, args.sr1024)):
        if from_base(flag):
            upsamplers[key] = (base.load(key), base.state(key))
            continue
        state = training.require_run(path, key)
        unet = models.super_res(state["config"]["super_res"])
        unet.load_state_dict(ema_weights(state))
        upsamplers[key] = (unet, state)

    runs = {"clip": (args.clip, clip_state), "prior": (args.prior, prior_state), "decoder": (args.decoder, decoder_state),
            "super_res": (args.sr256, upsamplers["super_res"][1]),
            SR1024_PREFIX: (args.sr1024, upsamplers[SR1024_PREFIX][1])}
    return {
        "tokenizer": models.tokenizer(),
        "text_encoder": text_encoder.eval(),
        "image_encoder": image_encoder.eval(),
        "prior": prior.eval(),
        "decoder": decoder.eval(),
        "text_proj": text_proj.eval(),
        "super_res": upsamplers["super_res"][0].eval(),
        SR1024_PREFIX: upsamplers[SR1024_PREFIX][0].eval(),
        "runs": runs,
    }


def provenance(parts: dict) -> dict:
    components = {}
    for name, (path, state) in parts["runs"].items():
        if "from" in state:  # taken from --base: keep its whole provenance, and say where it was taken from
            components[name] = {k: v for k, v in state.items() if k != "clip_step"}
        else:
            components[name] = {"run": os.path.relpath(path, training.HERE), "step": state["step"],
                                "config": state["config"]}
            if "init_from" in state:
                components[name]["init_from"] = state["init_from"]
    params = {name: models.count_parameters(parts[name]) for name in
              ("text_encoder", "image_encoder", "prior", "text_proj", "decoder", "super_res", SR1024_PREFIX)}
    return {
        "name": "shapes-unclip",
        "world": {
            "colors": list(world.COLORS), "shapes": list(world.SHAPES), "sizes": list(world.SIZES),
            "positions": list(world.POSITIONS), "held_out": [list(t) for t in world.HELD_OUT],
            "required_caption_forms": list(world.REQUIRED_FORMS),
        },
        "upsamplers": [
            {"name": "sr256", "first": "super_res_first", "last": "super_res_last", "scheduler": "super_res_scheduler",
             "sample_size": parts["super_res"].config.sample_size},
            {"name": "sr1024", "first": f"{SR1024_PREFIX}_first", "last": f"{SR1024_PREFIX}_last",
             "scheduler": f"{SR1024_PREFIX}_scheduler", "sample_size": parts[SR1024_PREFIX].config.sample_size},
        ],
        "parameters": params,
        "components": components,
    }


def save(parts: dict, out: Path) -> None:
    register_text_proj()
    from diffusers import UnCLIPPipeline

    config = lambda run: parts["runs"][run][1]["config"]  # noqa: E731
    schedulers = models.schedulers(train_decoder.prediction_type(config("decoder")),
                                   train_superres.prediction_type(config("super_res")))
    pipe = UnCLIPPipeline(
        prior=parts["prior"], decoder=parts["decoder"], text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"], text_proj=parts["text_proj"],
        super_res_first=parts["super_res"], super_res_last=parts["super_res"], **schedulers,
    )
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    parts["image_encoder"].save_pretrained(tmp / "image_encoder", safe_serialization=True)
    models.feature_extractor().save_pretrained(tmp / "feature_extractor")
    sr = parts[SR1024_PREFIX]
    sr.save_pretrained(tmp / f"{SR1024_PREFIX}_first", safe_serialization=True)
    sr.save_pretrained(tmp / f"{SR1024_PREFIX}_last", safe_serialization=True)
    sr1024_prediction = train_superres.prediction_type(config(SR1024_PREFIX))
    models.schedulers(super_res_prediction=sr1024_prediction)["super_res_scheduler"].save_pretrained(
        tmp / f"{SR1024_PREFIX}_scheduler")
    (tmp / "shapes_unclip.json").write_text(json.dumps(provenance(parts), indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def check(out: Path) -> None:
    """The checkpoint loads in diffusers and generates (text → 256, then 256 → 1024; variation)."""
    import numpy as np
    from PIL import Image

    from sample import load_sr1024, super_res_1024

    g = torch.Generator("cpu").manual_seed(0)
    pipe = load_unclip(out)
    image = pipe("a red circle on a blue background", prior_num_inference_steps=2, decoder_num_inference_steps=2,
                 super_res_num_inference_steps=2, generator=g, output_type="np").images
    assert image.shape == (1, 256, 256, 3), image.shape
    big = super_res_1024(torch.from_numpy(image).permute(0, 3, 1, 2) * 2 - 1, *load_sr1024(out), steps=2, generator=g)
    assert big.shape == (1, 3, 1024, 1024), big.shape
    var = load_unclip(out, variation=True)
    image = var(Image.fromarray((image[0] * 255).round().astype(np.uint8)), decoder_num_inference_steps=2,
                super_res_num_inference_steps=2, generator=g, output_type="np").images
    assert image.shape == (1, 256, 256, 3), image.shape
    print(f"ok: {out} loads in diffusers and generates 256² (text, variation) and 1024² (second upsampler)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--runs", type=Path, default=training.RUNS, help="directory holding the default run names")
    for flag, name in SHIPPED_RUNS:
        ap.add_argument(f"--{flag}", type=Path, help=f"run directory (default RUNS/{name})")
    ap.add_argument("--base", type=Path,
                    help="an assembled checkpoint (e.g. export/shapes/checkpoint): components whose run is not "
                         "named by its flag are taken from it, so a new decoder (say) needs no other run")
    ap.add_argument("--no-check", action="store_true", help="skip the diffusers generation check")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.given = {flag for flag, _ in SHIPPED_RUNS if getattr(args, flag) is not None}
    for flag, name in SHIPPED_RUNS:
        if getattr(args, flag) is None:
            setattr(args, flag, args.runs / name)
    parts = build(args)
    save(parts, args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(json.dumps({"out": str(args.out), "bytes": total, "parameters": provenance(parts)["parameters"]}))
    if not args.no_check:
        check(args.out)


if __name__ == "__main__":
    main()
