#!/usr/bin/env bash
# WER and size of every built-in model, float vs 8- and 4-bit RTN (g128, MSE clipping), on the
# English read prompts. Each quantized model goes through the user path: quantize -> save -> eval.
# Usage: bash bench/families.sh [MODEL ...]   (results appended to bench/results/families.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(whisper-tiny.en whisper-base moonshine-base)
out=bench/results/families.jsonl; mkdir -p bench/results out
for m in "${models[@]}"; do
  quasr eval "$m" --language en --json | python -c "import json,sys; r=json.load(sys.stdin); r['config']='float'; print(json.dumps(r))" >> "$out"
  for b in 8 4; do
    quasr quantize "$m" --bits "$b" --group-size 128 --out "out/$m-w$b" --json >/dev/null
    quasr eval "out/$m-w$b" --language en --json \
      | python -c "import json,sys; r=json.load(sys.stdin); r['model']='$m'; r['config']='W${b}A16 g128 rtn'; print(json.dumps(r))" >> "$out"
  done
done
