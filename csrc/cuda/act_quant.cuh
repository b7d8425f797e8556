// Activation quantization and the int8 GEMM's per-group fold, as plain functions shared by the
// device kernels (act_quant.cu, qgemm_i8.cu) and the host check (tests/test_cuda_host.py): the
// same float32 operations as quasr.grid.fake_quant_tokens, so codes agree bit for bit.
#pragma once

#include <math.h>
#include <stdint.h>

#include "tile_layout.cuh"

namespace quasr_cuda {

// The b-bit grid (scale, zero) of a range [lo, hi] (grid.scale_zero with float32 scales >= 1e-12).
QUASR_HD void range_qparams(float lo, float hi, int bits, bool symmetric, float* scale, float* zero) {
  const float maxq = static_cast<float>((1 << bits) - 1);
  if (symmetric) {
    const float half = static_cast<float>(1 << (bits - 1));
    *scale = fmaxf(fmaxf(-lo, hi) / (half - 1.f), 1e-12f);
    *zero = half;
  } else {
    lo = fminf(lo, 0.f), hi = fmaxf(hi, 0.f);  // the range always holds 0
    *scale = fmaxf((hi - lo) / maxq, 1e-12f);
    *zero = fminf(fmaxf(rintf(-lo / *scale), 0.f), maxq);
  }
}

// The code of x on the grid: round-half-even(x / scale + zero) clamped to [0, 2^b - 1].
QUASR_HD int act_code(float x, float scale, float zero, int bits) {
  const float maxq = static_cast<float>((1 << bits) - 1);
  return static_cast<int>(fminf(fmaxf(rintf(x / scale + zero), 0.f), maxq));
}

// The int8 kernels store e = code - 128 (signed, any width <= 8); x ~ scale * (e + c), c = 128 - zero.
constexpr int kActOffset = 128;

// One group's int32 sum D = sum_k e_k q_k folded into the float32 output of (row, column):
// scale_w * sum_k (e_k + c)(q_k - z) = s D - (s z) E + c Wsum, with E = sum_k e_k over the group
// and Wsum = s (sum_k q_k - z G) per column (made once per weight).
QUASR_HD float fold_group(float acc, int32_t d, float s, float sz, float wsum, int32_t esum, float c) {
  return acc + s * static_cast<float>(d) - sz * static_cast<float>(esum) + c * wsum;
}

}  // namespace quasr_cuda
