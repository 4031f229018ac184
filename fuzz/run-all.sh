#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 1800 = the issue's 30 min) with libFuzzer's RSS
# limit and per-input timeout; prints one summary line per target.
#   fuzz/run-all.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_PER_TARGET=${1:-1800}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(bundle_manifest prompt_tokens image_decode npy_embeddings server_params server_multipart capi_params)
fi
export RUSTC_BOOTSTRAP=1   # cargo-fuzz's sanitizer flags on the stable toolchain
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  log="$(mktemp)"
  mkdir -p "seeds/$t"
  if cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$SECONDS_PER_TARGET" \
      -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
  fi
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}' || true)
  echo "$t: $status, ${runs:-?} executions in ${SECONDS_PER_TARGET} s"
  if [ "$status" = FAILED ]; then grep -E 'ERROR|SUMMARY|panicked' "$log" | head -5; fi
  rm -f "$log"
done
