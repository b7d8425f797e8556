// Standalone check of the torch-free CPU kernels (qgemm.h, qgemm_i8.h, rotate.h, attention.h) against naive math written
// here from docs/FORMAT.md, independently of the kernels' own decoders: random codes are packed
// into bit planes by this file, scales and zeros are encoded to fp16 bits by this file, and the
// expected results come from the unpacked codes in double precision.
//
// Built and run by .ci/arm_check.sh: natively (x86-64: the scalar path and, where the CPU has it,
// the AVX2 paths) and cross-compiled for aarch64 under qemu (the scalar path, the only one there).
//   g++ -O2 -std=c++17 -Icsrc/cpu csrc/cpu/qgemm.cpp csrc/cpu/rotate.cpp csrc/cpu/tests/scalar_check.cpp
// Exit status 0 when every check passes; the failing check is printed otherwise.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "attention.h"
#include "qgemm.h"
#include "qgemm_i8.h"
#include "rotate.h"

namespace {

int failures = 0, checks = 0;

void expect_close(const char* what, const std::vector<float>& got, const std::vector<double>& want, double rtol) {
  ++checks;
  double scale = 1e-6, worst = 0.0;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  size_t at = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(err <= worst)) {  // also catches NaN
      worst = std::isnan(err) ? INFINITY : err;
      at = i;
    }
  }
  if (!(worst <= rtol * scale)) {
    ++failures;
    std::printf("FAIL %s: max |err| %.3g at %zu (got %.8g, want %.8g), tolerance %.3g\n", what, worst, at,
                static_cast<double>(got[at]), want[at], rtol * scale);
  }
}

// fp16 bits of m * 2^p for an integer 1024 <= m < 2048 (a normal half, exactly representable).
uint16_t half_bits(int m, int p) {
  const int exponent = p + 10 + 15;  // value = (m / 1024) * 2^(exponent - 15)
  return static_cast<uint16_t>((exponent << 10) | (m - 1024));
}

struct HalfValue {
  uint16_t bits;
  double value;
};

// A random positive half m * 2^p (m in [1024, 2048)), p in [pmin, pmax].
HalfValue random_half(std::mt19937& rng, int pmin, int pmax) {
  const int m = std::uniform_int_distribution<int>(1024, 2047)(rng);
  const int p = std::uniform_int_distribution<int>(pmin, pmax)(rng);
  return {half_bits(m, p), std::ldexp(static_cast<double>(m), p)};
}

// An integer zero point 0 <= z < 2^bits as a half (exact), or a non-integer one (HQQ-style) z + 0.25.
HalfValue zero_half(int z, bool quarter) {
  const double v = z + (quarter ? 0.25 : 0.0);
  if (v == 0.0) return {0, 0.0};
  int p = 0;  // v = m * 2^p with 1024 <= m < 2048
  double m = v;
  while (m < 1024) m *= 2, --p;
  while (m >= 2048) m /= 2, ++p;
  return {half_bits(static_cast<int>(m), p), v};
}

// FORMAT.md: planes of power-of-two widths, low bits first, widest plane first in the row; element
// k of a plane of width w sits in byte k*w/8 at bit (k*w) mod 8.
std::vector<int> planes_of(int bits) {
  switch (bits) {
    case 8: return {8};
    case 7: return {4, 2, 1};
    case 6: return {4, 2};
    case 5: return {4, 1};
    case 4: return {4};
    case 3: return {2, 1};
    default: return {2};
  }
}

void pack_row(const int* codes, int64_t Kp, int bits, uint8_t* out) {
  int shift = 0;
  for (int w : planes_of(bits)) {
    for (int64_t k = 0; k < Kp; ++k) {
      const int sub = (codes[k] >> shift) & ((1 << w) - 1);
      out[k * w / 8] |= static_cast<uint8_t>(sub << ((k * w) % 8));
    }
    out += Kp * w / 8;
    shift += w;
  }
}

struct Layer {
  int64_t N, Kp, group_size;
  int bits;
  bool symmetric;
  std::vector<uint8_t> packed;
  std::vector<uint16_t> scales, zeros;
  std::vector<float> bias;
  std::vector<double> w;  // naive dequantized [N, Kp]
};

