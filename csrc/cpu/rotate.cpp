// Online Hadamard / Kronecker rotation of activation rows (see rotate.h). Each row is copied into a
// per-thread buffer with its signs applied, every factor is applied along its axis in place (the
// row stays in L1/L2), and the scaled result is written out. A Sylvester factor of order n costs
// log2(n) add/sub per element, a dense one n multiply-adds.
#include "rotate.h"

// x86 only: the AVX2+FMA path. Elsewhere only the portable scalar path is compiled.
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define QUASR_X86 1
#include <immintrin.h>
#else
#define QUASR_X86 0
#endif

#include <algorithm>
#include <cstring>

#include "qgemm.h"

namespace quasr {

namespace {

// Axis geometry of factor i for a row viewed as [outer, order, inner].
struct Axis {
  int64_t outer, n, inner;
  const float* dense;
};

Axis axis_of(const RotateArgs& a, int i) {
  int64_t outer = 1, inner = 1;
  for (int j = 0; j < i; ++j) outer *= a.factors[j].order;
  for (int j = i + 1; j < a.n_factors; ++j) inner *= a.factors[j].order;
  return {outer, a.factors[i].order, inner, a.factors[i].dense};
}

// ---- plain reference paths --------------------------------------------------------------------

void fwht_axis_scalar(float* x, const Axis& ax) {
  for (int64_t o = 0; o < ax.outer; ++o) {
    float* base = x + o * ax.n * ax.inner;
    for (int64_t h = 1; h < ax.n; h *= 2)
      for (int64_t i = 0; i < ax.n; i += 2 * h)
        for (int64_t j = i; j < i + h; ++j) {
          float* p = base + j * ax.inner;
          float* q = p + h * ax.inner;
          for (int64_t t = 0; t < ax.inner; ++t) {
            const float u = p[t], v = q[t];
            p[t] = u + v;
            q[t] = u - v;
          }
        }
  }
}

// out[b, t] = sum_b' x[b', t] A[b', b] along the axis (row-vector times A).
void dense_axis_scalar(float* x, float* tmp, const Axis& ax) {
  const int64_t len = ax.n * ax.inner;
  for (int64_t o = 0; o < ax.outer; ++o) {
    float* base = x + o * len;
    std::fill(tmp, tmp + len, 0.f);
    for (int64_t bp = 0; bp < ax.n; ++bp) {
      const float* src = base + bp * ax.inner;
      for (int64_t b = 0; b < ax.n; ++b) {
        const float c = ax.dense[bp * ax.n + b];
        float* dst = tmp + b * ax.inner;
        for (int64_t t = 0; t < ax.inner; ++t) dst[t] += c * src[t];
      }
    }
    std::memcpy(base, tmp, len * sizeof(float));
  }
}

#if QUASR_X86
// ---- AVX2 paths -------------------------------------------------------------------------------
#define QUASR_AVX2 __attribute__((target("avx2,fma")))

// The 8-point Walsh-Hadamard transform of one register (butterflies at distance 1, 2 and 4).
QUASR_AVX2 inline __m256 fwht8(__m256 v) {
  __m256 s = _mm256_permute_ps(v, 0xB1);  // swap neighbours
  v = _mm256_blend_ps(_mm256_add_ps(v, s), _mm256_sub_ps(s, v), 0xAA);
  s = _mm256_permute_ps(v, 0x4E);  // swap pairs
  v = _mm256_blend_ps(_mm256_add_ps(v, s), _mm256_sub_ps(s, v), 0xCC);
  s = _mm256_permute2f128_ps(v, v, 0x01);  // swap halves
  return _mm256_blend_ps(_mm256_add_ps(v, s), _mm256_sub_ps(s, v), 0xF0);
}

// p[t], q[t] = p[t] + q[t], p[t] - q[t] for t < len.
QUASR_AVX2 inline void butterfly(float* p, float* q, int64_t len) {
  int64_t t = 0;
  for (; t + 8 <= len; t += 8) {
    const __m256 u = _mm256_loadu_ps(p + t), v = _mm256_loadu_ps(q + t);
    _mm256_storeu_ps(p + t, _mm256_add_ps(u, v));
    _mm256_storeu_ps(q + t, _mm256_sub_ps(u, v));
  }
  for (; t < len; ++t) {
    const float u = p[t], v = q[t];
    p[t] = u + v;
    q[t] = u - v;
  }
}

QUASR_AVX2 void fwht_axis_avx2(float* x, const Axis& ax) {
  for (int64_t o = 0; o < ax.outer; ++o) {
    float* base = x + o * ax.n * ax.inner;
    int64_t h = 1;
    if (ax.inner == 1 && ax.n >= 8) {  // contiguous transform: first three stages inside registers
      for (int64_t i = 0; i < ax.n; i += 8) _mm256_storeu_ps(base + i, fwht8(_mm256_loadu_ps(base + i)));
      h = 8;
    }
    for (; h < ax.n; h *= 2)
      for (int64_t i = 0; i < ax.n; i += 2 * h)
        for (int64_t j = i; j < i + h; j += (ax.inner == 1 ? h : 1)) {
          // inner == 1: the h butterflies of this block are one contiguous run
          const int64_t run = ax.inner == 1 ? h : ax.inner;
          butterfly(base + j * ax.inner, base + (j + h) * ax.inner, run);
        }
  }
}

// out[0, 8V) = sum_{j < count} coef[j * coef_stride] * src[j * src_stride + (0, 8V)], with the 8V
// sums held in registers for the whole reduction (one broadcast, V loads and V FMAs per term).
template <int V>
QUASR_AVX2 inline void dot_chunk(float* out, const float* src, int64_t src_stride, const float* coef,
                                 int64_t coef_stride, int64_t count) {
  __m256 acc[V];
  for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_ps();
  for (int64_t j = 0; j < count; ++j) {
    const __m256 c = _mm256_set1_ps(coef[j * coef_stride]);
    const float* s = src + j * src_stride;
    for (int v = 0; v < V; ++v) acc[v] = _mm256_fmadd_ps(c, _mm256_loadu_ps(s + 8 * v), acc[v]);
  }
  for (int v = 0; v < V; ++v) _mm256_storeu_ps(out + 8 * v, acc[v]);
}

// out[0, len) = sum_j coef[j * coef_stride] * src[j * src_stride + (0, len)].
QUASR_AVX2 void dot_run(float* out, const float* src, int64_t src_stride, const float* coef, int64_t coef_stride,
                        int64_t count, int64_t len) {
  int64_t t = 0;
  for (; t + 64 <= len; t += 64) dot_chunk<8>(out + t, src + t, src_stride, coef, coef_stride, count);
  switch ((len - t) / 8) {
    case 7: dot_chunk<7>(out + t, src + t, src_stride, coef, coef_stride, count); break;
    case 6: dot_chunk<6>(out + t, src + t, src_stride, coef, coef_stride, count); break;
    case 5: dot_chunk<5>(out + t, src + t, src_stride, coef, coef_stride, count); break;
    case 4: dot_chunk<4>(out + t, src + t, src_stride, coef, coef_stride, count); break;
    case 3: dot_chunk<3>(out + t, src + t, src_stride, coef, coef_stride, count); break;
    case 2: dot_chunk<2>(out + t, src + t, src_stride, coef, coef_stride, count); break;
    case 1: dot_chunk<1>(out + t, src + t, src_stride, coef, coef_stride, count); break;
    default: break;
  }
  t += (len - t) / 8 * 8;
  for (; t < len; ++t) {
    float acc = 0.f;
    for (int64_t j = 0; j < count; ++j) acc += coef[j * coef_stride] * src[j * src_stride + t];
    out[t] = acc;
  }
}

QUASR_AVX2 void dense_axis_avx2(float* x, float* tmp, const Axis& ax) {
  const int64_t len = ax.n * ax.inner;
  for (int64_t o = 0; o < ax.outer; ++o) {
    float* base = x + o * len;
    if (ax.inner == 1) {  // tmp[:] = sum_b' x[b'] A[b', :]: rows of A against the row's entries
      dot_run(tmp, ax.dense, ax.n, base, 1, ax.n, ax.n);
    } else {  // tmp[b, :] = sum_b' A[b', b] x[b', :]: the row's runs against a column of A
      for (int64_t b = 0; b < ax.n; ++b) dot_run(tmp + b * ax.inner, base, ax.inner, ax.dense + b, ax.n, ax.n, ax.inner);
    }
    std::memcpy(base, tmp, len * sizeof(float));
  }
}

QUASR_AVX2 void rotate_row_avx2(const RotateArgs& a, const float* xr, float* yr, float* buf, float* tmp) {
  int64_t k = 0;
  if (a.signs) {
    for (; k + 8 <= a.K; k += 8) {
      const __m128i s8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(a.signs + k));
      const __m256 s = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s8));
      _mm256_storeu_ps(buf + k, _mm256_mul_ps(_mm256_loadu_ps(xr + k), s));
    }
    for (; k < a.K; ++k) buf[k] = xr[k] * a.signs[k];
  } else {
    std::memcpy(buf, xr, a.K * sizeof(float));
  }
  for (int i = 0; i < a.n_applied; ++i) {
    const Axis ax = axis_of(a, i);
    if (ax.n == 1 && !ax.dense) continue;  // the Sylvester matrix of order 1 is the identity
    if (ax.dense) dense_axis_avx2(buf, tmp, ax); else fwht_axis_avx2(buf, ax);
  }
  const __m256 sc = _mm256_set1_ps(a.scale);
  for (k = 0; k + 8 <= a.K; k += 8) _mm256_storeu_ps(yr + k, _mm256_mul_ps(_mm256_loadu_ps(buf + k), sc));
  for (; k < a.K; ++k) yr[k] = buf[k] * a.scale;
}
#endif  // QUASR_X86

