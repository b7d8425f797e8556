#!/bin/bash
# The issue-4 measurements (docs/RESULTS.md, "Mixed precision to a size budget"): budget sweeps and
# personalisation matrices for the three built-in models. Resumable: finished cells are skipped.
# usage: bash bench/mixed_experiments.sh [DEVICE]    (DEVICE: cpu or cuda; the recorded run used cuda)
# On 2 CPU cores this takes many hours (low-bit models loop up to the token cap); on one H100 about
# 20 minutes with the models run side by side.
set -e
DEV=${1:-cpu}
OUT=bench/results/mixed
q() { quasr experiment "$@" --device "$DEV" --batch-size 16; }
for m in whisper-tiny.en whisper-base moonshine-base; do
  q sweep $m --out $OUT/$m --calib-clips 32 --eval-clips 100 --allocations uniform myqasr optimal shuffled reversed
  q sweep $m --out $OUT/$m/error-output --calib-clips 32 --eval-clips 100 --allocations optimal --error output
  q gender $m --out $OUT/$m
  q speaker $m --out $OUT/$m
done
q sweep whisper-tiny.en --out $OUT/whisper-tiny.en/error-kl --calib-clips 32 --eval-clips 100 --allocations optimal --error kl
q language whisper-base --out $OUT/whisper-base
for m in whisper-tiny.en whisper-base; do
  q gender $m --out $OUT/$m/avg4.5 --avg-bits 4.5
  q speaker $m --out $OUT/$m/avg4.5 --avg-bits 4.5
done
q language whisper-base --out $OUT/whisper-base/avg4.5 --avg-bits 4.5
q gender moonshine-base --out $OUT/moonshine-base/avg3 --avg-bits 3
q speaker moonshine-base --out $OUT/moonshine-base/avg3 --avg-bits 3