Layer make_layer(std::mt19937& rng, int64_t N, int64_t Kp, int64_t G, int bits, bool symmetric, bool with_bias) {
  Layer L{N, Kp, G, bits, symmetric, {}, {}, {}, {}, {}};
  const int64_t ng = Kp / G, row_bytes = Kp * bits / 8;
  L.packed.assign(N * row_bytes, 0);
  L.scales.resize(N * ng);
  if (!symmetric) L.zeros.resize(N * ng);
  L.w.resize(N * Kp);
  std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
  std::vector<int> codes(Kp);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < Kp; ++k) codes[k] = code(rng);
    pack_row(codes.data(), Kp, bits, L.packed.data() + n * row_bytes);
    for (int64_t g = 0; g < ng; ++g) {
      const HalfValue s = random_half(rng, -20, -14);  // ~1e-3 .. 1e-1
      L.scales[n * ng + g] = s.bits;
      double z = static_cast<double>(1 << (bits - 1));
      if (!symmetric) {
        const HalfValue zh = zero_half(code(rng), (n + g) % 3 == 0);
        L.zeros[n * ng + g] = zh.bits;
        z = zh.value;
      }
      for (int64_t k = g * G; k < (g + 1) * G; ++k) L.w[n * Kp + k] = (codes[k] - z) * s.value;
    }
  }
  if (with_bias) {
    std::normal_distribution<float> nd;
    L.bias.resize(N);
    for (auto& b : L.bias) b = nd(rng);
  }
  return L;
}

quasr::QGemmArgs args_of(const Layer& L, const float* x, float* y, int64_t M) {
  quasr::QGemmArgs a{};
  a.x = x;
  a.packed = L.packed.data();
  a.scales = L.scales.data();
  a.zeros = L.symmetric ? nullptr : L.zeros.data();
  a.bias = L.bias.empty() ? nullptr : L.bias.data();
  a.y = y;
  a.M = M;
  a.N = L.N;
  a.Kp = L.Kp;
  a.group_size = L.group_size;
  a.bits = L.bits;
  return a;
}

// What the torch binding does for one path (ops.cpp), single-threaded: prepare, then tasks of rows.
void run_path(quasr::Kernel kernel, const quasr::QGemmArgs& a) {
  std::vector<float> prepared(quasr::prepared_floats(kernel, a));
  quasr::prepare(kernel, a, prepared.data());
  std::vector<float> scratch(quasr::scratch_floats(kernel, a));
  const int64_t rows = quasr::rows_per_task(kernel);
  for (int64_t n0 = 0; n0 < a.N; n0 += rows)
    quasr::qgemm_rows(kernel, a, prepared.data(), n0, std::min(a.N, n0 + rows), scratch.data());
}

void check_qgemm(std::mt19937& rng) {
  [[maybe_unused]] const bool avx2 = quasr::cpu_has_avx2_fma();
  std::normal_distribution<float> nd;
  char what[160];
  for (int bits = 2; bits <= 8; ++bits)
    for (int64_t G : {32, 64, 128})
      for (int sym = 0; sym < 2; ++sym) {
        const int64_t N = 37, Kp = 256;
        const Layer L = make_layer(rng, N, Kp, G, bits, sym, (bits + G) % 2 == 0);
        // dequantize_rows (AVX2 where available, else scalar) against the naive weight
        std::vector<float> wq(N * Kp);
        quasr::QGemmArgs d = args_of(L, nullptr, nullptr, 0);
        quasr::dequantize_rows(d, 0, N, wq.data());
        std::snprintf(what, sizeof what, "dequantize_rows b%d g%lld %s", bits, (long long)G, sym ? "sym" : "asym");
        expect_close(what, wq, L.w, 1e-6);
        for (int64_t M : {1, 3, 7, 13}) {
          std::vector<float> x(M * Kp), y(M * N);
          for (auto& v : x) v = nd(rng);
          std::vector<double> want(M * N);
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              double s = L.bias.empty() ? 0.0 : L.bias[n];
              for (int64_t k = 0; k < Kp; ++k) s += static_cast<double>(x[m * Kp + k]) * L.w[n * Kp + k];
              want[m * N + n] = s;
            }
          const quasr::QGemmArgs a = args_of(L, x.data(), y.data(), M);
          std::vector<quasr::Kernel> paths = {quasr::Kernel::Scalar};
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
          if (avx2) paths.insert(paths.end(), {quasr::Kernel::Gemv, quasr::Kernel::Gemm});
#else  // every path is the scalar one here (qgemm_rows falls back); check that the fallback holds
          paths.insert(paths.end(), {quasr::Kernel::Gemv, quasr::Kernel::Gemm});
#endif
          for (quasr::Kernel k : paths) {
            std::fill(y.begin(), y.end(), NAN);
            run_path(k, a);
            std::snprintf(what, sizeof what, "qgemm path %d b%d g%lld %s M=%lld", static_cast<int>(k), bits,
                          (long long)G, sym ? "sym" : "asym", (long long)M);
            expect_close(what, y, want, 2e-5);
          }
        }
      }
}

