#!/usr/bin/env bash
# Trains every shapes component and assembles the checkpoint, in two lanes that run side by side
# (one torch thread each by default: on a 2-core machine two 1-thread processes used the cores
# better than one 2-thread process — measured: CLIP 0.71 s/step with 2 threads alone, 1.0 s/step
# with 1 thread beside an upsampler run):
#   lane A: CLIP → embed_scenes → decoder (x₀ prediction from scratch)
#   lane B: super-res 64→256 → 256→1024 (x₀ prediction from scratch) → prior
# (the decoder needs only CLIP's image embeddings, not the prior, so it starts as soon as the scenes
# are embedded; the prior, much cheaper, waits for them in lane B after the upsamplers).
# Every step resumes where it stopped, so running this again continues an interrupted training.
#   export/shapes/train_all.sh [THREADS_PER_LANE] [PYTHON]
# DECODER_MINUTES=N stops each long decoder run after N minutes of this invocation (it saves and
# resumes).
# Logs: export/shapes/runs/<run>/train.log (and lane-a.log / lane-b.log for the whole lane).
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${1:-1}
PY=${2:-${PYTHON:-python}}
S=export/shapes
RUNS=$S/runs
mkdir -p "$RUNS"

# steps CONFIG: the config's step count; reached RUN STEPS: the run's checkpoint is at STEPS or
# later (a run stopped early by DECODER_MINUTES must not hand over to the next one).
steps() { "$PY" -c "import json; print(json.load(open('$S/configs/$1.json'))['train']['steps'])"; }
reached() {
  "$PY" -c "import sys, torch; sys.exit(torch.load('$RUNS/$1/checkpoint.pt', weights_only=False)['step'] < $2)" \
    || { echo "$1 stopped before step $2: run again to continue"; return 1; }
}

lane_a() {
  "$PY" $S/train_clip.py --threads "$THREADS"
  # The scene embeddings depend on the CLIP checkpoint: re-embed when CLIP moved on.
  if ! "$PY" -c "import sys, torch; a = torch.load('$RUNS/scenes.pt', weights_only=False)['clip_step']; \
b = torch.load('$RUNS/clip/checkpoint.pt', weights_only=False)['step']; sys.exit(a != b)" 2>/dev/null; then
    "$PY" $S/embed_scenes.py --threads "$THREADS"
  fi
  touch "$READY"
  # The shipped decoder: x₀ prediction from scratch at lr 5e-4 until its variance channel began to
  # fight the range penalty (loss spikes from step ~3650), then lr 2e-4, then λ_vlb 1e-4 (configs;
  # the step counts are the configs' "steps").
  "$PY" $S/train_decoder.py --config decoder_x0s --threads "$THREADS" ${DECODER_MINUTES:+--max-minutes "$DECODER_MINUTES"}
  reached decoder_x0s "$(steps decoder_x0s)" || return 1
  "$PY" $S/train_decoder.py --config decoder_x0s_ft --init-from "$RUNS/decoder_x0s" --threads "$THREADS"
  reached decoder_x0s_ft "$(steps decoder_x0s_ft)" || return 1
  "$PY" $S/train_decoder.py --config decoder_x0s_ft2 --init-from "$RUNS/decoder_x0s_ft" --threads "$THREADS" \
    ${DECODER_MINUTES:+--max-minutes "$DECODER_MINUTES"}
}

lane_b() {
  for size in 256 1024; do
    "$PY" $S/train_superres.py --config superres_${size}_x0s --threads "$THREADS"
  done
  while [ ! -f "$READY" ]; do
    kill -0 "$LANE_A" 2>/dev/null || { echo "lane A stopped before the scenes were embedded"; return 1; }
    sleep 10
  done
  "$PY" $S/train_prior.py --threads "$THREADS"
}

READY="$RUNS/.scenes-ready.$$"
trap 'rm -f "$READY"' EXIT
lane_a > "$RUNS/lane-a.log" 2>&1 &
a=$!
LANE_A=$a
lane_b > "$RUNS/lane-b.log" 2>&1 &
b=$!
status=0
wait $a || { echo "lane A failed: see $RUNS/lane-a.log"; status=1; }
wait $b || { echo "lane B failed: see $RUNS/lane-b.log"; status=1; }
[ $status -eq 0 ] || exit $status
"$PY" $S/assemble.py