void rotate_row_scalar(const RotateArgs& a, const float* xr, float* yr, float* buf, float* tmp) {
  for (int64_t k = 0; k < a.K; ++k) buf[k] = a.signs ? xr[k] * a.signs[k] : xr[k];
  for (int i = 0; i < a.n_applied; ++i) {
    const Axis ax = axis_of(a, i);
    if (ax.n == 1 && !ax.dense) continue;  // the Sylvester matrix of order 1 is the identity
    if (ax.dense) dense_axis_scalar(buf, tmp, ax); else fwht_axis_scalar(buf, ax);
  }
  for (int64_t k = 0; k < a.K; ++k) yr[k] = buf[k] * a.scale;
}

}  // namespace

int64_t rotate_scratch_floats(const RotateArgs& a) { return 2 * a.K; }

void rotate_rows_scalar(const RotateArgs& a, int64_t m0, int64_t m1, float* scratch) {
  for (int64_t m = m0; m < m1; ++m) rotate_row_scalar(a, a.x + m * a.K, a.y + m * a.K, scratch, scratch + a.K);
}

void rotate_rows(const RotateArgs& a, int64_t m0, int64_t m1, float* scratch) {
  if (!cpu_has_avx2_fma()) return rotate_rows_scalar(a, m0, m1, scratch);
#if QUASR_X86
  for (int64_t m = m0; m < m1; ++m) rotate_row_avx2(a, a.x + m * a.K, a.y + m * a.K, scratch, scratch + a.K);
#endif
}

}  // namespace quasr