// The int8-activation GEMM (qgemm_i8.h), every ISA this CPU runs (scalar only off x86): x is
// fake-quantized by the float path's quantize_activations (the same grid), then multiplied in
// double with the naive weight; the int8 path must give that from its codes.
void check_qgemm_i8(std::mt19937& rng) {
  std::normal_distribution<float> nd;
  char what[200];
  for (int bits = 2; bits <= 8; ++bits)
    for (int64_t G : {32, 128})
      for (int sym = 0; sym < 2; ++sym) {
        const int64_t N = 70, Kp = 256, K = 250;
        const Layer L = make_layer(rng, N, Kp, G, bits, sym, bits % 2 == 0);
        quasr::QGemmArgs c = args_of(L, nullptr, nullptr, 0);
        std::vector<uint8_t> codes(quasr::i8_code_bytes(N, Kp, bits));
        std::vector<float> params(quasr::i8_param_floats(N, Kp, G));
        quasr::repack_i8(c, 0, quasr::i8_padded_n(N) / 16, codes.data(), params.data());
        const quasr::I8Layout w{codes.data(), params.data(), N, Kp, G, bits};
        for (int mode = 0; mode < 2; ++mode)  // 0: per token, asymmetric 8-bit; 1: per group, symmetric
          for (int64_t M : {1, 3, 6, 9}) {
            std::vector<float> x(M * K), fq(M * Kp, 0.f), y(M * N);
            for (auto& v : x) v = nd(rng);
            for (int64_t m = 0; m < M; ++m)
              for (int64_t k = 0; k < K; ++k) fq[m * Kp + k] = x[m * K + k];
            const quasr::ActQuant fake{8, mode == 1, 0.f, 0.f, mode == 1 ? G : 0};
            quasr::quantize_activations(fq.data(), Kp, K, nullptr, fake, 0, M);
            std::vector<double> want(M * N);
            for (int64_t m = 0; m < M; ++m)
              for (int64_t n = 0; n < N; ++n) {
                double s = L.bias.empty() ? 0.0 : L.bias[n];
                for (int64_t k = 0; k < Kp; ++k) s += static_cast<double>(fq[m * Kp + k]) * L.w[n * Kp + k];
                want[m * N + n] = s;
              }
            const quasr::I8ActQuant q{8, mode == 1, mode == 1 ? quasr::ActRange::Group : quasr::ActRange::Token, 0.f, 0.f};
            std::vector<int8_t> a(M * Kp);
            std::vector<float> rowp(M * (Kp / G) * 3);
            std::vector<int8_t> a_scalar(M * Kp);
            std::vector<float> rowp_scalar(M * (Kp / G) * 3);
            quasr::quantize_activations_i8(quasr::Isa::Scalar, x.data(), K, K, Kp, G, nullptr, q, 0, M,
                                           a_scalar.data(), rowp_scalar.data());
            for (int isa = 0; isa <= static_cast<int>(quasr::best_isa()); ++isa) {
              quasr::quantize_activations_i8(static_cast<quasr::Isa>(isa), x.data(), K, K, Kp, G, nullptr, q, 0, M,
                                             a.data(), rowp.data());
              ++checks;
              if (a != a_scalar || rowp != rowp_scalar) {
                ++failures;
                std::printf("FAIL quantize_activations_i8 %s differs from the scalar codes (b%d g%lld mode %d)\n",
                            quasr::isa_name(static_cast<quasr::Isa>(isa)), bits, (long long)G, mode);
              }
            }
            bool zp = false;
            for (size_t i = 2; i < rowp.size(); i += 3) zp = zp || rowp[i] != 0.f;
            const quasr::I8Acts acts{a.data(), rowp.data(), M, zp};
            for (int isa = 0; isa <= static_cast<int>(quasr::best_isa()); ++isa) {
              std::vector<uint8_t> scratch(quasr::i8_scratch_bytes(static_cast<quasr::Isa>(isa), w, M) + 64);
              uint8_t* aligned = scratch.data() + (64 - reinterpret_cast<uintptr_t>(scratch.data()) % 64) % 64;
              std::fill(y.begin(), y.end(), NAN);
              quasr::qgemm_i8_chunks(static_cast<quasr::Isa>(isa), w, acts, L.bias.empty() ? nullptr : L.bias.data(),
                                     y.data(), 0, quasr::i8_padded_n(N) / 64, aligned);
              std::snprintf(what, sizeof what, "qgemm_i8 %s b%d g%lld %s mode %d M=%lld",
                            quasr::isa_name(static_cast<quasr::Isa>(isa)), bits, (long long)G, sym ? "sym" : "asym",
                            mode, (long long)M);
              expect_close(what, y, want, 1e-4);
            }
          }
      }
}

