// Encoder attention with bf16 operands (see attention.h). Per head the keys and values are packed
// once into vdpbf16ps operand order; then each block of 4 query rows computes its scores against
// every key (16 keys per register, 4 x 4 register tile), an exact softmax over the whole row (the
// row of 1500 scores stays in L1), and the weighted sum of values (16 dims per register).
#include "attention.h"

#if defined(__x86_64__) || defined(_M_X64)
#define QUASR_ATTN_X86 1
#include <immintrin.h>
#else
#define QUASR_ATTN_X86 0
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace quasr {

namespace {

constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Round to nearest even, as vcvtneps2bf16 does (NaN stays NaN).
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
inline float bf16_round(float f) {
  const uint32_t u = uint32_t(bf16_bits(f)) << 16;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

// exp(x) for x <= 0, the same operations in both paths: x log2(e) = n + f with n the nearest
// integer, 2^f from its degree-6 Taylor polynomial (relative error below 2e-7, far under bf16's
// 4e-3), then scaled by 2^n. Inputs below -87 are clamped (their weight is below 2^-125).
constexpr float kLog2e = 1.44269504088896341f, kExpMin = -87.0f;
constexpr float kExpPoly[7] = {1.0f, 0.693147180559945f, 0.240226506959101f, 0.0555041086648216f,
                               0.00961812910762848f, 0.00133335581464284f, 0.000154035303933816f};

inline float exp_poly(float x) {
  x = std::max(x, kExpMin);
  const float n = std::nearbyint(x * kLog2e);
  const float f = std::fma(x, kLog2e, -n);
  float p = kExpPoly[6];
  for (int i = 5; i >= 0; --i) p = std::fma(p, f, kExpPoly[i]);
  return std::ldexp(p, int(n));
}

// Pack geometry: keys 16 per block (nkb blocks), dims in bf16 pairs (d2), values by key pair
// (npairs) and 16-dim vectors (dv dims).
struct Geometry {
  int64_t nkb, d2, npairs, dv;
  int64_t k_words() const { return nkb * d2 * 16; }
  int64_t v_offset_bytes() const { return round_up(k_words() * 4, 64); }
  explicit Geometry(int64_t tk, int64_t d) : nkb((tk + 15) / 16), d2((d + 1) / 2), npairs((tk + 1) / 2), dv(round_up(d, 16)) {}
};

// Scratch of one worker: 4 query rows in bf16 (ldq halves each), 4 score rows (lds floats), 4 rows
// of bf16 weights (ldp halves).
struct Scratch {
  int64_t ldq, lds, ldp;
  explicit Scratch(int64_t tk, int64_t d) : ldq(round_up(d, 32)), lds(round_up(round_up(tk, 16), 32)), ldp(round_up(tk, 32)) {}
  int64_t q_bytes() const { return 4 * ldq * 2; }
  int64_t s_bytes() const { return 4 * lds * 4; }
  int64_t p_bytes() const { return 4 * ldp * 2; }
  int64_t bytes() const { return q_bytes() + s_bytes() + p_bytes(); }
};

}  // namespace

int64_t attention_pack_bytes(int64_t tk, int64_t d) {
  const Geometry g(tk, d);
  return g.v_offset_bytes() + round_up(g.npairs * g.dv * 4, 64);
}

int64_t attention_scratch_bytes(int64_t tk, int64_t d) { return Scratch(tk, d).bytes(); }

void attention_rows_scalar(const AttentionHead& h, int64_t r0, int64_t r1, float* e) {
  for (int64_t i = r0; i < r1; ++i) {
    const float* q = h.q + i * h.q_stride;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < h.tk; ++j) {
      const float* k = h.k + j * h.k_stride;
      float s = 0.f;
      for (int64_t c = 0; c < h.d; ++c) s += bf16_round(q[c] * h.scale) * bf16_round(k[c]);
      e[j] = s;
      mx = std::max(mx, s);
    }
    float sum = 0.f;
    for (int64_t j = 0; j < h.tk; ++j) {
      e[j] = exp_poly(e[j] - mx);
      sum += e[j];
    }
    float* o = h.o + i * h.o_stride;
    for (int64_t c = 0; c < h.d; ++c) {
      float acc = 0.f;
      for (int64_t j = 0; j < h.tk; ++j) acc += bf16_round(e[j]) * bf16_round(h.v[j * h.v_stride + c]);
      o[c] = acc / sum;
    }
  }
}

#if QUASR_ATTN_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace {

inline __m512bh as_bh(__m512i x) { return (__m512bh)x; }

inline __mmask16 tail_mask(int64_t j, int64_t n) {
  return j + 16 <= n ? __mmask16(0xffff) : j >= n ? __mmask16(0) : __mmask16((1u << (n - j)) - 1);
}

inline __m512 exp_vec(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(kExpMin));
  const __m512 l2e = _mm512_set1_ps(kLog2e);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, l2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_fmsub_ps(x, l2e, n);
  __m512 p = _mm512_set1_ps(kExpPoly[6]);
  for (int i = 5; i >= 0; --i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExpPoly[i]));
  return _mm512_scalef_ps(p, n);
}

