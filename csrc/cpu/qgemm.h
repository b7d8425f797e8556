// y[M, N] = x[M, Kp] @ dequant(W)[N, Kp]^T (+ bias), straight from the packed format of
// python/quasr/format.py (docs/FORMAT.md). Raw pointers only: no torch headers here, so this
// file compiles fast and the same code can be driven by any binding.
#pragma once
#include <cstdint>

namespace quasr {

struct QGemmArgs {
  const float* x;         // [M, Kp] row-major, columns K..Kp are zero
  const uint8_t* packed;  // [N, Kp * bits / 8]
  const uint16_t* scales; // fp16 bits [N, Kp / group_size]
  const uint16_t* zeros;  // fp16 bits [N, Kp / group_size], or nullptr for symmetric
  const float* bias;      // [N] or nullptr
  float* y;               // [M, N] row-major
  int64_t M, N, Kp, group_size;
  int bits;
};

// Blas: dequantize tiles of W with dequantize_rows() and multiply with the binding's BLAS.
enum class Kernel : int { Auto = 0, Gemv = 1, Gemm = 2, Scalar = 3, Blas = 4 };

// Whether this CPU can run the AVX2+FMA paths (checked at run time).
bool cpu_has_avx2_fma();

// The path `requested` resolves to for this M on this CPU.
Kernel choose_kernel(Kernel requested, int64_t M);

// Rows of W handled by one unit of parallel work for this kernel (callers split N by it).
int64_t rows_per_task(Kernel kernel);

// Scratch floats one task needs (per thread).
int64_t scratch_floats(Kernel kernel, const QGemmArgs& a);

// Per-call preparation of x shared by all tasks (GEMV: per-group sums of x for the zero-point
// correction; GEMM: x repacked in blocks of 6 rows). prepare() fills prepared_floats() floats.
int64_t prepared_floats(Kernel kernel, const QGemmArgs& a);
void prepare(Kernel kernel, const QGemmArgs& a, float* out);

// Compute output columns [n_begin, n_end) of y. `scratch` holds scratch_floats() floats (per
// thread); `prepared` is the output of prepare().
void qgemm_rows(Kernel kernel, const QGemmArgs& a, const float* prepared, int64_t n_begin, int64_t n_end,
                float* scratch);

// Dequantize rows [n0, n1) of W into out[(n - n0) * Kp + k] (AVX2 when available).
void dequantize_rows(const QGemmArgs& a, int64_t n0, int64_t n1, float* out);

float half_to_float(uint16_t h);

// The integer codes [Kp] of row n of W (the canonical planes decoded; scales and zeros unused).
void decode_codes_row(const QGemmArgs& a, int64_t n, int32_t* out);

// Activation fake-quant applied to rows [m0, m1) of x[M, ld] in place, before the GEMM (the
// `act_*` arguments of quasr::qlinear). Columns [0, K) are first multiplied by `mul` (per-channel
// smoothing, or nullptr), then each value v becomes (clamp(round(v / s + z), 0, 2^bits - 1) - z) * s.
// Static: s, z given (per tensor). Dynamic: s, z from each row's range (per token); asymmetric
// ranges always contain 0, symmetric ones use z = 2^(bits-1), as python/quasr/ranges.py; with
// `group` > 0 each block of `group` columns of a token has its own range. Columns [K, ld) are zero
// padding and stay zero. Matches grid.fake_quant_tokens / fake_quant_groups bit for bit.
struct ActQuant {
  int bits;          // 2..8, or 0 for none (only `mul` applied)
  bool symmetric;
  float scale, zero; // static per-tensor parameters; scale <= 0 means dynamic per token
  int64_t group = 0; // dynamic ranges per token and block of this many columns (0: whole token)
};
void quantize_activations(float* x, int64_t ld, int64_t K, const float* mul, const ActQuant& q, int64_t m0, int64_t m1);

}  // namespace quasr