// Activation fake-quant: every value on its grid (integer code in [0, 2^bits)), within half a step
// of the (smoothed) input where it is inside the range, and the padding columns untouched (zero).
void check_act_quant(std::mt19937& rng) {
  std::normal_distribution<float> nd;
  const int64_t M = 5, K = 200, ld = 224;
  char what[160];
  for (int bits = 2; bits <= 8; ++bits)
    for (int mode = 0; mode < 3; ++mode) {  // 0 static asym, 1 dynamic asym, 2 dynamic sym
      std::vector<float> x(M * ld, 0.f), mul(K);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < K; ++k) x[m * ld + k] = nd(rng);
      for (auto& v : mul) v = 0.5f + std::fabs(nd(rng));
      const std::vector<float> x0 = x;
      quasr::ActQuant q{bits, mode == 2, mode == 0 ? 0.05f : 0.f, mode == 0 ? static_cast<float>((1 << bits) / 2) : 0.f};
      quasr::quantize_activations(x.data(), ld, K, mul.data(), q, 0, M);
      ++checks;
      bool ok = true;
      const double maxq = (1 << bits) - 1;
      for (int64_t m = 0; m < M && ok; ++m) {
        double s = q.scale, z = q.zero;
        if (mode != 0) {
          double lo = 0, hi = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double v = static_cast<double>(x0[m * ld + k]) * mul[k];
            lo = std::min(lo, v), hi = std::max(hi, v);
          }
          if (mode == 2) {
            s = std::max(std::max(-lo, hi) / ((1 << (bits - 1)) - 1.0), 1e-12);
            z = 1 << (bits - 1);
          } else {
            s = std::max((hi - lo) / maxq, 1e-12);
            z = std::min(std::max(std::nearbyint(-lo / s), 0.0), maxq);
          }
        }
        for (int64_t k = 0; k < ld && ok; ++k) {
          const double out = x[m * ld + k];
          if (k >= K) {
            ok = out == 0.0;
            continue;
          }
          const double c = out / s + z;  // the code, up to rounding of s in float
          const double v = static_cast<double>(x0[m * ld + k]) * mul[k];
          const double clamped = std::min(std::max(v, -z * s), (maxq - z) * s);
          ok = std::fabs(c - std::nearbyint(c)) < 1e-3 && c > -1e-3 && c < maxq + 1e-3 &&
               std::fabs(out - clamped) <= 0.5 * s * (1 + 1e-4) + 1e-6;
        }
      }
      if (!ok) {
        ++failures;
        std::snprintf(what, sizeof what, "quantize_activations b%d mode %d", bits, mode);
        std::printf("FAIL %s\n", what);
      }
    }
}