// n floats (times scale) to bf16 halves at dst, zeros up to round_up(n, 16).
inline void to_bf16(const float* src, int64_t n, float scale, uint16_t* dst) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t c = 0; c < n; c += 16) {
    const __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(c, n), src + c), s);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), (__m256i)_mm512_cvtneps_pbh(x));
  }
}

// Scores of the 4 query rows (bf16 pairs, ldqw words apart) against key blocks kb .. kb+NB-1.
template <int NB>
inline void scores(const uint32_t* qw, int64_t ldqw, const uint32_t* kp, int64_t d2, int64_t kb, float* s, int64_t lds) {
  __m512 acc[4][NB];
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < NB; ++c) acc[r][c] = _mm512_setzero_ps();
  const uint32_t* base = kp + kb * d2 * 16;
  for (int64_t i = 0; i < d2; ++i) {
    __m512i kv[NB];
    for (int c = 0; c < NB; ++c) kv[c] = _mm512_load_si512(base + (c * d2 + i) * 16);
    for (int r = 0; r < 4; ++r) {
      const __m512i b = _mm512_set1_epi32(int(qw[r * ldqw + i]));
      for (int c = 0; c < NB; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], as_bh(kv[c]), as_bh(b));
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < NB; ++c) _mm512_store_ps(s + r * lds + (kb + c) * 16, acc[r][c]);
}

// Weighted values for 4 rows (bf16 weight pairs, ldpw words apart) and value vectors v0 .. v0+NV-1,
// scaled by inv[r] and stored (d columns at most) to the rows of o.
template <int NV>
inline void weighted_values(const uint32_t* pw, int64_t ldpw, const uint32_t* vp, const Geometry& g, int64_t v0,
                            const float* inv, float* const* o, int rows, int64_t d) {
  __m512 acc[4][NV];
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t jp = 0; jp < g.npairs; ++jp) {
    __m512i vv[NV];
    const uint32_t* row = vp + jp * g.dv + v0 * 16;
    for (int c = 0; c < NV; ++c) vv[c] = _mm512_load_si512(row + c * 16);
    for (int r = 0; r < 4; ++r) {
      const __m512i b = _mm512_set1_epi32(int(pw[r * ldpw + jp]));
      for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], as_bh(vv[c]), as_bh(b));
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < NV; ++c) {
      const int64_t col = (v0 + c) * 16;
      _mm512_mask_storeu_ps(o[r] + col, tail_mask(col, d), _mm512_mul_ps(acc[r][c], _mm512_set1_ps(inv[r])));
    }
}

