"""Builds the shapes unCLIP's networks from the JSON configs in `configs/`.

Every network is a stock diffusers/transformers class with Karlo's structure and a small width
(diffusers' Karlo conversion script): CLIPTextModelWithProjection / CLIPVisionModelWithProjection,
PriorTransformer, UnCLIPTextProjModel, UNet2DConditionModel (decoder, 6 output channels for the
learned variance), UNet2DModel (super-resolution, no attention). The schedulers are Karlo's
UnCLIPScheduler settings. Nothing here trains; the train_*.py scripts and assemble.py share it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
sys.path.insert(0, str(HERE.parent))
from _common import clip_vocab, register_text_proj  # noqa: E402

MAX_LENGTH = 77
VOCAB_SIZE = 49408
BOS, EOS, PAD = 49406, 49407, 0
# CLIP's image normalization (openai/CLIP `_transform`), as the bundle's image processor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_config(name_or_path: str | Path) -> dict:
    """`configs/<name>.json`, or a path to a JSON file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIGS / f"{name_or_path}.json"
    return json.loads(path.read_text())


def tokenizer():
    """The real CLIP BPE (49,408 tokens) with Karlo's pad token "!" (id 0), as make_tiny.py."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab()
    tok = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=MAX_LENGTH)
    ids = tok("a red circle on a blue background").input_ids
    assert ids == [49406, 320, 736, 7117, 525, 320, 1746, 5994, 49407], ids
    return tok


def text_encoder(cfg: dict):
    """CLIP text tower. Its width must equal the embedding width: UnCLIPTextProjModel projects the
    token states with a Linear(clip_embeddings_dim, …), so hidden_size == projection_dim."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    t = cfg["text"]
    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=cfg["embed_dim"],
            projection_dim=cfg["embed_dim"],
            intermediate_size=t["intermediate_size"],
            num_attention_heads=t["num_attention_heads"],
            num_hidden_layers=t["num_hidden_layers"],
            max_position_embeddings=MAX_LENGTH,
            layer_norm_eps=1e-5,
            hidden_act="quick_gelu",
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )
    )


def image_encoder(cfg: dict):
    """CLIP ViT image tower at 224 px (the bundle's image processor crops to 224)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    v = cfg["vision"]
    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=v["hidden_size"],
            projection_dim=cfg["embed_dim"],
            intermediate_size=v["intermediate_size"],
            num_attention_heads=v["num_attention_heads"],
            num_hidden_layers=v["num_hidden_layers"],
            image_size=v["image_size"],
            patch_size=v["patch_size"],
            layer_norm_eps=1e-5,
            hidden_act="quick_gelu",
        )
    )


def feature_extractor():
    """CLIP preprocessing (openai/CLIP `_transform`): shortest edge 224 bicubic, center crop 224."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": 224}, resample=3, do_center_crop=True,
        crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True,
    )


def prior(cfg: dict, embed_dim: int):
    """Karlo's PriorTransformer structure (77 text tokens + 4 extra: text embedding, time, noisy
    image embedding, prd token), narrow and shallow."""
    from diffusers import PriorTransformer

    return PriorTransformer(
        num_attention_heads=cfg["num_attention_heads"],
        attention_head_dim=cfg["attention_head_dim"],
        num_layers=cfg["num_layers"],
        embedding_dim=embed_dim,
        num_embeddings=MAX_LENGTH,
        additional_embeddings=4,
        dropout=cfg.get("dropout", 0.0),
    )


def decoder(cfg: dict):
    """Karlo's decoder structure (GLIDE-style UNet2DConditionModel: simple cross-attention over
    [4 CLIP tokens + text tokens], identity class embedding carrying the CLIP time embedding,
    scale-shift norm, 6 output channels = ε and the learned variance interpolation)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64,
        in_channels=3,
        out_channels=6,
        down_block_types=tuple(cfg["down_block_types"]),
        up_block_types=tuple(cfg["up_block_types"]),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=tuple(cfg["block_out_channels"]),
        layers_per_block=cfg["layers_per_block"],
        norm_num_groups=cfg["norm_num_groups"],
        cross_attention_dim=cfg["cross_attention_dim"],
        attention_head_dim=cfg["attention_head_dim"],
        resnet_time_scale_shift="scale_shift",
        class_embed_type="identity",
    )


def text_proj(cfg: dict, embed_dim: int):
    """UnCLIPTextProjModel: time_embed_dim is the decoder's (4 × its first block's channels)."""
    register_text_proj()
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    return UnCLIPTextProjModel(
        clip_extra_context_tokens=cfg.get("clip_extra_context_tokens", 4),
        clip_embeddings_dim=embed_dim,
        time_embed_dim=4 * cfg["block_out_channels"][0],
        cross_attention_dim=cfg["cross_attention_dim"],
    )


def super_res(cfg: dict):
    """Karlo's super-resolution structure (UNet2DModel on cat(noisy, upsampled low-res), ResNet
    down/up blocks, no attention: fully convolutional, so it trains on crops)."""
    from diffusers import UNet2DModel

    n = len(cfg["block_out_channels"])
    return UNet2DModel(
        sample_size=cfg["sample_size"],
        in_channels=6,
        out_channels=3,
        layers_per_block=cfg["layers_per_block"],
        down_block_types=("ResnetDownsampleBlock2D",) * n,
        up_block_types=("ResnetUpsampleBlock2D",) * n,
        block_out_channels=tuple(cfg["block_out_channels"]),
        norm_num_groups=cfg["norm_num_groups"],
        resnet_time_scale_shift=cfg.get("resnet_time_scale_shift", "default"),
        add_attention=False,
    )


def schedulers(decoder_prediction: str = "epsilon", super_res_prediction: str = "epsilon") -> dict:
    """Karlo's three schedulers (diffusers scripts/convert_kakao_brain_unclip_to_diffusers.py):
    squaredcos_cap_v2 betas, 1000 train steps; the decoder's and the upsamplers' predict what their
    training did (train_decoder.py / train_superres.py `prediction_type`)."""
    from diffusers import UnCLIPScheduler

    return {
        "prior_scheduler": UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                           num_train_timesteps=1000, clip_sample_range=5.0),
        "decoder_scheduler": UnCLIPScheduler(variance_type="learned_range", prediction_type=decoder_prediction,
                                             num_train_timesteps=1000),
        "super_res_scheduler": UnCLIPScheduler(variance_type="fixed_small_log", prediction_type=super_res_prediction,
                                               num_train_timesteps=1000),
    }


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fp32_bytes(module: torch.nn.Module) -> int:
    """Bytes of the module's saved floating-point tensors in float32."""
    return sum(4 * t.numel() for t in module.state_dict().values() if t.is_floating_point())
