#!/usr/bin/env bash
# The prepared GPU check (issue 21): on a freshly lent GPU machine, one command installs what quasr
# needs, runs every GPU test and the GPU benchmarks, and writes their tables to $OUT (default
# bench/results/gpu), in under 8 minutes.
#
#   bash bench/gpu_wheels.sh          # here, once: fetch the wheels the GPU image lacks into .whl/
#   device run: bash bench/gpu_check.sh        (carry: .whl)
#
# The GPU image has its own torch and triton (no registry is reachable there); quasr installs
# --no-deps over them, without its CPU extension (QUASR_BUILD_EXT=0: nothing here needs it) and with
# its CUDA kernels built for this GPU (QUASR_BUILD_CUDA=1, TORCH_CUDA_ARCH_LIST = its capability;
# the build log, with ptxas's registers and spills, goes to $OUT/install.log). If that build fails,
# quasr installs without it so the Triton checks still run, and the check fails.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRITON_DEFAULT_FP_FUSION=1
PY=${PY:-python3}
t0=$(date +%s)
step() { echo "== $(( $(date +%s) - t0 ))s: $*"; }
status=0

step "install"
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
ARCH=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo 9.0)
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")}
if ! QUASR_BUILD_EXT=0 QUASR_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=${MAX_JOBS:-16} \
    $PY -m pip install -v --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1; then
  echo "CUDA kernels did not build (tail of $OUT/install.log):"; tail -30 "$OUT/install.log"; status=1
  QUASR_BUILD_EXT=0 QUASR_BUILD_CUDA=0 $PY -m pip install -q --no-deps --no-build-isolation -e . \
    >>"$OUT/install.log" 2>&1 || { tail -30 "$OUT/install.log"; exit 1; }
fi
grep -E "ptxas info *: Used|spill" "$OUT/install.log" | paste - - > "$OUT/ptxas.txt" || true
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
  $PY -m quasr.cli info 2>&1 | head -20; } | tee "$OUT/machine.txt"

step "GPU tests"
timeout 300 $PY -m pytest -q --timeout=120 -p no:cacheprovider tests/test_cuda_kernels.py tests/test_cuda_triton.py \
  tests/test_cuda.py tests/test_triton_qlinear.py tests/test_triton_hadamard.py 2>&1 | tail -40 | tee "$OUT/gpu_tests.txt" || status=1

step "GEMM benchmark"
timeout 200 $PY bench/gpu_gemm.py --out "$OUT/gpu_gemm.md" || status=1

step "dispatch table"
timeout 90 $PY bench/dispatch_table.py --device cuda --quick --out "$OUT" || status=1

step "end to end"
timeout 150 $PY bench/gpu_e2e.py --steps 100 --out "$OUT/gpu_e2e.md" || status=1

step "done (status $status)"
exit $status
