"""Averages the decoder (UNet + text_proj) weights of two assembled checkpoints into a third
("model soup", Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models
improves accuracy without increasing inference time", §3: uniform soup). Every other component is
OUT's copy of A's.

    python export/shapes/average_decoders.py A B OUT [--weight-b 0.5]

Why (docs/shapes-eval.md, "Why an average"): decoder_nc_mid4 at step 8795 (A, shipped on 2026-12-06) draws
colors and backgrounds right and outlines worse; the same run at step 19709 (B) draws outlines
better and confuses red with orange. Both lie on one training trajectory, so their average is a
model of the same basin; measured at --images 4, the average beats both (92.5% all attributes
against 84.0% and 86.8%). A and B must come from the same CLIP (their conditioning spaces must
agree): checked from shapes_unclip.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

WEIGHTS = "diffusion_pytorch_model.safetensors"
PARTS = ("decoder", "text_proj")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="assembled checkpoint (assemble.py)")
    ap.add_argument("b", type=Path, help="assembled checkpoint with the same decoder architecture and CLIP")
    ap.add_argument("out", type=Path)
    ap.add_argument("--weight-b", type=float, default=0.5, help="B's share of the average")
    args = ap.parse_args()
    if args.out.resolve() in (args.a.resolve(), args.b.resolve()):
        raise SystemExit("OUT must be a new directory, not A or B")
    for p in (args.a, args.b):
        if not (p / "shapes_unclip.json").exists():
            raise SystemExit(f"{p} has no shapes_unclip.json: give checkpoints written by assemble.py")
    provenance = [json.loads((p / "shapes_unclip.json").read_text()) for p in (args.a, args.b)]
    clips = [(p["components"]["clip"]["run"], p["components"]["clip"]["step"]) for p in provenance]
    if clips[0] != clips[1]:
        raise SystemExit(f"A's CLIP is {clips[0]}, B's {clips[1]}: decoders of different CLIPs cannot be averaged")
    for part in PARTS:
        for p in (args.a, args.b):
            if not (p / part / WEIGHTS).exists():
                raise SystemExit(f"{p / part / WEIGHTS} is missing: give checkpoints written by assemble.py")
        if (args.a / part / "config.json").read_text() != (args.b / part / "config.json").read_text():
            raise SystemExit(f"{part}/config.json differs between A and B: only one architecture averages")
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.a, args.out)
    w = args.weight_b
    for part in PARTS:
        a, b = load_file(str(args.a / part / WEIGHTS)), load_file(str(args.b / part / WEIGHTS))
        if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
            raise SystemExit(f"{part}: A and B have different architectures")
        mixed = {k: ((1 - w) * a[k].float() + w * b[k].float()).to(a[k].dtype).contiguous() for k in a}
        save_file(mixed, str(args.out / part / WEIGHTS))
    record = provenance[0]
    decoders = [p["components"]["decoder"] for p in provenance]
    runs = sorted({d["run"] for d in decoders})
    # "run", "step" and "config" stay, as assemble.py writes them, for the tools that read a
    # checkpoint's provenance (train_decoder.py --init-weights, assemble.py --base, probe_samples.py):
    # the run (or runs) and the later step; "average" says what the weights are.
    record["components"]["decoder"] = {
        "run": " + ".join(runs),
        "step": max(d["step"] for d in decoders),
        "config": decoders[0]["config"],
        "average": [{k: v for k, v in d.items() if k != "config"} for d in decoders],
        "weight_b": w,
        "made_by": "average_decoders.py",
    }
    (args.out / "shapes_unclip.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.out}: decoder and text_proj = {1 - w:g}·A + {w:g}·B "
          f"(A: {decoders[0].get('run')} step {decoders[0].get('step')}, B: {decoders[1].get('run')} step "
          f"{decoders[1].get('step')})")


if __name__ == "__main__":
    main()
