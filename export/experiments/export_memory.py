"""Peak RSS of one `export_bundle.Exporter.export` call on a synthetic module over protobuf's 2 GB
limit (a stack of 4096×4096 Linear layers), which takes the external-data path a Karlo-size network
takes, in a minute instead of a Karlo export's half hour.

    python export/experiments/export_memory.py OUT_DIR [--layers 36]

36 layers are 2.25 GiB of fp32 weights. Measured on 2026-12-05 (AMD EPYC, torch 2.15, onnx 1.23):
peak 8.92 GiB (3.96× the weights) when the exporter loaded the per-tensor files into the proto and
re-saved it with save_as_external_data; 5.13 GiB (2.28×) with `merge_external_data`, the files
byte for byte the same.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # export/
import export_bundle  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=36)
    args = ap.parse_args()
    torch.manual_seed(0)
    module = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(args.layers)])
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(0.5)  # keeps activations O(1) through the stack
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    args.out.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    exporter = export_bundle.Exporter(args.out, 17, False, "auto")

    def inputs(batch: int) -> dict:
        return {"x": torch.randn(batch, 4096) * 0.1}

    started = time.time()
    exporter.export("stack", module, inputs(export_bundle.TRACE_BATCH), ["y"], {"x": {0: "batch"}, "y": {0: "batch"}},
                    inputs, tolerance=1e-3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gib = 2**30
    print(f"weights {weights / gib:.2f} GiB; peak RSS {peak / gib:.2f} GiB ({peak / weights:.2f}× the weights; "
          f"{before / gib:.2f} GiB before the export) in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
