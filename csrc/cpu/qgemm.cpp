// Packed low-bit GEMM on the CPU: an AVX2+FMA path (GEMV-style for small M, decode-a-tile-then-
// GEMM for large M) and a portable scalar path. Layout: docs/FORMAT.md. Reference: format.py.
#include "qgemm.h"

// x86 only: the AVX2+FMA paths (intrinsics, target attributes, the run-time CPU probe). Elsewhere
// (aarch64, ...) only the portable scalar path is compiled and cpu_has_avx2_fma() is false.
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define QUASR_X86 1
#include <immintrin.h>
#else
#define QUASR_X86 0
#endif

#include <algorithm>
#include <cmath>
#include <cstring>

namespace quasr {

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal half: renormalise into a float
      int e = -1;
      do {
        ++e;
        mantissa <<= 1;
      } while (!(mantissa & 0x400u));
      bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mantissa & 0x3ffu) << 13);
    }
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

static inline float group_zero(const QGemmArgs& a, int64_t idx) {
  return a.zeros ? half_to_float(a.zeros[idx]) : static_cast<float>(1 << (a.bits - 1));
}

bool cpu_has_avx2_fma() {
#if QUASR_X86
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok;
#else
  return false;
#endif
}

// Path boundaries by M, measured with bench/gemm.py (bench/RESULTS.md): GEMV up to kGemvMaxM,
// our 6x16 GEMM below kBlasMinM, dequantized tiles + torch's BLAS from there on (decode cost is
// amortised over many rows and BLAS is better blocked for caches).
static constexpr int64_t kGemvMaxM = 4, kBlasMinM = 128;

Kernel choose_kernel(Kernel requested, int64_t M) {
  if (!cpu_has_avx2_fma()) return Kernel::Scalar;
  if (requested != Kernel::Auto) return requested;
  return M <= kGemvMaxM ? Kernel::Gemv : (M < kBlasMinM ? Kernel::Gemm : Kernel::Blas);
}

// GEMM: rows of W decoded per task (two 16-wide panels), k-block, rows of x per micro-kernel.
static constexpr int64_t kPanel = 16, kTileN = 32, kBlockK = 256, kMR = 6;

int64_t rows_per_task(Kernel kernel) { return kernel == Kernel::Gemm ? kTileN : 16; }

// Rows of x per micro-kernel call: M split into ceil(M/6) blocks of equal size (8 rows run as 4 + 4,
// not 6 + 2, whose 2-row kernel is load-bound). x is packed [blocks][Kp][kMR] either way.
static int64_t gemm_block_rows(int64_t M) {
  const int64_t blocks = (M + kMR - 1) / kMR;
  return (M + blocks - 1) / blocks;
}

int64_t scratch_floats(Kernel kernel, const QGemmArgs& a) {
#if !QUASR_X86
  return a.Kp;  // every kernel runs the scalar path here (qgemm_rows)
#endif
  if (kernel == Kernel::Gemm) return kTileN * kBlockK;  // two panels [kBlockK][16]
  if (kernel == Kernel::Scalar) return a.Kp;
  return 0;
}

// The 4- and 3-bit GEMVs decode whole bytes of a plane into 8 lanes (lane j = byte j) and take
// the R codes each byte holds one after another (R = 2 at 4 bits, 4 for the 3-bit weights' 2-bit
// plane): vector r holds codes k + R*j + r. x is given to them reordered to match, in blocks of 8R
// columns, after the group sums: position 8r + j of a block holds column R*j + r.
static int64_t gemv_codes_per_lane(const QGemmArgs& a) {
  if (!cpu_has_avx2_fma()) return 0;
  return a.bits == 4 ? 2 : a.bits == 3 ? 4 : 0;
}
static bool gemv_uses_permuted_x(const QGemmArgs& a) { return gemv_codes_per_lane(a) > 0; }

int64_t prepared_floats(Kernel kernel, const QGemmArgs& a) {
  if (kernel == Kernel::Gemv) return a.M * (a.Kp / a.group_size) + (gemv_uses_permuted_x(a) ? a.M * a.Kp : 0);
  if (kernel == Kernel::Gemm) return (a.M + kMR - 1) / kMR * kMR * a.Kp;
  return 0;
}

