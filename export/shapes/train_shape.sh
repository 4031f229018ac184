#!/usr/bin/env bash
# The shape lane: continues a base checkpoint (BASE, default export/shapes/checkpoint) with a CLIP
# that sees shape, then a new prior and a decoder fine-tuned onto that CLIP, and assembles a
# candidate checkpoint (the upsamplers come from the base). The checkpoint shipped on 2026-12-07 is
# this lane's output from the one shipped before 2026-12-05: to reproduce it, check that one out
# (`git worktree add /tmp/base 813fe5d`) and run with BASE=/tmp/base/export/shapes/checkpoint and an
# empty runs/ (runs/ckpt_mid is then the checkpoint shipped on 2026-12-05).
# Measured in the session of 2026-12-05 (export/README.md): the shipped CLIP reads shape at chance
# (zero-shot 46/45% seen/held-out), this lane's at 92/78% after clip_long.
#   export/shapes/train_shape.sh [OUT] [PYTHON]      (OUT default export/shapes/runs/ckpt_shape)
# Steps (each resumes where it stopped, so running this again continues an interrupted lane):
#   unpack_clip.py → runs/clip (the base's CLIP)
#   clip_shape from runs/clip (every hard negative a shape edit, 1000 steps, 2 threads, 0.7 s/step)
#   clip_long from runs/clip_shape (6/11 shape edits, 2500 steps, 2 threads, 0.7 s/step)
#   embed_scenes.py with clip_long → runs/scenes_long.pt (3 min)
#   then two 1-thread lanes side by side: the prior from scratch (5000 steps, 0.2 s/step) and the
#   decoder from the shipped one (decoder_nc, --new-clip, 3892 steps; 0.8 s/step)
#   decoder_nc_mid from decoder_nc (t_focus: 70% of the timesteps in [400, 950), 5494 steps, one
#   thread, 0.78 s/step): the decoder of the checkpoint shipped on 2026-12-05 (assembled: runs/ckpt_mid)
#   decoder_nc_mid2 from runs/ckpt_mid's decoder (the same t_focus, seed 1, fresh optimizer, 9604
#   steps, one thread, 1.26–1.35 s/step on an AVX2-only EPYC; the shipped run stopped at 3974 and
#   6377 and resumed from its checkpoint): the decoder of the checkpoint shipped on 2026-12-06
#   (6377 steps in the first bundle of that day, 9604 in the second; assembled: runs/ckpt_mid2)
#   decoder_nc_mid4 from runs/ckpt_mid2's decoder (decoder_nc_mid2's config, fresh optimizer, 8795
#   steps, two threads, 0.40 s/step on the same EPYC alone): the decoder of the checkpoint shipped
#   on 2026-12-06 evening (true-embedding probe, 192 scenes: all 77.1 → 89.6%, held-out 75.0 → 83.3%;
#   assembled: runs/ckpt_mid4a)
#   the same run resumed to step 19709 (0.38–0.43 s/step on an AMX Xeon with bf16 autocast;
#   assembled: runs/ckpt_mid4b), then average_decoders.py ckpt_mid4a ckpt_mid4b: the decoder of the
#   checkpoint shipped on 2026-12-07 (eval.py --images 4: 84.0 → 92.5% all attributes)
# DECODER_MINUTES=N stops each decoder step after N minutes of this invocation (it saves and resumes).
set -euo pipefail
cd "$(dirname "$0")/../.."
S=export/shapes
R=$S/runs
OUT=${1:-$R/ckpt_shape}
PY=${2:-${PYTHON:-python}}
BASE=${BASE:-$S/checkpoint}
mkdir -p "$R"

[ -f "$R/clip/checkpoint.pt" ] || "$PY" $S/unpack_clip.py "$BASE"
"$PY" $S/train_clip.py --config clip_shape --init-from "$R/clip" --run-dir "$R/clip_shape" --threads 2
"$PY" $S/train_clip.py --config clip_long --init-from "$R/clip_shape" --run-dir "$R/clip_long" --threads 2
[ -f "$R/scenes_long.pt" ] || "$PY" $S/embed_scenes.py --clip-run "$R/clip_long" --out "$R/scenes_long.pt" --threads 2

NEW=(--clip-run "$R/clip_long" --scenes "$R/scenes_long.pt")
"$PY" $S/train_prior.py "${NEW[@]}" --threads 1 --run-dir "$R/prior_long" > "$R/prior-long.log" 2>&1 &
prior=$!
"$PY" $S/train_decoder.py --config decoder_nc --init-weights "$BASE" --new-clip "${NEW[@]}" --threads 1 \
  --run-dir "$R/decoder_nc" --max-steps 3892 ${DECODER_MINUTES:+--max-minutes "$DECODER_MINUTES"}
"$PY" $S/train_decoder.py --config decoder_nc_mid --init-from "$R/decoder_nc" "${NEW[@]}" --threads 1 \
  --run-dir "$R/decoder_nc_mid" --max-steps 5494 ${DECODER_MINUTES:+--max-minutes "$DECODER_MINUTES"}
wait $prior || { echo "the prior failed: see $R/prior-long.log"; exit 1; }
[ -f "$R/ckpt_mid/shapes_unclip.json" ] || "$PY" $S/assemble.py "$R/ckpt_mid" --base "$BASE" \
  --clip "$R/clip_long" --prior "$R/prior_long" --decoder "$R/decoder_nc_mid"
"$PY" $S/train_decoder.py --config decoder_nc_mid2 --init-weights "$R/ckpt_mid" "${NEW[@]}" --threads 1 \
  --run-dir "$R/decoder_nc_mid2" --max-steps 9604 ${DECODER_MINUTES:+--max-minutes "$DECODER_MINUTES"}
[ -f "$R/ckpt_mid2/shapes_unclip.json" ] || "$PY" $S/assemble.py "$R/ckpt_mid2" --base "$R/ckpt_mid" \
  --decoder "$R/decoder_nc_mid2"
"$PY" $S/train_decoder.py --config decoder_nc_mid2 --init-weights "$R/ckpt_mid2" "${NEW[@]}" --threads 2 \
  --run-dir "$R/decoder_nc_mid4" --max-steps 8795 ${DECODER_MINUTES:+--max-minutes "$DECODER_MINUTES"}
[ -f "$R/ckpt_mid4a/shapes_unclip.json" ] || "$PY" $S/assemble.py "$R/ckpt_mid4a" --base "$R/ckpt_mid2" \
  --decoder "$R/decoder_nc_mid4"
"$PY" $S/train_decoder.py --config decoder_nc_mid2 --init-weights "$R/ckpt_mid2" "${NEW[@]}" --threads 2 \
  --run-dir "$R/decoder_nc_mid4" --max-steps 19709 ${DECODER_MINUTES:+--max-minutes "$DECODER_MINUTES"}
[ -f "$R/ckpt_mid4b/shapes_unclip.json" ] || "$PY" $S/assemble.py "$R/ckpt_mid4b" --base "$R/ckpt_mid2" \
  --decoder "$R/decoder_nc_mid4"
"$PY" $S/average_decoders.py "$R/ckpt_mid4a" "$R/ckpt_mid4b" "$OUT"
