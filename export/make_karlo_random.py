"""Makes a random-weight unCLIP of exactly the real Karlo's size (kakaobrain/karlo-v1-alpha), in the
Karlo layout, for benchmarks at true scale: it costs the FLOPs and memory of the real model with
nothing downloaded (every configuration below comes from diffusers'
`scripts/convert_kakao_brain_unclip_to_diffusers.py`).

    python export/make_karlo_random.py OUT_DIR [--seed N] [--image-encoder] [--shrink K]

~3.4 B parameters, ~13.6 GB in fp32 (14.8 GB with --image-encoder, the ViT-L/14 tower of
karlo-v1-alpha-image-variations). Not committed. Components are built, saved and freed one at a
time, so peak memory stays near the largest one (the prior, ~4.1 GB) rather than the whole model.
Random weights follow each module's own initialization; what defaults to zero and would hide
bugs (prior clip_mean/clip_std, text_proj's null image embedding) gets nonzero random values.

--shrink K divides every width by K (and keeps 1 layer per block): a smoke test of this script
and of the exporter in seconds, not a Karlo-size model.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "shapes"))
from _common import register_text_proj  # noqa: E402
import models as shapes_models  # noqa: E402  (Karlo's tokenizer, schedulers, CLIP preprocessing)


def components(shrink: int) -> dict:
    """Constructors of every component at Karlo size (or divided by `shrink`)."""
    from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection

    s = shrink
    layers = 3 if s == 1 else 1
    embed = 768 // s  # CLIP ViT-L/14 embedding (text and image projection)
    unet_channels = tuple(c // s for c in (320, 640, 960, 1280))
    time_embed = unet_channels[0] * 4  # 1280 at full size
    cross = 1536 // s

    def text_encoder():
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=49408, hidden_size=embed, projection_dim=embed, intermediate_size=3072 // s,
            num_attention_heads=12, num_hidden_layers=12 if s == 1 else 2, max_position_embeddings=77,
            layer_norm_eps=1e-5, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
            pad_token_id=0,
        ))

    def prior():
        # PriorTransformer() defaults: 32 heads × 64, 20 layers, embedding 768, 77 tokens + 4.
        p = PriorTransformer(num_attention_heads=32 // s if s <= 32 else 1, attention_head_dim=64,
                             num_layers=20 if s == 1 else 1, embedding_dim=embed)
        with torch.no_grad():
            p.clip_mean.normal_(0.0, 0.5)
            p.clip_std.uniform_(0.5, 1.5)
        return p

    def text_proj():
        t = UnCLIPTextProjModel(clip_embeddings_dim=embed, time_embed_dim=time_embed, cross_attention_dim=cross)
        with torch.no_grad():
            t.learned_classifier_free_guidance_embeddings.normal_(0.0, 1.0)
        return t

    def decoder():
        return UNet2DConditionModel(
            sample_size=64, in_channels=3, out_channels=6, layers_per_block=layers,
            down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
            up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=unet_channels,
            norm_num_groups=32 if s == 1 else 4, cross_attention_dim=cross, attention_head_dim=64 if s == 1 else 4,
            class_embed_type="identity", resnet_time_scale_shift="scale_shift",
        )

    def super_res():
        return UNet2DModel(
            sample_size=256, in_channels=6, out_channels=3, layers_per_block=layers,
            down_block_types=("ResnetDownsampleBlock2D",) * 4, up_block_types=("ResnetUpsampleBlock2D",) * 4,
            block_out_channels=unet_channels, norm_num_groups=32 if s == 1 else 4, add_attention=False,
        )

    def image_encoder():
        return CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1024 // s, projection_dim=embed, intermediate_size=4096 // s, num_attention_heads=16,
            num_hidden_layers=24 if s == 1 else 2, image_size=224, patch_size=14, layer_norm_eps=1e-5,
            hidden_act="quick_gelu",
        ))

    return {
        "text_encoder": ("transformers", "CLIPTextModelWithProjection", text_encoder),
        "prior": ("diffusers", "PriorTransformer", prior),
        "text_proj": ("diffusers", "UnCLIPTextProjModel", text_proj),
        "decoder": ("diffusers", "UNet2DConditionModel", decoder),
        "super_res_first": ("diffusers", "UNet2DModel", super_res),
        "super_res_last": ("diffusers", "UNet2DModel", super_res),
        "image_encoder": ("transformers", "CLIPVisionModelWithProjection", image_encoder),
    }


def build(out: Path, seed: int, with_image_encoder: bool, shrink: int) -> dict:
    import diffusers

    register_text_proj()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    index = {"_class_name": "UnCLIPPipeline", "_diffusers_version": diffusers.__version__}
    report = {}
    for k, (name, (library, cls, make)) in enumerate(components(shrink).items()):
        if name == "image_encoder" and not with_image_encoder:
            continue
        started = time.time()
        torch.manual_seed(seed + k)  # each component has its own stream: rebuilding one is reproducible
        module = make().eval()
        parameters = sum(p.numel() for p in module.parameters())
        module.save_pretrained(out / name, safe_serialization=True)
        del module
        gc.collect()
        if name != "image_encoder":  # the image tower is not part of UnCLIPPipeline
            index[name] = [library, cls]
        report[name] = {"parameters": parameters, "seconds": round(time.time() - started, 1)}
        print(f"{name}: {parameters / 1e6:.1f} M parameters, {report[name]['seconds']} s", flush=True)
    shapes_models.tokenizer().save_pretrained(out / "tokenizer")
    index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    for name, scheduler in shapes_models.schedulers().items():
        scheduler.save_pretrained(out / name)
        index[name] = ["diffusers", "UnCLIPScheduler"]
    if with_image_encoder:
        shapes_models.feature_extractor().save_pretrained(out / "feature_extractor")
    (out / "model_index.json").write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    return report


def smoke_test(out: Path) -> None:
    """The layout loads in diffusers and generates (2 steps per stage)."""
    sys.path.insert(0, str(HERE))
    from _common import load_unclip

    pipe = load_unclip(out)
    image = pipe("a red circle on a blue background", prior_num_inference_steps=2, decoder_num_inference_steps=2,
                 super_res_num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(0),
                 output_type="np").images
    assert image.shape == (1, 256, 256, 3), image.shape
    print(f"ok: {out} loads in diffusers and generates 256x256")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-encoder", action="store_true", help="also the ViT-L/14 image tower (variations)")
    ap.add_argument("--shrink", type=int, default=1, help="divide every width by K (smoke test; not Karlo size)")
    ap.add_argument("--check", action="store_true", help="generate 2 steps per stage with diffusers afterwards")
    args = ap.parse_args()
    if args.shrink < 1 or 768 % args.shrink:
        raise SystemExit("--shrink must divide 768 (1, 2, 4, 8, 16, …)")
    torch.set_grad_enabled(False)
    report = build(args.out, args.seed, args.image_encoder, args.shrink)
    if args.check:
        smoke_test(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(json.dumps({"out": str(args.out), "bytes": total,
                      "parameters": sum(r["parameters"] for r in report.values()), "components": report}))


if __name__ == "__main__":
    main()