void prepare(Kernel kernel, const QGemmArgs& a, float* out) {
  if (kernel == Kernel::Gemv) {  // per-group sums of x, for the zero-point correction
    const int64_t ng = a.Kp / a.group_size;
    for (int64_t m = 0; m < a.M; ++m)
      for (int64_t g = 0; g < ng; ++g) {
        const float* xp = a.x + m * a.Kp + g * a.group_size;
        float s = 0.f;
        for (int64_t k = 0; k < a.group_size; ++k) s += xp[k];
        out[m * ng + g] = s;
      }
    if (gemv_uses_permuted_x(a)) {
      float* xp = out + a.M * ng;
      const int64_t R = gemv_codes_per_lane(a);
      for (int64_t m = 0; m < a.M; ++m)
        for (int64_t k = 0; k < a.Kp; k += 8 * R)
          for (int64_t r = 0; r < R; ++r)
            for (int64_t j = 0; j < 8; ++j) xp[m * a.Kp + k + 8 * r + j] = a.x[m * a.Kp + k + R * j + r];
    }
  } else if (kernel == Kernel::Gemm) {  // x in blocks of mr rows, [blocks][Kp][6], zero-padded rows
    const int64_t mr = gemm_block_rows(a.M);
    for (int64_t b = 0, m0 = 0; m0 < a.M; ++b, m0 += mr) {
      float* blk = out + b * kMR * a.Kp;
      for (int64_t k = 0; k < a.Kp; ++k)
        for (int64_t i = 0; i < kMR; ++i)
          blk[k * kMR + i] = i < mr && m0 + i < a.M ? a.x[(m0 + i) * a.Kp + k] : 0.f;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Portable scalar path: decode a row to floats, then plain dot products.
// ---------------------------------------------------------------------------------------------

static int plane_widths(int bits, int* widths) {
  switch (bits) {
    case 8: widths[0] = 8; return 1;
    case 7: widths[0] = 4; widths[1] = 2; widths[2] = 1; return 3;
    case 6: widths[0] = 4; widths[1] = 2; return 2;
    case 5: widths[0] = 4; widths[1] = 1; return 2;
    case 4: widths[0] = 4; return 1;
    case 3: widths[0] = 2; widths[1] = 1; return 2;
    default: widths[0] = 2; return 1;
  }
}

// Code k of a row: its planes' slices, low bits first (FORMAT.md).
static inline int code_at(const uint8_t* row, int64_t Kp, const int* widths, int nplanes, int64_t k) {
  int code = 0, shift = 0;
  int64_t offset = 0;
  for (int p = 0; p < nplanes; ++p) {
    const int w = widths[p], per_byte = 8 / w;
    const int sub = (row[offset + k / per_byte] >> ((k % per_byte) * w)) & ((1 << w) - 1);
    code |= sub << shift;
    shift += w;
    offset += Kp * w / 8;
  }
  return code;
}

void decode_codes_row(const QGemmArgs& a, int64_t n, int32_t* out) {
  int widths[3];
  const int nplanes = plane_widths(a.bits, widths);
  const uint8_t* row = a.packed + n * (a.Kp * a.bits / 8);
  for (int64_t k = 0; k < a.Kp; ++k) out[k] = code_at(row, a.Kp, widths, nplanes, k);
}

static void dequant_row_scalar(const QGemmArgs& a, int64_t n, float* out) {
  int widths[3];
  const int nplanes = plane_widths(a.bits, widths);
  const uint8_t* row = a.packed + n * (a.Kp * a.bits / 8);
  const int64_t ng = a.Kp / a.group_size;
  for (int64_t k = 0; k < a.Kp; ++k) {
    const int code = code_at(row, a.Kp, widths, nplanes, k);
    const int64_t g = n * ng + k / a.group_size;
    out[k] = (static_cast<float>(code) - group_zero(a, g)) * half_to_float(a.scales[g]);
  }
}

static void rows_scalar(const QGemmArgs& a, int64_t n0, int64_t n1, float* wrow) {
  for (int64_t n = n0; n < n1; ++n) {
    dequant_row_scalar(a, n, wrow);
    const float b = a.bias ? a.bias[n] : 0.f;
    for (int64_t m = 0; m < a.M; ++m) {
      const float* xp = a.x + m * a.Kp;
      float s = 0.f;
      for (int64_t k = 0; k < a.Kp; ++k) s += xp[k] * wrow[k];
      a.y[m * a.N + n] = s + b;
    }
  }
}

#if QUASR_X86
// ---------------------------------------------------------------------------------------------
// AVX2 + FMA paths. Compiled with a target attribute so the file needs no -mavx2 and the scalar
// path stays runnable on any x86-64.
// ---------------------------------------------------------------------------------------------
#define QUASR_AVX2 __attribute__((target("avx2,fma,f16c")))

// 8 consecutive codes (k % 8 == 0) of one plane, as 8 int32 lanes.
QUASR_AVX2 static inline __m256i plane8(const uint8_t* p, int64_t k) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + k)));
}
QUASR_AVX2 static inline __m256i plane4(const uint8_t* p, int64_t k) {
  uint32_t v;
  std::memcpy(&v, p + k / 2, 4);
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(v)), shifts),
                          _mm256_set1_epi32(0xf));
}
// The 2- and 1-bit planes broadcast their 16 / 8 bits straight from memory as 16- / 8-bit
// elements (vpbroadcastw/b: a load, no scalar-to-vector move); the low 16 / 8 bits of each 32-bit
// lane are the plane's bits, and the shifts below never reach past them.
QUASR_AVX2 static inline __m256i plane2(const uint8_t* p, int64_t k) {
  int16_t v;
  std::memcpy(&v, p + k / 4, 2);
  const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi16(v), shifts), _mm256_set1_epi32(3));
}
QUASR_AVX2 static inline __m256i plane1(const uint8_t* p, int64_t k) {
  const __m256i shifts = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi8(static_cast<char>(p[k / 8])), shifts),
                          _mm256_set1_epi32(1));
}

