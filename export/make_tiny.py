"""Makes a random tiny unCLIP in the Karlo layout: tests/fixtures/tiny-karlo/.

Sizes follow diffusers' own UnCLIP tests (v0.34 `tests/pipelines/unclip/test_unclip.py`: hidden 32,
cross-attention 100, prior 2 heads × 12, 1 layer) with Karlo's spatial shapes (decoder 64×64 with
6 output channels for the learned variance, super-resolution 256×256) and Karlo's tokenizer (the
real CLIP BPE, max length 77, pad token "!"). Everything that defaults to zero and would hide
bugs (prior clip_mean/clip_std, positional and prd embeddings, text_proj's null image embedding)
gets nonzero random values. Deterministic: fixed torch seed, CPU only.

    python export/make_tiny.py [OUT_DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TINY_KARLO, load_unclip, clip_vocab, register_text_proj  # noqa: E402

SEED = 0
HIDDEN = 32  # CLIP embedding width (text and image projection), prior embedding_dim
# Decoder first block channels: half the test UNet's 32 (with 8 norm groups) to fit the 40 MB fixture
# budget; the time embedding (4×) and text_proj follow it.
TIME_INPUT = 16
CROSS_ATTENTION = 100


def tiny_prior():
    """diffusers' test prior (2 heads × 12, 1 layer) of width HIDDEN, with random values where it
    defaults to zero and would hide bugs (clip_mean/clip_std, positional and prd embeddings); draws
    from torch's global generator."""
    from diffusers import PriorTransformer

    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=HIDDEN, num_layers=1)
    with torch.no_grad():
        prior.clip_mean.copy_(torch.randn(1, HIDDEN) * 0.5)
        prior.clip_std.copy_(torch.rand(1, HIDDEN) + 0.5)
        prior.positional_embedding.normal_(0.0, 0.5)
        prior.prd_embedding.normal_(0.0, 0.5)
    return prior.eval()


def build(out: Path) -> None:
    register_text_proj()
    from diffusers import UnCLIPPipeline, UNet2DConditionModel, UNet2DModel, UnCLIPScheduler
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(SEED)

    vocab, merges = clip_vocab()
    # Karlo's tokenizer pads with "!" (id 0), not <|endoftext|> (diffusers' Karlo conversion script).
    # transformers 5's CLIPTokenizer takes the vocabulary itself (`vocab=`, `merges=`); the old
    # `vocab_file=` keyword is silently ignored and leaves a 3-token vocabulary.
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=77)
    ids = tokenizer("a red circle on a blue background").input_ids
    assert ids == [49406, 320, 736, 7117, 525, 320, 1746, 5994, 49407], ids

    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=HIDDEN,
            projection_dim=HIDDEN,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=5,
            max_position_embeddings=77,
            layer_norm_eps=1e-5,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0,
        )
    ).eval()

    prior = tiny_prior()

    text_proj = UnCLIPTextProjModel(
        clip_embeddings_dim=HIDDEN, time_embed_dim=TIME_INPUT * 4, cross_attention_dim=CROSS_ATTENTION
    )
    with torch.no_grad():
        text_proj.learned_classifier_free_guidance_embeddings.normal_(0.0, 1.0)
    text_proj.eval()

    decoder = UNet2DConditionModel(
        sample_size=64,
        in_channels=3,
        out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(TIME_INPUT, TIME_INPUT * 2),
        norm_num_groups=8,
        layers_per_block=1,
        cross_attention_dim=CROSS_ATTENTION,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type="identity",
    ).eval()

    def super_res() -> UNet2DModel:
        return UNet2DModel(
            sample_size=256,
            layers_per_block=1,
            down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
            up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
            # Half the test UNet's width (and 8 norm groups): the 256² stage dominates test time and
            # the fixture budget (40 MB for all fixtures), and width does not change any code path.
            block_out_channels=(16, 32),
            norm_num_groups=8,
            in_channels=6,
            out_channels=3,
            add_attention=False,  # as Karlo's super-res UNets
        ).eval()

    super_res_first = super_res()
    super_res_last = super_res()

    # Scheduler settings of Karlo (diffusers scripts/convert_kakao_brain_unclip_to_diffusers.py).
    prior_scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000, clip_sample_range=5.0
    )
    decoder_scheduler = UnCLIPScheduler(
        variance_type="learned_range", prediction_type="epsilon", num_train_timesteps=1000
    )
    super_res_scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log", prediction_type="epsilon", num_train_timesteps=1000
    )

    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=HIDDEN,
            projection_dim=HIDDEN,
            num_hidden_layers=5,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=224,
            patch_size=14,
            layer_norm_eps=1e-5,
            hidden_act="quick_gelu",
        )
    ).eval()
    # CLIP's preprocessing (openai/CLIP `_transform`): shortest edge 224 bicubic, center crop 224.
    feature_extractor = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": 224},
        resample=3,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )

    pipe = UnCLIPPipeline(
        prior=prior,
        decoder=decoder,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_proj=text_proj,
        super_res_first=super_res_first,
        super_res_last=super_res_last,
        prior_scheduler=prior_scheduler,
        decoder_scheduler=decoder_scheduler,
        super_res_scheduler=super_res_scheduler,
    )
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    # The image tower is not part of UnCLIPPipeline; Karlo's image-variation checkpoint keeps it in
    # these two folders beside the others.
    image_encoder.save_pretrained(out / "image_encoder", safe_serialization=True)
    feature_extractor.save_pretrained(out / "feature_extractor")


def smoke_test(out: Path) -> None:
    """The layout must load in diffusers and generate (issue: UnCLIPPipeline.from_pretrained)."""
    pipe = load_unclip(out)
    g = torch.Generator("cpu").manual_seed(0)
    image = pipe(
        "a red circle on a blue background",
        prior_num_inference_steps=2,
        decoder_num_inference_steps=2,
        super_res_num_inference_steps=2,
        generator=g,
        output_type="np",
    ).images
    assert image.shape == (1, 256, 256, 3), image.shape
    ids = pipe.tokenizer("a red circle on a blue background", padding="max_length", max_length=77).input_ids
    assert ids[:10] == [49406, 320, 736, 7117, 525, 320, 1746, 5994, 49407, 0], ids[:10]
    var = load_unclip(out, variation=True)
    from PIL import Image

    img = Image.new("RGB", (300, 200), (200, 30, 30))
    image = var(img, decoder_num_inference_steps=2, super_res_num_inference_steps=2, generator=g, output_type="np").images
    assert image.shape == (1, 256, 256, 3), image.shape
    print(f"ok: {out} loads in diffusers and generates 256x256 (text and variation)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", type=Path, default=TINY_KARLO)
    args = ap.parse_args()
    build(args.out)
    smoke_test(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(json.dumps({"out": str(args.out), "bytes": total}))


if __name__ == "__main__":
    main()
