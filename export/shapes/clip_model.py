"""The trained shapes CLIP as the later stages use it: text conditioning as diffusers'
`UnCLIPPipeline._encode_prompt` computes it, and image embeddings of rendered scenes.

Token ids are padded to 77 with "!" (id 0) and the text encoder runs without an attention mask,
exactly as the pipeline calls it. For speed, training runs the encoder only up to the batch's
longest caption and pads the token states with zeros to 77: CLIP's causal mask makes the real
positions independent of what follows, and the prior and decoder mask padded positions out of
attention (additive −10000, exactly zero weight in float32), so the result is the same function.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import models
import training


class ClipTowers:
    """Text and image towers of a CLIP run, frozen."""

    def __init__(self, run_dir: Path, use_ema: bool = False):
        state = training.require_run(run_dir, "CLIP")
        self.config = state["config"]
        self.text = models.text_encoder(self.config).eval().requires_grad_(False)
        self.vision = models.image_encoder(self.config).eval().requires_grad_(False)
        self.text.load_state_dict(state["text_encoder"])
        self.vision.load_state_dict(state["image_encoder"])
        self.step = state["step"]
        self.tokenizer = models.tokenizer()
        self._ids: dict[str, list[int]] = {}

    def token_ids(self, captions: list[str]) -> list[list[int]]:
        """Unpadded ids (with BOS/EOS, truncated to 77), cached per caption."""
        missing = [c for c in dict.fromkeys(captions) if c not in self._ids]
        if missing:
            for c, ids in zip(missing, self.tokenizer(missing, truncation=True, max_length=models.MAX_LENGTH).input_ids):
                self._ids[c] = ids
        return [self._ids[c] for c in captions]

    @torch.no_grad()
    def encode_text(self, captions: list[str], full_length: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(text_embeds (B, D), last_hidden_state (B, L, D), attention mask (B, L) bool), where L is
        77 (as the pipeline) or, with full_length=False, the longest caption's token count."""
        ids = self.token_ids(captions)
        longest = max(len(i) for i in ids)
        batch = torch.full((len(ids), longest), models.PAD, dtype=torch.long)
        mask = torch.zeros(len(ids), longest, dtype=torch.bool)
        for k, i in enumerate(ids):
            batch[k, : len(i)] = torch.tensor(i)
            mask[k, : len(i)] = True
        out = self.text(batch)
        states = out.last_hidden_state
        if full_length:
            states = pad_tokens(states, models.MAX_LENGTH)
            mask = pad_tokens(mask, models.MAX_LENGTH)
        return out.text_embeds, states, mask

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        return self.vision(clip_pixels(images)).image_embeds


def pad_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    """Pads the token axis (1) with zeros / False up to `length`."""
    pad = torch.zeros(x.shape[0], length - x.shape[1], *x.shape[2:], dtype=x.dtype)
    return torch.cat([x, pad], dim=1)


def clip_pixels(images: list[Image.Image]) -> torch.Tensor:
    """224×224 RGB images → CLIP-normalized (B, 3, 224, 224). Scenes are rendered at 224 directly,
    which is what `CLIPImageProcessor` (resize shortest edge 224, center crop) leaves of a square
    image, without its resampling."""
    a = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 255.0
    a = (a - np.array(models.CLIP_MEAN, dtype=np.float32)) / np.array(models.CLIP_STD, dtype=np.float32)
    return torch.from_numpy(a.transpose(0, 3, 1, 2).copy())