// Codes k..k+7 of a row of a BITS-bit weight: planes are concatenated, widest first (FORMAT.md).
template <int BITS>
QUASR_AVX2 static inline __m256i decode8(const uint8_t* row, int64_t Kp, int64_t k) {
  if constexpr (BITS == 8) {
    return plane8(row, k);
  } else if constexpr (BITS == 7) {
    __m256i c = _mm256_or_si256(plane4(row, k), _mm256_slli_epi32(plane2(row + Kp / 2, k), 4));
    return _mm256_or_si256(c, _mm256_slli_epi32(plane1(row + Kp / 2 + Kp / 4, k), 6));
  } else if constexpr (BITS == 6) {
    return _mm256_or_si256(plane4(row, k), _mm256_slli_epi32(plane2(row + Kp / 2, k), 4));
  } else if constexpr (BITS == 5) {
    return _mm256_or_si256(plane4(row, k), _mm256_slli_epi32(plane1(row + Kp / 2, k), 4));
  } else if constexpr (BITS == 4) {
    return plane4(row, k);
  } else if constexpr (BITS == 3) {
    return _mm256_or_si256(plane2(row, k), _mm256_slli_epi32(plane1(row + Kp / 4, k), 2));
  } else {
    static_assert(BITS == 2, "bits must be 2..8");
    return plane2(row, k);
  }
}

QUASR_AVX2 static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(s);
}

QUASR_AVX2 static inline float half_to_float_f16c(uint16_t h) { return _cvtsh_ss(h); }

