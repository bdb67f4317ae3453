#!/usr/bin/env bash
# Issue 31's small transformer comparison: induction, vanilla vs bimt (the task's lam), seeds 0-2,
# the task's default steps, then ACDC's sparsest circuit at f >= TARGET_F (resample ablation) on
# each model (into RUN/acdc-f$TARGET_F). Pairs run seed by seed so a cut-short run still leaves
# complete pairs; finished steps are skipped on a rerun. Then ACDC once on each tracr program
# (fixed, compiled weights: only recovery of the known circuit is in question).
# Read the results with: python examples/transformers_small.py OUT TARGET_F
#   bash examples/transformers_small.sh [OUT=sweeps/transformers_small] [TARGET_F=0.95]
set -euo pipefail
OUT=${1:-sweeps/transformers_small}
TARGET_F=${2:-0.95}
BIN=${CIRCUITRY:-circuitry}
seconds_since() { echo "$(date +%s.%N) - $1" | bc; }
discover() {  # MODEL_FOLDER
  local circuit="$1/acdc-f$TARGET_F" start
  [ -f "$circuit/summary.json" ] && return 0
  start=$(date +%s.%N)
  "$BIN" discover --model "$1/model.pt" --method acdc --target-f "$TARGET_F" --ablation resample --out "$circuit" --force
  seconds_since "$start" > "$circuit/discover_seconds.txt"
}
for seed in 0 1 2; do
  for regime in vanilla bimt; do
    run="$OUT/induction-$regime-s$seed"
    [ -f "$run/model.pt" ] || "$BIN" train --task induction --regime "$regime" --seed "$seed" --device cpu --out "$run" --force
  done
  for regime in vanilla bimt; do discover "$OUT/induction-$regime-s$seed"; done
done
for program in tracr_reverse tracr_frac_prevs; do
  [ -f "$OUT/$program/model.pt" ] || "$BIN" train --task "$program" --regime vanilla --device cpu --out "$OUT/$program" --force
  discover "$OUT/$program"
done
