#!/usr/bin/env bash
# Regenerates every fixture, in dependency order, with the venv of export/README.md.
#   export/regenerate.sh [PYTHON]
# Deterministic: a second run writes the same bytes (checked with `git status` after a rerun);
# torch runs single-threaded in reference.py so reductions keep one order.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-.venv/bin/python}}
"$PY" export/make_tiny.py tests/fixtures/tiny-karlo
"$PY" export/make_tiny_kandinsky.py tests/fixtures/tiny-kandinsky
"$PY" export/export_bundle.py tests/fixtures/tiny-karlo models/tiny --name tiny
# its int8 models (random weights: the fidelity check fails, so --precision auto keeps f32 there)
cargo build --release --bin unclip
"$PY" export/quantize_bundle.py models/tiny --steps 5/5/2 --seeds 0 --fidelity-seeds 100 --fidelity-steps 5/5/2
"$PY" export/export_bundle.py tests/fixtures/tiny-kandinsky/decoder models/tiny-kandinsky \
  --prior tests/fixtures/tiny-kandinsky/prior --name tiny-kandinsky
"$PY" export/reference.py --out tests/fixtures/ref
"$PY" export/reference_kandinsky.py --out tests/fixtures/ref-kandinsky
# The shapes bundle's parity case: from the committed shipped checkpoint (export/shapes/checkpoint).
if [ -d export/shapes/checkpoint ]; then
  "$PY" export/reference.py --checkpoint export/shapes/checkpoint --out tests/fixtures/ref-shapes --case shapes_default
else
  echo "no export/shapes/checkpoint: tests/fixtures/ref-shapes left as it is" >&2
fi
"$PY" export/torch_rng_vectors.py
"$PY" export/scheduler_reference.py
"$PY" export/image_io_reference.py
"$PY" export/vision_reference.py
echo "fixtures regenerated; sizes:"
du -sh tests/fixtures/* models/tiny