// GEMV block: MB rows of x against NB rows of W. Codes are multiplied raw; per group the partial
// dot is scaled once (a vector FMA) and the zero point is removed with the group sum of x:
//   sum_k (q_k - z) s x_k = s * (sum_k q_k x_k) - s * z * sum_k x_k.
template <int BITS, int MB, int NB>
QUASR_AVX2 static void gemv_block(const QGemmArgs& a, const float* xsum, int64_t m0, int64_t n0) {
  const int64_t Kp = a.Kp, G = a.group_size, ng = Kp / G, row_bytes = Kp * BITS / 8;
  const float zsym = static_cast<float>(1 << (BITS - 1));
  __m256 total[MB * NB];
  float correction[MB * NB];
  for (int i = 0; i < MB * NB; ++i) {
    total[i] = _mm256_setzero_ps();
    correction[i] = 0.f;
  }
  const uint8_t* rows[NB];
  for (int j = 0; j < NB; ++j) rows[j] = a.packed + (n0 + j) * row_bytes;
  for (int64_t g = 0; g < ng; ++g) {
    __m256 acc[MB * NB];
    for (int i = 0; i < MB * NB; ++i) acc[i] = _mm256_setzero_ps();
    if constexpr (BITS == 4) {  // 16 codes per 8-byte load, x permuted to match (prepare)
      const float* xperm = xsum + a.M * ng;
      __m256 acc_odd[MB * NB];  // separate FMA chains for the odd codes
      for (int i = 0; i < MB * NB; ++i) acc_odd[i] = _mm256_setzero_ps();
      for (int64_t k = g * G; k < (g + 1) * G; k += 16) {
        __m256 xe[MB], xo[MB];
        for (int i = 0; i < MB; ++i) {
          xe[i] = _mm256_loadu_ps(xperm + (m0 + i) * Kp + k);
          xo[i] = _mm256_loadu_ps(xperm + (m0 + i) * Kp + k + 8);
        }
        for (int j = 0; j < NB; ++j) {
          const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(rows[j] + k / 2)));
          const __m256 even = _mm256_cvtepi32_ps(_mm256_and_si256(bytes, _mm256_set1_epi32(0xf)));
          const __m256 odd = _mm256_cvtepi32_ps(_mm256_srli_epi32(bytes, 4));
          for (int i = 0; i < MB; ++i) {
            acc[i * NB + j] = _mm256_fmadd_ps(even, xe[i], acc[i * NB + j]);
            acc_odd[i * NB + j] = _mm256_fmadd_ps(odd, xo[i], acc_odd[i * NB + j]);
          }
        }
      }
      for (int i = 0; i < MB * NB; ++i) acc[i] = _mm256_add_ps(acc[i], acc_odd[i]);
    } else if constexpr (BITS == 3) {  // 32 codes: 8 bytes of the 2-bit plane, 4 of the 1-bit plane
      const float* xperm = xsum + a.M * ng;
      __m256 acc_odd[MB * NB];
      for (int i = 0; i < MB * NB; ++i) acc_odd[i] = _mm256_setzero_ps();
      const __m256i nibble_shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
      for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
        __m256i low[NB], high[NB];  // lane j: byte j of the 2-bit plane; bits 4j.. of the 1-bit plane
        for (int j = 0; j < NB; ++j) {
          low[j] = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(rows[j] + k / 4)));
          int32_t ones;
          std::memcpy(&ones, rows[j] + Kp / 4 + k / 8, 4);
          high[j] = _mm256_srlv_epi32(_mm256_set1_epi32(ones), nibble_shifts);
        }
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) {
          __m256 xv[MB];
          for (int i = 0; i < MB; ++i) xv[i] = _mm256_loadu_ps(xperm + (m0 + i) * Kp + k + 8 * r);
          for (int j = 0; j < NB; ++j) {
            const __m256i lo = _mm256_and_si256(_mm256_srli_epi32(low[j], 2 * r), _mm256_set1_epi32(3));
            const __m256i hi_at_2 = r < 2 ? _mm256_slli_epi32(high[j], 2 - r) : _mm256_srli_epi32(high[j], r - 2);
            const __m256 q = _mm256_cvtepi32_ps(_mm256_or_si256(lo, _mm256_and_si256(hi_at_2, _mm256_set1_epi32(4))));
            for (int i = 0; i < MB; ++i) {
              __m256& c = (r & 1) ? acc_odd[i * NB + j] : acc[i * NB + j];
              c = _mm256_fmadd_ps(q, xv[i], c);
            }
          }
        }
      }
      for (int i = 0; i < MB * NB; ++i) acc[i] = _mm256_add_ps(acc[i], acc_odd[i]);
    } else {
      for (int64_t k = g * G; k < (g + 1) * G; k += 8) {
        __m256 xv[MB];
        for (int i = 0; i < MB; ++i) xv[i] = _mm256_loadu_ps(a.x + (m0 + i) * Kp + k);
        for (int j = 0; j < NB; ++j) {
          const __m256 q = _mm256_cvtepi32_ps(decode8<BITS>(rows[j], Kp, k));
          for (int i = 0; i < MB; ++i) acc[i * NB + j] = _mm256_fmadd_ps(q, xv[i], acc[i * NB + j]);
        }
      }
    }
    for (int j = 0; j < NB; ++j) {
      const int64_t gi = (n0 + j) * ng + g;
      const float s = half_to_float_f16c(a.scales[gi]);
      const float z = a.zeros ? half_to_float_f16c(a.zeros[gi]) : zsym;
      const __m256 sv = _mm256_set1_ps(s);
      for (int i = 0; i < MB; ++i) {
        total[i * NB + j] = _mm256_fmadd_ps(sv, acc[i * NB + j], total[i * NB + j]);
        correction[i * NB + j] += s * z * xsum[(m0 + i) * ng + g];
      }
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j)
      a.y[(m0 + i) * a.N + n0 + j] =
          hsum(total[i * NB + j]) - correction[i * NB + j] + (a.bias ? a.bias[n0 + j] : 0.f);
}