// bf16 attention (attention.h) against double-precision math on bf16-rounded operands, rounded
// here with this file's own round-to-nearest-even; the softmax weights rounded from float.
float round_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t lsb = (u >> 16) & 1u;
  u = (u + 0x7fffu + lsb) & 0xffff0000u;
  std::memcpy(&f, &u, 4);
  return f;
}

void check_attention(std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-2.f, 2.f);
  const int64_t shapes[][3] = {{1, 1, 1}, {5, 7, 64}, {17, 33, 52}, {9, 130, 3}, {6, 70, 80}};
  for (const auto& sh : shapes) {
    const int64_t tq = sh[0], tk = sh[1], d = sh[2];
    std::vector<float> q(tq * d), k(tk * d), v(tk * d);
    for (auto* t : {&q, &k, &v})
      for (float& x : *t) x = dist(rng);
    const float scale = 1.f / std::sqrt(static_cast<float>(d));
    std::vector<double> want(tq * d);
    for (int64_t i = 0; i < tq; ++i) {
      std::vector<double> s(tk);
      double mx = -INFINITY, sum = 0.0;
      for (int64_t j = 0; j < tk; ++j) {
        double acc = 0.0;
        for (int64_t c = 0; c < d; ++c) acc += double(round_bf16(q[i * d + c] * scale)) * double(round_bf16(k[j * d + c]));
        s[j] = acc;
        mx = std::max(mx, acc);
      }
      for (int64_t j = 0; j < tk; ++j) {
        s[j] = std::exp(s[j] - mx);
        sum += s[j];
      }
      for (int64_t c = 0; c < d; ++c) {
        double acc = 0.0;
        for (int64_t j = 0; j < tk; ++j) acc += double(round_bf16(float(s[j]))) * double(round_bf16(v[j * d + c]));
        want[i * d + c] = acc / sum;
      }
    }
    std::vector<float> got(tq * d, NAN), scratch(tk);
    quasr::AttentionHead h{q.data(), k.data(), v.data(), got.data(), tq, tk, d, d, d, d, d, scale};
    char what[96];
    quasr::attention_rows_scalar(h, 0, tq, scratch.data());
    std::snprintf(what, sizeof what, "attention portable tq=%lld tk=%lld d=%lld", (long long)tq, (long long)tk, (long long)d);
    expect_close(what, got, want, 1e-3);
    if (!quasr::attention_bf16_supported()) continue;
    std::vector<uint8_t> pack(quasr::attention_pack_bytes(tk, d) + 64), work(quasr::attention_scratch_bytes(tk, d) + 64);
    auto aligned = [](std::vector<uint8_t>& b) {
      return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(b.data()) + 63) & ~uintptr_t(63));
    };
    std::fill(got.begin(), got.end(), NAN);
    quasr::attention_pack(h, aligned(pack));
    quasr::attention_rows(h, aligned(pack), 0, tq, aligned(work));
    std::snprintf(what, sizeof what, "attention avx512-bf16 tq=%lld tk=%lld d=%lld", (long long)tq, (long long)tk, (long long)d);
    expect_close(what, got, want, 1e-3);
  }
}