void pack_avx512bf16(const AttentionHead& h, uint8_t* pack) {
  const Geometry g(h.tk, h.d);
  uint32_t* kp = reinterpret_cast<uint32_t*>(pack);
  uint32_t* vp = reinterpret_cast<uint32_t*>(pack + g.v_offset_bytes());
  // Keys: each row to bf16, then a 16 x d2 transpose of the pairs into [block][pair][16].
  const int64_t ldr = round_up(2 * g.d2, 16);
  alignas(64) uint16_t rows[16 * 512];
  uint16_t* tmp = ldr <= 512 ? rows : new uint16_t[16 * ldr];
  for (int64_t kb = 0; kb < g.nkb; ++kb) {
    for (int64_t jj = 0; jj < 16; ++jj) {
      const int64_t j = kb * 16 + jj;
      uint16_t* dst = tmp + jj * ldr;
      if (j < h.tk) {
        to_bf16(h.k + j * h.k_stride, h.d, 1.f, dst);
        std::fill(dst + round_up(h.d, 16), dst + ldr, uint16_t(0));
      } else {
        std::fill(dst, dst + ldr, uint16_t(0));
      }
    }
    const uint32_t* pairs = reinterpret_cast<const uint32_t*>(tmp);
    uint32_t* out = kp + kb * g.d2 * 16;
    for (int64_t i = 0; i < g.d2; ++i)
      for (int64_t jj = 0; jj < 16; ++jj) out[i * 16 + jj] = pairs[jj * (ldr / 2) + i];
  }
  if (tmp != rows) delete[] tmp;
  // Values: rows 2jp and 2jp+1 converted together and interleaved into (low, high) pairs per dim.
  alignas(64) static const uint16_t kInterleave[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                       8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(kInterleave);
  for (int64_t jp = 0; jp < g.npairs; ++jp) {
    const float* a = h.v + 2 * jp * h.v_stride;
    const bool has_b = 2 * jp + 1 < h.tk;
    const float* b = has_b ? a + h.v_stride : a;
    for (int64_t c = 0; c < g.dv; c += 16) {
      const __mmask16 m = tail_mask(c, h.d);
      const __m512 lo = _mm512_maskz_loadu_ps(m, a + c);
      const __m512 hi = has_b ? _mm512_maskz_loadu_ps(m, b + c) : _mm512_setzero_ps();
      const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // lo in halves 0-15, hi in 16-31
      _mm512_store_si512(vp + jp * g.dv + c, _mm512_permutexvar_epi16(idx, both));
    }
  }
}

void rows_avx512bf16(const AttentionHead& h, const uint8_t* pack, int64_t r0, int64_t r1, uint8_t* scratch) {
  const Geometry g(h.tk, h.d);
  const Scratch sc(h.tk, h.d);
  const uint32_t* kp = reinterpret_cast<const uint32_t*>(pack);
  const uint32_t* vp = reinterpret_cast<const uint32_t*>(pack + g.v_offset_bytes());
  uint16_t* qh = reinterpret_cast<uint16_t*>(scratch);
  float* s = reinterpret_cast<float*>(scratch + sc.q_bytes());
  uint16_t* ph = reinterpret_cast<uint16_t*>(scratch + sc.q_bytes() + sc.s_bytes());
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t i0 = r0; i0 < r1; i0 += 4) {
    const int rows = int(std::min<int64_t>(4, r1 - i0));
    for (int r = 0; r < 4; ++r) {
      if (r < rows) to_bf16(h.q + (i0 + r) * h.q_stride, h.d, h.scale, qh + r * sc.ldq);
      std::fill(qh + r * sc.ldq + (r < rows ? round_up(h.d, 16) : 0), qh + (r + 1) * sc.ldq, uint16_t(0));
    }
    const uint32_t* qw = reinterpret_cast<const uint32_t*>(qh);
    int64_t kb = 0;
    for (; kb + 4 <= g.nkb; kb += 4) scores<4>(qw, sc.ldq / 2, kp, g.d2, kb, s, sc.lds);
    for (; kb < g.nkb; ++kb) scores<1>(qw, sc.ldq / 2, kp, g.d2, kb, s, sc.lds);
    float inv[4] = {0.f, 0.f, 0.f, 0.f};
    for (int r = 0; r < 4; ++r) {
      uint16_t* pr = ph + r * sc.ldp;
      if (r >= rows) {
        std::fill(pr, pr + sc.ldp, uint16_t(0));
        continue;
      }
      const float* sr = s + r * sc.lds;
      __m512 mx = neg_inf;
      for (int64_t j = 0; j < h.tk; j += 16) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(neg_inf, tail_mask(j, h.tk), sr + j));
      const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < sc.ldp; j += 32) {
        const __mmask16 ml = tail_mask(j, h.tk), mh = tail_mask(j + 16, h.tk);
        const __m512 lo = _mm512_maskz_mov_ps(ml, exp_vec(_mm512_sub_ps(_mm512_maskz_loadu_ps(ml, sr + j), m)));
        const __m512 hi = _mm512_maskz_mov_ps(mh, exp_vec(_mm512_sub_ps(_mm512_maskz_loadu_ps(mh, sr + j + 16), m)));
        sum = _mm512_add_ps(sum, _mm512_add_ps(lo, hi));
        _mm512_store_si512(pr + j, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
      inv[r] = 1.f / _mm512_reduce_add_ps(sum);
    }
    const uint32_t* pw = reinterpret_cast<const uint32_t*>(ph);
    float* o[4];
    for (int r = 0; r < 4; ++r) o[r] = h.o + (i0 + std::min(r, rows - 1)) * h.o_stride;
    const int64_t nvec = g.dv / 16;
    for (int64_t v0 = 0; v0 < nvec; v0 += 4) {
      switch (std::min<int64_t>(4, nvec - v0)) {
        case 4: weighted_values<4>(pw, sc.ldp / 2, vp, g, v0, inv, o, rows, h.d); break;
        case 3: weighted_values<3>(pw, sc.ldp / 2, vp, g, v0, inv, o, rows, h.d); break;
        case 2: weighted_values<2>(pw, sc.ldp / 2, vp, g, v0, inv, o, rows, h.d); break;
        default: weighted_values<1>(pw, sc.ldp / 2, vp, g, v0, inv, o, rows, h.d); break;
      }
    }
  }
}

}  // namespace
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

bool attention_bf16_supported() {
#if QUASR_ATTN_X86
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512bf16");
  return ok;
#else
  return false;
#endif
}

void attention_pack(const AttentionHead& h, uint8_t* pack) {
#if QUASR_ATTN_X86
  pack_avx512bf16(h, pack);
#else
  (void)h;
  (void)pack;
#endif
}

void attention_rows(const AttentionHead& h, const uint8_t* pack, int64_t r0, int64_t r1, uint8_t* scratch) {
#if QUASR_ATTN_X86
  rows_avx512bf16(h, pack, r0, r1, scratch);
#else
  (void)h, (void)pack, (void)r0, (void)r1, (void)scratch;
#endif
}

}  // namespace quasr