template <int BITS>
QUASR_AVX2 static void rows_gemv(const QGemmArgs& a, const float* xsum, int64_t n0, int64_t n1) {
  for (int64_t m0 = 0; m0 < a.M; m0 += 4) {
    const int64_t mb = std::min<int64_t>(4, a.M - m0);
    int64_t n = n0;
    // Enough independent FMA chains per decoded vector: more W rows when there are fewer x rows.
    switch (mb) {
      case 1:
        for (; n + 4 <= n1; n += 4) gemv_block<BITS, 1, 4>(a, xsum, m0, n);
        for (; n < n1; ++n) gemv_block<BITS, 1, 1>(a, xsum, m0, n);
        break;
      case 2:
        for (; n + 2 <= n1; n += 2) gemv_block<BITS, 2, 2>(a, xsum, m0, n);
        for (; n < n1; ++n) gemv_block<BITS, 2, 1>(a, xsum, m0, n);
        break;
      case 3:
        for (; n < n1; ++n) gemv_block<BITS, 3, 1>(a, xsum, m0, n);
        break;
      default:
        for (; n < n1; ++n) gemv_block<BITS, 4, 1>(a, xsum, m0, n);
    }
  }
}

// In-register transpose of an 8x8 float block: r[i] becomes column i.
QUASR_AVX2 static inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)), s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)), s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Dequantize columns [k0, k1) of rows [n0, n0+nrows) (nrows <= 16) of W into a panel laid out
// [k1-k0][16] (output features contiguous), zero-filling missing rows: the layout the 6x16
// micro-kernel streams. One k-block at a time, so the panel stays in L1 while every block of x
// rows streams it (a whole-K panel is 16*K*4 bytes: 96 KB at K = 1536).
template <int BITS>
QUASR_AVX2 static void decode_panel(const QGemmArgs& a, int64_t n0, int64_t nrows, int64_t k0, int64_t k1,
                                    float* panel) {
  const int64_t Kp = a.Kp, G = a.group_size, ng = Kp / G, row_bytes = Kp * BITS / 8;
  const float zsym = static_cast<float>(1 << (BITS - 1));
  for (int half = 0; half < 2; ++half) {
    const int64_t r0 = half * 8, valid = std::max<int64_t>(0, std::min<int64_t>(8, nrows - r0));
    for (int64_t g = k0 / G; g < ng && g * G < k1; ++g) {
      float s[8], m[8];
      for (int j = 0; j < valid; ++j) {
        const int64_t gi = (n0 + r0 + j) * ng + g;
        s[j] = half_to_float_f16c(a.scales[gi]);
        m[j] = -(a.zeros ? half_to_float_f16c(a.zeros[gi]) : zsym) * s[j];
      }
      for (int64_t k = std::max(g * G, k0); k < std::min((g + 1) * G, k1); k += 8) {
        __m256 r[8];
        for (int j = 0; j < 8; ++j)
          r[j] = j < valid ? _mm256_fmadd_ps(_mm256_cvtepi32_ps(decode8<BITS>(a.packed + (n0 + r0 + j) * row_bytes, Kp, k)),
                                             _mm256_set1_ps(s[j]), _mm256_set1_ps(m[j]))
                           : _mm256_setzero_ps();
        transpose8(r);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(panel + (k - k0 + i) * kPanel + r0, r[i]);
      }
    }
  }
}

