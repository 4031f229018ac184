"""Re-creates the CLIP run directory from the committed shapes checkpoint, so a new session can
embed the scenes and fine-tune the decoder (`train_decoder.py --init-weights`) without training
CLIP again.

    python export/shapes/unpack_clip.py [CKPT] [--out export/shapes/runs/clip]

CKPT (default export/shapes/checkpoint) is what assemble.py writes; its shapes_unclip.json holds
the CLIP run's config and step. The run gets the two towers' weights at that step. The checkpoint
keeps neither the contrastive temperature nor the optimizer: the run gets the initial temperature
and a fresh optimizer state, and is marked `unpacked` so that train_clip.py refuses to continue
training it (that would change every embedding the decoder was trained on).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import training  # noqa: E402

training.ensure_import_path()
from assemble import DEFAULT_OUT  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--out", type=Path, default=training.RUNS / "clip")
    args = ap.parse_args()
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    provenance = training.assembled_components(args.checkpoint)["clip"]
    config, step = provenance["config"], provenance["step"]
    if (args.out / training.CHECKPOINT).exists():
        raise SystemExit(f"{args.out} already holds a CLIP run: delete it first")
    # train_clip.py's modules are these classes, so ClipTowers loads the state dicts unchanged.
    text = CLIPTextModelWithProjection.from_pretrained(args.checkpoint / "text_encoder")
    vision = CLIPVisionModelWithProjection.from_pretrained(args.checkpoint / "image_encoder")
    logit_scale = torch.tensor(math.log(1 / 0.07))
    params = list(text.parameters()) + list(vision.parameters()) + [torch.nn.Parameter(logit_scale)]
    state = {"step": step, "config": config, "text_encoder": text.state_dict(),
             "image_encoder": vision.state_dict(), "logit_scale": logit_scale,
             "optimizer": training.optimizer(params, config["train"]).state_dict(), "unpacked": str(args.checkpoint)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.save(state, args.out / training.CHECKPOINT)
    print(f"wrote {args.out / training.CHECKPOINT}: CLIP step {step} from {args.checkpoint}")


if __name__ == "__main__":
    main()
