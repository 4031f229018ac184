"""Shared helpers of the export scripts: paths, the CLIP BPE vocabulary, diffusers loading."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_KARLO = REPO / "tests" / "fixtures" / "tiny-karlo"

# The real CLIP BPE ships inside the PyPI package open-clip-torch (bpe_simple_vocab_16e6.txt.gz).
OPEN_CLIP_VOCAB = "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte → printable unicode map (openai/CLIP `simple_tokenizer.py`,
    `bytes_to_unicode`). transformers 5 no longer exports it, so it lives here."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def open_clip_bpe_path() -> Path:
    """Locates open_clip's vocabulary file without importing open_clip (which needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "open-clip-torch is not installed: `pip install --no-deps open-clip-torch==3.3.0` "
            "(it ships the CLIP BPE vocabulary)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / OPEN_CLIP_VOCAB
    if not path.exists():
        raise SystemExit(f"{path} missing from the open-clip-torch package")
    return path


def clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (49,408 tokens) and merges (48,894) built from the BPE file as openai/CLIP
    `SimpleTokenizer.__init__` does."""
    lines = gzip.open(open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    return {tok: i for i, tok in enumerate(vocab)}, merges


def register_text_proj() -> None:
    """diffusers 0.42.1 cannot resolve `UnCLIPTextProjModel` from model_index.json ("diffusers has
    no class UnCLIPTextProjModel"): the class lives only in the deprecated pipeline package.
    Registering it on the top-level module lets `from_pretrained` load the Karlo layout."""
    import diffusers
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    setattr(diffusers, "UnCLIPTextProjModel", UnCLIPTextProjModel)


def load_unclip(checkpoint: Path, variation: bool = False):
    """Loads a Karlo-layout checkpoint with diffusers, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    register_text_proj()
    from diffusers import UnCLIPImageVariationPipeline, UnCLIPPipeline

    if variation:
        from transformers import CLIPImageProcessor

        base = UnCLIPPipeline.from_pretrained(checkpoint)
        from transformers import CLIPVisionModelWithProjection

        return UnCLIPImageVariationPipeline(
            decoder=base.decoder,
            text_encoder=base.text_encoder,
            tokenizer=base.tokenizer,
            text_proj=base.text_proj,
            feature_extractor=CLIPImageProcessor.from_pretrained(checkpoint / "feature_extractor"),
            image_encoder=CLIPVisionModelWithProjection.from_pretrained(checkpoint / "image_encoder"),
            super_res_first=base.super_res_first,
            super_res_last=base.super_res_last,
            decoder_scheduler=base.decoder_scheduler,
            super_res_scheduler=base.super_res_scheduler,
        )
    return UnCLIPPipeline.from_pretrained(checkpoint)