// y[MR x nr] += x[MR x kc] @ panel[kc x 16], x packed as [kc][6] (nr <= 16 valid columns): 2*MR accumulators, one
// broadcast of x and two loads of the panel per k.
template <int MR>
QUASR_AVX2 static void micro_kernel(const float* xp, const float* panel, int64_t kc, float* y, int64_t ldy,
                                    int64_t nr) {
  __m256 acc[2 * MR];
#pragma GCC unroll 12
  for (int i = 0; i < 2 * MR; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 w0 = _mm256_loadu_ps(panel + k * kPanel), w1 = _mm256_loadu_ps(panel + k * kPanel + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 xb = _mm256_broadcast_ss(xp + k * kMR + i);
      acc[2 * i] = _mm256_fmadd_ps(xb, w0, acc[2 * i]);
      acc[2 * i + 1] = _mm256_fmadd_ps(xb, w1, acc[2 * i + 1]);
    }
  }
  // Spill once through a fully unrolled store (dynamic indexing of acc would keep it in memory).
  alignas(32) float out[MR][kPanel];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    _mm256_store_ps(out[i], acc[2 * i]);
    _mm256_store_ps(out[i] + 8, acc[2 * i + 1]);
  }
  for (int i = 0; i < MR; ++i)
    for (int64_t j = 0; j < nr; ++j) y[i * ldy + j] += out[i][j];
}

using MicroFn = void (*)(const float*, const float*, int64_t, float*, int64_t, int64_t);
static const MicroFn kMicro[kMR] = {micro_kernel<1>, micro_kernel<2>, micro_kernel<3>,
                                    micro_kernel<4>, micro_kernel<5>, micro_kernel<6>};

template <int BITS>
QUASR_AVX2 static void rows_gemm(const QGemmArgs& a, const float* xpacked, int64_t n0, int64_t n1, float* panels) {
  const int64_t Kp = a.Kp, block_rows = gemm_block_rows(a.M);
  for (int64_t t0 = n0; t0 < n1; t0 += kTileN) {
    const int64_t nt = std::min(kTileN, n1 - t0), npanels = (nt + kPanel - 1) / kPanel;
    for (int64_t m = 0; m < a.M; ++m)
      for (int64_t j = 0; j < nt; ++j) a.y[m * a.N + t0 + j] = a.bias ? a.bias[t0 + j] : 0.f;
    for (int64_t k0 = 0; k0 < Kp; k0 += kBlockK) {
      const int64_t kc = std::min(kBlockK, Kp - k0);
      for (int64_t p = 0; p < npanels; ++p)
        decode_panel<BITS>(a, t0 + p * kPanel, std::min(kPanel, nt - p * kPanel), k0, k0 + kc,
                           panels + p * kBlockK * kPanel);
      for (int64_t b = 0, m0 = 0; m0 < a.M; ++b, m0 += block_rows) {
        const int64_t mr = std::min(block_rows, a.M - m0);
        for (int64_t p = 0; p < npanels; ++p)
          kMicro[mr - 1](xpacked + b * kMR * Kp + k0 * kMR, panels + p * kBlockK * kPanel, kc,
                         a.y + m0 * a.N + t0 + p * kPanel, a.N, std::min(kPanel, nt - p * kPanel));
      }
    }
  }
}

// Dequantize rows [n0, n1) of W into out[(n - n0) * Kp + k] (floats).
template <int BITS>
QUASR_AVX2 static void dequant_rows_avx2(const QGemmArgs& a, int64_t n0, int64_t n1, float* out) {
  const int64_t Kp = a.Kp, G = a.group_size, ng = Kp / G, row_bytes = Kp * BITS / 8;
  const float zsym = static_cast<float>(1 << (BITS - 1));
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = a.packed + n * row_bytes;
    float* o = out + (n - n0) * Kp;
    for (int64_t g = 0; g < ng; ++g) {
      const float s = half_to_float_f16c(a.scales[n * ng + g]);
      const float z = a.zeros ? half_to_float_f16c(a.zeros[n * ng + g]) : zsym;
      const __m256 sv = _mm256_set1_ps(s), mv = _mm256_set1_ps(-z * s);
      for (int64_t k = g * G; k < (g + 1) * G; k += 8)
        _mm256_storeu_ps(o + k, _mm256_fmadd_ps(_mm256_cvtepi32_ps(decode8<BITS>(row, Kp, k)), sv, mv));
    }
  }
}

#endif  // QUASR_X86

