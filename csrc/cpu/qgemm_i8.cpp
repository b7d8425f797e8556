// Integer-dot-product GEMM on the CPU (qgemm_i8.h): the repack into the i8 layout, the int8
// quantization of activations, a portable scalar path, and the SIMD paths (qgemm_i8_body.inc
// compiled once per ISA: AVX-512 VNNI, AVX-512BW, AVX2), chosen at run time.
#include "qgemm_i8.h"

#if defined(__x86_64__) || defined(_M_X64)
#define QUASR_I8_X86 1
#include <immintrin.h>
#else
#define QUASR_I8_X86 0
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

namespace quasr {

// Parts of a b-bit code (qgemm_i8.h): 8: 8; 7: 4+2+1; 6: 4+2; 5: 4+1; 4: 4; 3: 2+1; 2: 2. A part's
// shift in the code is also its first chunk in an octet (a part of width w has w chunks per octet).
static constexpr int part_count(int bits) { return bits == 7 ? 3 : (bits == 2 || bits == 4 || bits == 8) ? 1 : 2; }
static constexpr int part_width(int bits, int p) {
  return bits == 8 ? 8 : bits == 2 ? 2 : bits == 3 ? (p == 0 ? 2 : 1) : p == 0 ? 4 : bits == 5 ? 1 : bits == 6 ? 2 : p == 1 ? 2 : 1;
}
static constexpr int part_shift(int bits, int p) { return p == 0 ? 0 : part_shift(bits, p - 1) + part_width(bits, p - 1); }

int64_t i8_padded_n(int64_t N) { return (N + 63) / 64 * 64; }
int64_t i8_code_bytes(int64_t N, int64_t Kp, int bits) { return i8_padded_n(N) * Kp * bits / 8; }
int64_t i8_param_floats(int64_t N, int64_t Kp, int64_t group_size) { return i8_padded_n(N) / 16 * (Kp / group_size) * 48; }

void repack_i8(const QGemmArgs& w, int64_t b0, int64_t b1, uint8_t* codes, float* params) {
  const int64_t G = w.group_size, ng = w.Kp / G, gbytes = G * 2 * w.bits, bbytes = ng * gbytes;
  const float zsym = static_cast<float>(1 << (w.bits - 1));
  std::vector<int32_t> row(w.Kp);
  for (int64_t b = b0; b < b1; ++b) {
    std::memset(codes + b * bbytes, 0, bbytes);
    std::fill(params + b * ng * 48, params + (b + 1) * ng * 48, 0.f);
    for (int col = 0; col < 16; ++col) {
      const int64_t n = b * 16 + col;
      if (n >= w.N) break;
      decode_codes_row(w, n, row.data());
      for (int64_t g = 0; g < ng; ++g) {
        const float s = half_to_float(w.scales[n * ng + g]);
        const float z = w.zeros ? half_to_float(w.zeros[n * ng + g]) : zsym;
        int64_t sum = 0;
        uint8_t* group = codes + b * bbytes + g * gbytes;
        for (int64_t kk = 0; kk < G; ++kk) {
          const int code = row[g * G + kk];
          sum += code;
          uint8_t* octet = group + (kk / 32) * 64 * w.bits;
          const int j = static_cast<int>(kk % 32) / 4, byte = col * 4 + static_cast<int>(kk % 4);
          for (int p = 0; p < part_count(w.bits); ++p) {
            const int width = part_width(w.bits, p), sh = part_shift(w.bits, p), per = 8 / width;
            const int sub = (code >> sh) & ((1 << width) - 1);
            octet[(sh + j / per) * 64 + byte] |= static_cast<uint8_t>(sub << ((j % per) * width));
          }
        }
        float* p = params + (b * ng + g) * 48;
        p[col] = s;
        p[16 + col] = s * z;
        p[32 + col] = s * (static_cast<float>(sum) - static_cast<float>(G) * z);
      }
    }
  }
}

// The three row operations of the activation quantizer, per ISA (scalar here, SIMD in the body):
// lo/hi over a span (both start at 0), the codes of a span, and x * mul. Every ISA does the same
// float operations (a division, an add, round-to-nearest-even, a clamp), so the codes agree bit
// for bit with each other and with quantize_activations' fake-quant grid.
struct RowOps {
  void (*range)(const float* v, int64_t n, float* lo, float* hi);
  int64_t (*codes)(const float* v, int64_t n, float s, float z, float maxq, int offset, int8_t* out);
  void (*scale)(const float* v, const float* mul, int64_t n, float* out);
};

static void range_scalar(const float* v, int64_t n, float* lo, float* hi) {
  for (int64_t k = 0; k < n; ++k) {
    *lo = std::min(*lo, v[k]);
    *hi = std::max(*hi, v[k]);
  }
}

static int64_t codes_scalar(const float* v, int64_t n, float s, float z, float maxq, int offset, int8_t* out) {
  int64_t sum = 0;
  for (int64_t k = 0; k < n; ++k) {
    const float c = std::min(std::max(std::nearbyint(v[k] / s + z), 0.f), maxq);
    const int a = static_cast<int>(c) - offset;
    out[k] = static_cast<int8_t>(a);
    sum += a;
  }
  return sum;
}

static void scale_scalar(const float* v, const float* mul, int64_t n, float* out) {
  for (int64_t k = 0; k < n; ++k) out[k] = v[k] * mul[k];
}

// The (scale, zero) of one range, as quantize_activations (qgemm.cpp) computes them.
static void range_params(const RowOps& ops, const float* v, int64_t n, const I8ActQuant& q, float maxq, float* s,
                         float* z) {
  float lo = 0.f, hi = 0.f;
  ops.range(v, n, &lo, &hi);
  if (q.symmetric) {
    const float half = static_cast<float>(1 << (q.bits - 1));
    *s = std::max(std::max(-lo, hi) / (half - 1.f), 1e-12f);
    *z = half;
  } else {
    *s = std::max((hi - lo) / maxq, 1e-12f);
    *z = std::min(std::max(std::nearbyint(-lo / *s), 0.f), maxq);
  }
}

static void quantize_rows(const RowOps& ops, const float* x, int64_t ldx, int64_t K, int64_t Kp, int64_t group_size,
                          const float* mul, const I8ActQuant& q, int64_t m0, int64_t m1, int8_t* a, float* rowp) {
  const float maxq = static_cast<float>((1 << q.bits) - 1);
  const int64_t ng = Kp / group_size;
  std::vector<float> scaled(mul ? K : 0);
  for (int64_t m = m0; m < m1; ++m) {
    const float* row = x + m * ldx;
    if (mul) {
      ops.scale(row, mul, K, scaled.data());
      row = scaled.data();
    }
    float s = q.scale, z = q.zero;
    if (q.range == ActRange::Token) range_params(ops, row, K, q, maxq, &s, &z);
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t k0 = g * group_size, k1 = std::min(K, k0 + group_size);
      if (q.range == ActRange::Group) range_params(ops, row + k0, std::max<int64_t>(k1 - k0, 0), q, maxq, &s, &z);
      // a = q - offset must fit int8: the zero itself where the grid allows, else 128.
      const float offset = (z <= 128.f && maxq - z <= 127.f) ? z : 128.f;
      const int ioff = static_cast<int>(offset);
      int8_t* ar = a + m * Kp;
      int64_t sum = k1 > k0 ? ops.codes(row + k0, k1 - k0, s, z, maxq, ioff, ar + k0) : 0;
      const int pad = static_cast<int>(z) - ioff;  // columns past K hold x = 0, whose code is z
      for (int64_t k = std::max(k0, k1); k < k0 + group_size; ++k) {
        ar[k] = static_cast<int8_t>(pad);
        sum += pad;
      }
      float* rp = rowp + (m * ng + g) * 3;
      rp[0] = s;
      rp[1] = s * static_cast<float>(sum);
      rp[2] = s * (z - offset);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Portable scalar path: the same sums, one code at a time (and the reference the SIMD paths are
// checked against in csrc/cpu/tests/scalar_check.cpp).
// ---------------------------------------------------------------------------------------------
static int layout_code(const I8Layout& w, int64_t n, int64_t k) {
  const int64_t G = w.group_size, ng = w.Kp / G;
  const uint8_t* octet = w.codes + (n / 16) * ng * G * 2 * w.bits + (k / G) * G * 2 * w.bits + (k % G / 32) * 64 * w.bits;
  const int j = static_cast<int>(k % 32) / 4, byte = static_cast<int>(n % 16) * 4 + static_cast<int>(k % 4);
  int code = 0;
  for (int p = 0; p < part_count(w.bits); ++p) {
    const int width = part_width(w.bits, p), sh = part_shift(w.bits, p), per = 8 / width;
    code |= ((octet[(sh + j / per) * 64 + byte] >> ((j % per) * width)) & ((1 << width) - 1)) << sh;
  }
  return code;
}

static void run_scalar(const I8Layout& w, const I8Acts& x, const float* bias, float* y, int64_t c0, int64_t c1) {
  const int64_t G = w.group_size, ng = w.Kp / G;
  std::vector<int> codes(w.Kp);
  for (int64_t n = c0 * 64; n < std::min(w.N, c1 * 64); ++n) {
    for (int64_t k = 0; k < w.Kp; ++k) codes[k] = layout_code(w, n, k);
    for (int64_t m = 0; m < x.M; ++m) {
      float total = 0.f;
      for (int64_t g = 0; g < ng; ++g) {
        int32_t d = 0;
        for (int64_t k = g * G; k < (g + 1) * G; ++k) d += static_cast<int32_t>(x.a[m * w.Kp + k]) * codes[k];
        const float* p = w.params + ((n / 16) * ng + g) * 48 + n % 16;
        const float* rp = x.rowp + (m * ng + g) * 3;
        float t = static_cast<float>(d) * (p[0] * rp[0]) - p[16] * rp[1];
        if (x.zero_points) t -= p[32] * rp[2];
        total += t;
      }
      y[m * w.N + n] = total + (bias ? bias[n] : 0.f);
    }
  }
}

#if QUASR_I8_X86
// ---------------------------------------------------------------------------------------------
// AVX-512 with VNNI: vpdpbusd, 64 products per instruction into 16 int32 lanes.
// ---------------------------------------------------------------------------------------------
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")
// GCC 12's AVX-512 headers start some conversions from an `undefined` register it then reports
// as uninitialized (a false positive inside avx512fintrin.h).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace avx512vnni {
#include "qgemm_i8_avx512.inc"
template <bool BIG>
static inline vi vdot(vi acc, vi w, vi a) { return _mm512_dpbusd_epi32(acc, w, a); }
#include "qgemm_i8_body.inc"
}  // namespace avx512vnni

// ---------------------------------------------------------------------------------------------
// AVX-512BW without VNNI: vpmaddubsw (pairs into int16) + vpmaddwd (into int32).
// ---------------------------------------------------------------------------------------------
namespace avx512bw {
#include "qgemm_i8_avx512.inc"
// Codes above 127 would saturate vpmaddubsw's int16 pair sums (255 * 128 * 2): 8-bit codes are
// split into nibbles, each summed on its own and recombined in int32.
template <bool BIG>
static inline vi vdot(vi acc, vi w, vi a) {
  const vi ones = _mm512_set1_epi16(1);
  if constexpr (BIG) {
    const vi m = _mm512_set1_epi8(0x0f);
    const vi lo = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_and_si512(w, m), a), ones);
    const vi hi = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(w, 4), m), a), ones);
    return _mm512_add_epi32(acc, _mm512_add_epi32(lo, _mm512_slli_epi32(hi, 4)));
  } else {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(w, a), ones));
  }
}
#define QUASR_I8_ROW_OPS 1
#include "qgemm_i8_body.inc"
#undef QUASR_I8_ROW_OPS
}  // namespace avx512bw
#pragma GCC diagnostic pop
#pragma GCC pop_options

