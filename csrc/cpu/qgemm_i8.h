// Integer-dot-product GEMM on the CPU: activations as int8 codes, weights as unsigned b-bit codes
// in a SIMD-friendly runtime layout ("the i8 layout", docs/FORMAT.md, Runtime layouts), products
// summed in int32 with vpdpbusd (AVX-512 VNNI) or vpmaddubsw + vpmaddwd (AVX-512BW, AVX2), scales
// applied once per group. A portable scalar path computes the same sums. Raw pointers only (no
// torch headers), so the binding (ops.cpp) and csrc/cpu/tests/scalar_check.cpp both drive it.
//
// The math, per output y[m, n] and weight group g (G columns of K):
//   x[m, k] ~= sx[m, g] * (a[m, k] - za[m, g])      a: int8 codes, za: the activation zero (float)
//   W[n, k] ~= s[n, g] * (c[n, k] - z[n, g])          c: unsigned b-bit codes
//   y_g = sx * (s * D - (s z) * A - za * Wsum)
// with D = sum_k a c (exact in int32), A = sum_k a, Wsum = sum_k W[n, k] over the group. The
// activation side (sx, sx*A, sx*za) is computed per row and group by quantize_activations_i8; the
// weight side (s, s*z, Wsum) is stored beside the codes by repack_i8.
#pragma once
#include <cstdint>

#include "qgemm.h"

namespace quasr {

// Instruction sets of the int8 kernels, best last. Chosen at run time (cpu features), never at
// build time: the same library runs every path its CPU has.
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512Bw = 2, Avx512Vnni = 3 };

// The best ISA this CPU runs, and whether it runs `isa`.
Isa best_isa();
bool isa_supported(Isa isa);
const char* isa_name(Isa isa);

// The i8 layout of one [N, Kp] weight. Columns are taken 16 at a time (a "column block"; N is
// padded to a multiple of 64, four blocks, zero codes and zero scales), K 4 at a time (a "step":
// 64 bytes, byte 4*col + k%4, the operand order of vpdpbusd) and steps 8 at a time (an "octet",
// 32 columns of K). A code is split into parts of 8, 4, 2 and 1 bits, low bits first (8: 8; 7: 4+2+1;
// 6: 4+2; 5: 4+1; 4: 4; 3: 2+1; 2: 2); part p of width w packs 8/w steps into one 64-byte chunk (step
// j at bit (j % (8/w)) * w of each byte), so a step is a load, a shift and a mask per part. An octet
// is its parts' chunks back to back: 64 * bits bytes. Order: [block][group][octet][chunk][64].
// params: float [block][group][3][16] = s, s*z and Wsum for the block's 16 columns.
struct I8Layout {
  const uint8_t* codes;
  const float* params;
  int64_t N, Kp, group_size;
  int bits;
};
int64_t i8_padded_n(int64_t N);  // N rounded up to whole chunks of 64 columns
int64_t i8_code_bytes(int64_t N, int64_t Kp, int bits);
int64_t i8_param_floats(int64_t N, int64_t Kp, int64_t group_size);

// Repack column blocks [b0, b1) of a canonical packed weight (QGemmArgs' packed/scales/zeros/bits/
// group_size/N/Kp; x, y unused) into the i8 layout (codes, params of the whole layout).
void repack_i8(const QGemmArgs& w, int64_t b0, int64_t b1, uint8_t* codes, float* params);

// Activations: int8 codes [M, Kp] and per (row, group) floats [M][groups][3] = sx, sx*A, sx*za.
struct I8Acts {
  const int8_t* a;
  const float* rowp;
  int64_t M;
  bool zero_points;  // some za != 0 (asymmetric activations): the Wsum term is needed
};

// How x is quantized (the act_* arguments of quasr::qlinear, plus per-group ranges). Code q of the
// fake-quant grid (q in [0, 2^bits - 1], value (q - z) s) is stored as a = q - 128 with za = z - 128.
enum class ActRange : int { Token = 0, Tensor = 1, Group = 2 };
struct I8ActQuant {
  int bits;          // 2..8
  bool symmetric;
  ActRange range;
  float scale, zero; // Tensor: the static range (zero must be a whole number)
};

// Rows [m0, m1) of x[M, K] (row stride ldx, float) times `mul` (per-channel, or nullptr) quantized
// into a[M, Kp] (zero codes past K) and rowp, with `isa`'s vector instructions. Same float
// operations as quantize_activations, so the codes are those of the fake-quant path (grid.py).
void quantize_activations_i8(Isa isa, const float* x, int64_t ldx, int64_t K, int64_t Kp, int64_t group_size, const float* mul,
                             const I8ActQuant& q, int64_t m0, int64_t m1, int8_t* a, float* rowp);

// Bytes of per-thread scratch the GEMM needs (the decoded panel of one chunk for large M).
int64_t i8_scratch_bytes(Isa isa, const I8Layout& w, int64_t M);

// y[m, n] (+ bias[n]) for every row and the columns of chunks [c0, c1) (a chunk: 64 columns).
// `scratch`: i8_scratch_bytes() bytes, 64-byte aligned, per thread.
void qgemm_i8_chunks(Isa isa, const I8Layout& w, const I8Acts& x, const float* bias, float* y, int64_t c0, int64_t c1,
                     uint8_t* scratch);

// Whether the int32 sums cannot overflow for this group size (|a| <= 128, c <= 255).
inline bool i8_group_fits(int64_t group_size) { return group_size <= 65536; }

}  // namespace quasr