void dequantize_rows(const QGemmArgs& a, int64_t n0, int64_t n1, float* out) {
  if (!cpu_has_avx2_fma()) {
    for (int64_t n = n0; n < n1; ++n) dequant_row_scalar(a, n, out + (n - n0) * a.Kp);
    return;
  }
#if QUASR_X86
  switch (a.bits) {
    case 2: return dequant_rows_avx2<2>(a, n0, n1, out);
    case 3: return dequant_rows_avx2<3>(a, n0, n1, out);
    case 4: return dequant_rows_avx2<4>(a, n0, n1, out);
    case 5: return dequant_rows_avx2<5>(a, n0, n1, out);
    case 6: return dequant_rows_avx2<6>(a, n0, n1, out);
    case 7: return dequant_rows_avx2<7>(a, n0, n1, out);
    default: return dequant_rows_avx2<8>(a, n0, n1, out);
  }
#endif
}

#if QUASR_X86
template <int BITS>
static void rows_avx2(Kernel kernel, const QGemmArgs& a, const float* prepared, int64_t n0, int64_t n1,
                      float* scratch) {
  if (kernel == Kernel::Gemv)
    rows_gemv<BITS>(a, prepared, n0, n1);
  else
    rows_gemm<BITS>(a, prepared, n0, n1, scratch);
}
#endif  // QUASR_X86

void qgemm_rows(Kernel kernel, const QGemmArgs& a, const float* prepared, int64_t n0, int64_t n1, float* scratch) {
#if QUASR_X86
  if (kernel == Kernel::Scalar) return rows_scalar(a, n0, n1, scratch);
  switch (a.bits) {
    case 2: return rows_avx2<2>(kernel, a, prepared, n0, n1, scratch);
    case 3: return rows_avx2<3>(kernel, a, prepared, n0, n1, scratch);
    case 4: return rows_avx2<4>(kernel, a, prepared, n0, n1, scratch);
    case 5: return rows_avx2<5>(kernel, a, prepared, n0, n1, scratch);
    case 6: return rows_avx2<6>(kernel, a, prepared, n0, n1, scratch);
    case 7: return rows_avx2<7>(kernel, a, prepared, n0, n1, scratch);
    default: return rows_avx2<8>(kernel, a, prepared, n0, n1, scratch);
  }
#else
  (void)kernel;
  (void)prepared;
  return rows_scalar(a, n0, n1, scratch);  // choose_kernel() never picks another path here
#endif
}

// ---------------------------------------------------------------------------------------------
// Activation fake-quant (plain loops: one pass for the range, one for the rounding; both are
// O(M*K) against the GEMM's O(M*N*K)).
// ---------------------------------------------------------------------------------------------

void quantize_activations(float* x, int64_t ld, int64_t K, const float* mul, const ActQuant& q, int64_t m0,
                          int64_t m1) {
  const float maxq = static_cast<float>((1 << q.bits) - 1);
  for (int64_t m = m0; m < m1; ++m) {
    float* row = x + m * ld;
    if (mul)
      for (int64_t k = 0; k < K; ++k) row[k] *= mul[k];
    if (q.bits == 0) continue;
    const int64_t span = q.scale <= 0.f && q.group > 0 ? q.group : K;
    for (int64_t k0 = 0; k0 < K; k0 += span) {
      const int64_t k1 = std::min(K, k0 + span);
      float s = q.scale, z = q.zero;
      if (s <= 0.f) {  // dynamic: this token's (or this block's) range
        float lo = 0.f, hi = 0.f;
        for (int64_t k = k0; k < k1; ++k) {
          lo = std::min(lo, row[k]);
          hi = std::max(hi, row[k]);
        }
        if (q.symmetric) {
          const float half = static_cast<float>(1 << (q.bits - 1));
          s = std::max(std::max(-lo, hi) / (half - 1.f), 1e-12f);
          z = half;
        } else {
          s = std::max((hi - lo) / maxq, 1e-12f);
          z = std::min(std::max(std::nearbyint(-lo / s), 0.f), maxq);
        }
      }
      for (int64_t k = k0; k < k1; ++k) {
        const float c = std::min(std::max(std::nearbyint(row[k] / s + z), 0.f), maxq);
        row[k] = (c - z) * s;
      }
    }
  }
}

}  // namespace quasr
