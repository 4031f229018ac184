"""Makes a random tiny Kandinsky 2.2 as diffusers saves it: two checkpoint directories,
`<out>/decoder` (KandinskyV22Pipeline: unet, scheduler, movq) and `<out>/prior`
(KandinskyV22PriorPipeline: prior, text_encoder, tokenizer, image_encoder, image_processor,
scheduler), the layout `export/export_bundle.py DECODER_DIR OUT --prior PRIOR_DIR` reads.

Sizes follow diffusers' own Kandinsky 2.2 tests (`tests/pipelines/kandinsky2_2/test_kandinsky.py`
and `test_kandinsky_prior.py` dummies: hidden 32, prior 2 heads × 12, 1 layer, UNet (32, 64) with
`addition_embed_type="image"` and 8 output channels) with the real model's MoVQ factor 8 (four
blocks of 32 channels, `norm_type="spatial"`), so a 64×64 image has 8×8 latents as a 512×512 one
has 64×64. What defaults to zero and would hide
bugs (the prior's clip_mean/clip_std, positional and prd embeddings) gets random values. The CLIP
text and image towers, tokenizer and image processor are tiny-karlo's (export/make_tiny.py).
Schedulers: the prior's `UnCLIPScheduler` (fixed_small_log, sample prediction, clip range 10) and
the decoder's `DDPMScheduler` as Kandinsky 2.2's decoder (linear betas 0.00085 → 0.012, no
clipping, steps_offset 1, learned_range). Deterministic: fixed torch seed, CPU only.

    python export/make_tiny_kandinsky.py [OUT_DIR]   (default tests/fixtures/tiny-kandinsky)
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
from _common import REPO, TINY_KARLO  # noqa: E402
from make_tiny import HIDDEN, tiny_prior  # noqa: E402

SEED = 0
TINY_KANDINSKY = REPO / "tests" / "fixtures" / "tiny-kandinsky"
# DDPMScheduler of Kandinsky 2.2's decoder (its scheduler_config.json).
DECODER_SCHEDULER = dict(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         steps_offset=1, timestep_spacing="leading", variance_type="learned_range",
                         prediction_type="epsilon", num_train_timesteps=1000)


def build(out: Path) -> None:
    from diffusers import (DDPMScheduler, KandinskyV22Pipeline, KandinskyV22PriorPipeline, UnCLIPScheduler,
                           UNet2DConditionModel, VQModel)
    from transformers import (CLIPImageProcessor, CLIPTextModelWithProjection, CLIPTokenizer,
                              CLIPVisionModelWithProjection)

    torch.manual_seed(SEED)
    # The CLIP towers, tokenizer and image processor are tiny-karlo's (the same classes and width):
    # the same files, which git stores once (its 49,408-token embedding table is most of a tiny
    # checkpoint).
    tokenizer = CLIPTokenizer.from_pretrained(TINY_KARLO / "tokenizer")
    text_encoder = CLIPTextModelWithProjection.from_pretrained(TINY_KARLO / "text_encoder").eval()
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(TINY_KARLO / "image_encoder").eval()
    image_processor = CLIPImageProcessor.from_pretrained(TINY_KARLO / "feature_extractor")
    assert text_encoder.config.projection_dim == HIDDEN == image_encoder.config.projection_dim

    prior = tiny_prior()

    unet = UNet2DConditionModel(
        in_channels=4, out_channels=8, addition_embed_type="image", encoder_hid_dim_type="image_proj",
        encoder_hid_dim=HIDDEN, cross_attention_dim=HIDDEN,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
        attention_head_dim=4, resnet_time_scale_shift="scale_shift", class_embed_type=None).eval()
    # MoVQ: four blocks (factor 8, as the real one), 32 channels each (SpatialNorm's 32 groups).
    movq = VQModel(
        in_channels=3, out_channels=3, latent_channels=4, vq_embed_dim=4, num_vq_embeddings=12,
        block_out_channels=[32, 32, 32, 32],
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        layers_per_block=1, norm_num_groups=8, norm_type="spatial").eval()

    prior_scheduler = UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                      num_train_timesteps=1000, clip_sample=True, clip_sample_range=10.0)
    decoder_scheduler = DDPMScheduler(**DECODER_SCHEDULER)

    if out.exists():
        shutil.rmtree(out)
    KandinskyV22PriorPipeline(prior=prior, image_encoder=image_encoder, text_encoder=text_encoder,
                              tokenizer=tokenizer, scheduler=prior_scheduler,
                              image_processor=image_processor).save_pretrained(out / "prior", safe_serialization=True)
    KandinskyV22Pipeline(unet=unet, scheduler=decoder_scheduler, movq=movq).save_pretrained(
        out / "decoder", safe_serialization=True)


def combined(out: Path, img2img: bool = False):
    """diffusers' combined pipeline over the two saved checkpoints (the parity target)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import (KandinskyV22CombinedPipeline, KandinskyV22Img2ImgCombinedPipeline, KandinskyV22Pipeline,
                           KandinskyV22PriorPipeline)

    prior = KandinskyV22PriorPipeline.from_pretrained(out / "prior")
    decoder = KandinskyV22Pipeline.from_pretrained(out / "decoder")
    cls = KandinskyV22Img2ImgCombinedPipeline if img2img else KandinskyV22CombinedPipeline
    return cls(unet=decoder.unet, scheduler=decoder.scheduler, movq=decoder.movq, prior_prior=prior.prior,
               prior_image_encoder=prior.image_encoder, prior_text_encoder=prior.text_encoder,
               prior_tokenizer=prior.tokenizer, prior_scheduler=prior.scheduler,
               prior_image_processor=prior.image_processor)


def smoke_test(out: Path) -> None:
    """Both checkpoints load in diffusers and generate, text to image and image to image."""
    pipe = combined(out)
    g = torch.Generator("cpu").manual_seed(0)
    image = pipe("a red circle on a blue background", prior_num_inference_steps=2, num_inference_steps=2,
                 height=64, width=128, generator=g, output_type="np").images
    assert image.shape == (1, 64, 128, 3), image.shape
    from PIL import Image

    i2i = combined(out, img2img=True)
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    image = i2i("a blue square", image=init, strength=0.5, prior_num_inference_steps=2, num_inference_steps=4,
                height=64, width=64, generator=g, output_type="np").images
    assert image.shape == (1, 64, 64, 3), image.shape
    print(f"ok: {out} loads in diffusers and generates (text to image 64x128, image to image 64x64)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", type=Path, default=TINY_KANDINSKY)
    args = ap.parse_args()
    torch.set_num_threads(1)
    build(args.out)
    smoke_test(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(json.dumps({"out": str(args.out), "bytes": total}))


if __name__ == "__main__":
    main()
