#!/usr/bin/env bash
# Fetch (here, where PyPI is reachable) the wheels that bench/gpu_check.sh installs on the GPU image
# (Python 3.12, x86-64), which has torch and triton but an older transformers and no jiwer/soundfile.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
pin() { grep -i "^$1==" constraints.txt | head -1; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "$(pin transformers)" "$(pin jiwer)" "$(pin rapidfuzz)" "$(pin soundfile)" "$(pin cffi)" "$(pin pycparser)" \
  "$(pin click)"
du -sh .whl