// ---------------------------------------------------------------------------------------------
// AVX2: as AVX-512BW on 32-byte vectors (a 64-byte step is two of them), 16 registers.
// ---------------------------------------------------------------------------------------------
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
using vi = __m256i;
using vf = __m256;
static constexpr int VB = 32, FL = 8;
static inline vi vload(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
static inline void vstore(void* p, vi v) { _mm256_storeu_si256(static_cast<__m256i*>(p), v); }
static inline vi vzero() { return _mm256_setzero_si256(); }
static inline vi vand(vi a, vi b) { return _mm256_and_si256(a, b); }
static inline vi vor(vi a, vi b) { return _mm256_or_si256(a, b); }
static inline vi vset8(char c) { return _mm256_set1_epi8(c); }
static inline vi vsrl16(vi a, int n) { return _mm256_srli_epi16(a, n); }
static inline vi vsll16(vi a, int n) { return _mm256_slli_epi16(a, n); }
static inline vi vbcast32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}
template <bool BIG>
static inline vi vdot(vi acc, vi w, vi a) {
  const vi ones = _mm256_set1_epi16(1);
  if constexpr (BIG) {
    const vi m = _mm256_set1_epi8(0x0f);
    const vi lo = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(w, m), a), ones);
    const vi hi = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w, 4), m), a), ones);
    return _mm256_add_epi32(acc, _mm256_add_epi32(lo, _mm256_slli_epi32(hi, 4)));
  } else {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), ones));
  }
}
static inline vf fload(const float* p) { return _mm256_loadu_ps(p); }
static inline void fstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf fset1(float v) { return _mm256_set1_ps(v); }
static inline vf fcvt(vi v) { return _mm256_cvtepi32_ps(v); }
static inline vf fmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf fadd(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf ffmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf fnmadd(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
static inline vf fdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf fmin(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline vf fmax(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf fround(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline float fhmin(vf a) {
  alignas(32) float t[8];
  _mm256_store_ps(t, a);
  return *std::min_element(t, t + 8);
}
static inline float fhmax(vf a) {
  alignas(32) float t[8];
  _mm256_store_ps(t, a);
  return *std::max_element(t, t + 8);
}
static inline vi ftoi(vf a) { return _mm256_cvtps_epi32(a); }
static inline vi vsub32(vi a, vi b) { return _mm256_sub_epi32(a, b); }
static inline vi vadd32(vi a, vi b) { return _mm256_add_epi32(a, b); }
static inline vi vset32(int v) { return _mm256_set1_epi32(v); }
static inline int64_t vhsum32(vi a) {
  alignas(32) int32_t t[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), a);
  int64_t s = 0;
  for (int32_t v : t) s += v;
  return s;
}
static inline void store_i8(int8_t* p, vi v) {  // 8 int32 in [-128, 127] -> 8 bytes (the packs cannot saturate)
  const __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(v, v), _mm256_setzero_si256());
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p),
                   _mm_unpacklo_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
}
static constexpr int kDirectCols(int rows) { return rows == 1 ? 4 : rows == 2 ? 2 : 1; }
static constexpr int kPanelRows = 3, kPanelCols = 1;
#define QUASR_I8_ROW_OPS 1
#include "qgemm_i8_body.inc"
#undef QUASR_I8_ROW_OPS
}  // namespace avx2
#pragma GCC pop_options
#endif

Isa best_isa() {
#if QUASR_I8_X86
  static const Isa best = [] {
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
      if (__builtin_cpu_supports("avx512vnni")) return Isa::Avx512Vnni;
      return Isa::Avx512Bw;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
    return Isa::Scalar;
  }();
  return best;
#else
  return Isa::Scalar;
#endif
}

// Each ISA's CPUs also run the ones before it (AVX-512BW machines have AVX2 and FMA).
bool isa_supported(Isa isa) { return static_cast<int>(isa) <= static_cast<int>(best_isa()); }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512Vnni: return "avx512-vnni";
    case Isa::Avx512Bw: return "avx512bw";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

int64_t i8_scratch_bytes(Isa isa, const I8Layout& w, int64_t M) {
  return isa == Isa::Scalar || M <= 4 ? 0 : 64 * w.Kp;
}

void quantize_activations_i8(Isa isa, const float* x, int64_t ldx, int64_t K, int64_t Kp, int64_t group_size,
                             const float* mul, const I8ActQuant& q, int64_t m0, int64_t m1, int8_t* a, float* rowp) {
  RowOps ops{range_scalar, codes_scalar, scale_scalar};
#if QUASR_I8_X86
  if (isa == Isa::Avx512Vnni || isa == Isa::Avx512Bw) ops = {avx512bw::range, avx512bw::codes, avx512bw::scale};
  if (isa == Isa::Avx2) ops = {avx2::range, avx2::codes, avx2::scale};
#else
  (void)isa;
#endif
  quantize_rows(ops, x, ldx, K, Kp, group_size, mul, q, m0, m1, a, rowp);
}

void qgemm_i8_chunks(Isa isa, const I8Layout& w, const I8Acts& x, const float* bias, float* y, int64_t c0, int64_t c1,
                     uint8_t* scratch) {
  switch (isa) {
#if QUASR_I8_X86
    case Isa::Avx512Vnni: avx512vnni::run(w, x, bias, y, c0, c1, scratch); return;
    case Isa::Avx512Bw: avx512bw::run(w, x, bias, y, c0, c1, scratch); return;
    case Isa::Avx2: avx2::run(w, x, bias, y, c0, c1, scratch); return;
#endif
    default: (void)scratch; run_scalar(w, x, bias, y, c0, c1); return;
  }
}

}  // namespace quasr