// Rotation: y = (x * signs) (F_0 kron F_1 ...) * scale, row-vector convention, against the dense
// Kronecker product built here entry by entry (Sylvester entries (-1)^popcount(i & j)).
void check_rotate(std::mt19937& rng) {
  struct Case {
    std::vector<int64_t> orders;
    std::vector<bool> dense;
  };
  const std::vector<Case> cases = {
      {{16, 24}, {false, true}},  {{512}, {false}},  {{24, 32}, {true, false}}, {{2, 20, 64}, {false, true, false}},
      {{4, 3, 8}, {false, true, false}}, {{12, 20}, {true, true}}, {{1}, {false}},
  };
  std::normal_distribution<float> nd;
  char what[160];
  for (const Case& c : cases) {
    int64_t K = 1;
    for (int64_t o : c.orders) K *= o;
    const int nf = static_cast<int>(c.orders.size());
    std::vector<std::vector<float>> mats(nf);
    std::vector<quasr::RotationFactor> factors(nf);
    for (int i = 0; i < nf; ++i) {
      if (c.dense[i]) {
        mats[i].resize(c.orders[i] * c.orders[i]);
        for (auto& v : mats[i]) v = nd(rng);
      }
      factors[i] = {c.orders[i], c.dense[i] ? mats[i].data() : nullptr};
    }
    auto entry = [&](int i, int64_t r, int64_t col) -> double {
      if (c.dense[i]) return mats[i][r * c.orders[i] + col];
      return __builtin_popcountll(static_cast<unsigned long long>(r & col)) % 2 ? -1.0 : 1.0;
    };
    auto kron = [&](int64_t r, int64_t col) {  // multi-index, first factor most significant
      double v = 1.0;
      for (int i = nf - 1; i >= 0; --i) {
        v *= entry(i, r % c.orders[i], col % c.orders[i]);
        r /= c.orders[i], col /= c.orders[i];
      }
      return v;
    };
    std::vector<int8_t> signs(K);
    for (auto& s : signs) s = (rng() & 1) ? 1 : -1;
    const float scale = 1.0f / std::sqrt(static_cast<float>(K));
    for (int64_t M : {1, 3}) {
      std::vector<float> x(M * K);
      for (auto& v : x) v = nd(rng);
      std::vector<double> want(M * K, 0.0);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t col = 0; col < K; ++col) {
          double s = 0;
          for (int64_t r = 0; r < K; ++r) s += static_cast<double>(x[m * K + r]) * signs[r] * kron(r, col);
          want[m * K + col] = s * scale;
        }
      for (int use_signs = 0; use_signs < 2; ++use_signs) {
        std::vector<double> w = want;
        if (!use_signs) {  // recompute without signs
          for (int64_t m = 0; m < M; ++m)
            for (int64_t col = 0; col < K; ++col) {
              double s = 0;
              for (int64_t r = 0; r < K; ++r) s += static_cast<double>(x[m * K + r]) * kron(r, col);
              w[m * K + col] = s * scale;
            }
        }
        for (int path = 0; path < 2; ++path) {  // 0: rotate_rows_scalar, 1: rotate_rows (dispatching)
          std::vector<float> y(M * K, NAN), scratch;
          quasr::RotateArgs a{};
          a.x = x.data();
          a.signs = use_signs ? signs.data() : nullptr;
          a.y = y.data();
          a.M = M;
          a.K = K;
          a.factors = factors.data();
          a.n_factors = a.n_applied = nf;
          a.scale = scale;
          scratch.resize(quasr::rotate_scratch_floats(a));
          if (path == 0) quasr::rotate_rows_scalar(a, 0, M, scratch.data()); else quasr::rotate_rows(a, 0, M, scratch.data());
          std::snprintf(what, sizeof what, "rotate %s K=%lld nf=%d M=%lld signs=%d", path ? "rows" : "scalar",
                        (long long)K, nf, (long long)M, use_signs);
          expect_close(what, y, w, 2e-5);
        }
      }
    }
  }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
#if !(defined(__x86_64__) || defined(_M_X64) || defined(__i386__))
  ++checks;
  if (quasr::cpu_has_avx2_fma() || quasr::choose_kernel(quasr::Kernel::Gemv, 1) != quasr::Kernel::Scalar ||
      quasr::choose_kernel(quasr::Kernel::Auto, 256) != quasr::Kernel::Scalar) {
    ++failures;
    std::printf("FAIL non-x86: cpu_has_avx2_fma() must be false and every request resolve to Scalar\n");
  }
#endif
  const float h = quasr::half_to_float(half_bits(1536, -10));  // 1.5
  ++checks;
  if (h != 1.5f) {
    ++failures;
    std::printf("FAIL half_to_float(1.5) = %g\n", static_cast<double>(h));
  }
  check_qgemm(rng);
  check_qgemm_i8(rng);
  check_act_quant(rng);
  check_rotate(rng);
  check_attention(rng);
  std::printf("scalar_check: %s, avx2 paths %s, int8 paths up to %s, bf16 attention %s: %d checks, %d failures\n",
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
              "x86",
#elif defined(__aarch64__)
              "aarch64",
#else
              "other arch",
#endif
              quasr::cpu_has_avx2_fma() ? "checked too" : "absent (scalar only)", quasr::isa_name(quasr::best_isa()),
              quasr::attention_bf16_supported() ? "checked too" : "absent (portable only)", checks, failures);
  return failures ? 1 : 0;
}
