// Torch binding of the CPU kernels of the `quasr::qlinear`, `dequantize`, `rotate` and `attention` ops, threaded with
// at::parallel_for. Only the ATen headers this file needs (torch/extension.h costs ~45 s).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "attention.h"
#include "qgemm.h"
#include "qgemm_i8.h"
#include "rotate.h"

namespace {

at::Tensor qlinear_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                       const std::optional<at::Tensor>& zeros, const std::optional<at::Tensor>& bias, int64_t bits,
                       int64_t group_size, int64_t in_features, int64_t kernel,
                       const std::optional<at::Tensor>& input_mul, int64_t act_bits, bool act_symmetric,
                       double act_scale, double act_zero, bool act_group) {
  TORCH_CHECK(bits >= 2 && bits <= 8, "quasr::qlinear: bits must be 2..8, got ", bits);
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kByte, "quasr::qlinear: packed must be uint8 [N, Kp*bits/8]");
  TORCH_CHECK((packed.size(1) * 8) % bits == 0, "quasr::qlinear: packed row length does not match bits");
  const int64_t N = packed.size(0), Kp = packed.size(1) * 8 / bits;
  TORCH_CHECK(group_size > 0 && Kp % group_size == 0 && group_size % 8 == 0 && Kp % 32 == 0,
              "quasr::qlinear: bad group_size ", group_size, " for padded K ", Kp);
  TORCH_CHECK(in_features > 0 && in_features <= Kp, "quasr::qlinear: in_features ", in_features, " > padded K ", Kp);
  TORCH_CHECK(x.size(-1) == in_features, "quasr::qlinear: input has ", x.size(-1), " features, layer expects ", in_features);
  const int64_t ng = Kp / group_size;
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.dim() == 2 && scales.size(0) == N && scales.size(1) == ng,
              "quasr::qlinear: scales must be float16 [N, n_groups]");
  if (zeros.has_value())
    TORCH_CHECK(zeros->scalar_type() == at::kHalf && zeros->sizes() == scales.sizes(),
                "quasr::qlinear: zeros must be float16 like scales");
  if (bias.has_value()) TORCH_CHECK(bias->numel() == N, "quasr::qlinear: bias must have ", N, " elements");
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu(), "quasr::qlinear: CPU kernel got a non-CPU tensor");
  TORCH_CHECK(act_bits == 0 || (act_bits >= 2 && act_bits <= 8), "quasr::qlinear: act_bits must be 0 (off) or 2..8, got ",
              act_bits);
  if (input_mul.has_value())
    TORCH_CHECK(input_mul->numel() == in_features && input_mul->scalar_type() == at::kFloat,
                "quasr::qlinear: input_mul must be float32 [in_features]");

  const auto kind = quasr::choose_kernel(static_cast<quasr::Kernel>(kernel), 1);  // validates the request
  TORCH_CHECK(static_cast<quasr::Kernel>(kernel) == quasr::Kernel::Auto ||
                  static_cast<quasr::Kernel>(kernel) == quasr::Kernel::Scalar || kind != quasr::Kernel::Scalar,
              "quasr::qlinear: an AVX2 kernel was requested but this CPU lacks AVX2/FMA/F16C");

  at::Tensor x2 = x.reshape({-1, in_features}).to(at::kFloat).contiguous();
  if (Kp != in_features) x2 = at::constant_pad_nd(x2, {0, Kp - in_features}, 0);
  const int64_t M = x2.size(0);
  if (act_bits > 0 || input_mul.has_value()) {
    // Fused input transform: smoothing multiply and activation fake-quant, on a private copy of x.
    if (x2.data_ptr() == x.data_ptr()) x2 = x2.clone();
    at::Tensor mul_c = input_mul.has_value() ? input_mul->contiguous() : at::Tensor();
    const float* mul = mul_c.defined() ? mul_c.data_ptr<float>() : nullptr;
    const quasr::ActQuant q{static_cast<int>(act_bits), act_symmetric, static_cast<float>(act_scale),
                            static_cast<float>(act_zero), act_group ? group_size : 0};
    float* xp = x2.data_ptr<float>();
    at::parallel_for(0, M, 64, [&](int64_t b, int64_t e) { quasr::quantize_activations(xp, Kp, in_features, mul, q, b, e); });
  }
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor y = at::empty({M, N}, x2.options());
  at::Tensor packed_c = packed.contiguous(), scales_c = scales.contiguous();
  at::Tensor zeros_c = zeros.has_value() ? zeros->contiguous() : at::Tensor();
  at::Tensor bias_c = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  if (M == 0) return y.view(out_shape).to(x.scalar_type());

  quasr::QGemmArgs args;
  args.x = x2.data_ptr<float>();
  args.packed = packed_c.data_ptr<uint8_t>();
  args.scales = reinterpret_cast<const uint16_t*>(scales_c.data_ptr<at::Half>());
  args.zeros = zeros_c.defined() ? reinterpret_cast<const uint16_t*>(zeros_c.data_ptr<at::Half>()) : nullptr;
  args.bias = bias_c.defined() ? bias_c.data_ptr<float>() : nullptr;
  args.y = y.data_ptr<float>();
  args.M = M;
  args.N = N;
  args.Kp = Kp;
  args.group_size = group_size;
  args.bits = static_cast<int>(bits);

  const quasr::Kernel chosen = quasr::choose_kernel(static_cast<quasr::Kernel>(kernel), M);
  if (chosen == quasr::Kernel::Blas) {
    // Tiles of W rows dequantized in parallel, then one BLAS call per tile (BLAS threads itself).
    constexpr int64_t kTile = 256;
    at::Tensor wtile = at::empty({std::min(N, kTile), Kp}, x2.options());
    at::Tensor bias_f = bias_c;
    for (int64_t n0 = 0; n0 < N; n0 += kTile) {
      const int64_t nt = std::min(kTile, N - n0);
      at::Tensor w = wtile.narrow(0, 0, nt);
      float* wp = w.data_ptr<float>();
      at::parallel_for(n0, n0 + nt, 16, [&](int64_t b, int64_t e) { quasr::dequantize_rows(args, b, e, wp + (b - n0) * Kp); });
      at::Tensor part = at::mm(x2, w.t());
      if (bias_f.defined()) part.add_(bias_f.narrow(0, n0, nt));
      y.narrow(1, n0, nt).copy_(part);
    }
    return y.view(out_shape).to(x.scalar_type());
  }
  std::vector<float> prepared(quasr::prepared_floats(chosen, args));
  quasr::prepare(chosen, args, prepared.data());
  const int64_t rows = quasr::rows_per_task(chosen);
  const int64_t tasks = (N + rows - 1) / rows;
  const int64_t scratch = quasr::scratch_floats(chosen, args);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(scratch);
    for (int64_t t = begin; t < end; ++t)
      quasr::qgemm_rows(chosen, args, prepared.data(), t * rows, std::min(N, (t + 1) * rows), buf.data());
  });
  return y.view(out_shape).to(x.scalar_type());
}

quasr::QGemmArgs canonical_args(const at::Tensor& packed, const at::Tensor& scales, const at::Tensor& zeros,
                                int64_t bits, int64_t group_size, const char* op) {
  TORCH_CHECK(bits >= 2 && bits <= 8 && packed.dim() == 2 && packed.scalar_type() == at::kByte && packed.is_cpu(),
              op, ": packed must be a CPU uint8 [N, Kp*bits/8] tensor and bits 2..8");
  const int64_t N = packed.size(0), Kp = packed.size(1) * 8 / bits;
  TORCH_CHECK(group_size > 0 && Kp % group_size == 0 && Kp % 32 == 0 && group_size % 32 == 0, op,
              ": bad group_size ", group_size, " for padded K ", Kp);
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.numel() == N * (Kp / group_size), op, ": bad scales");
  if (zeros.defined()) TORCH_CHECK(zeros.scalar_type() == at::kHalf && zeros.numel() == scales.numel(), op, ": bad zeros");
  quasr::QGemmArgs args{};
  args.packed = packed.data_ptr<uint8_t>();
  args.scales = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::Half>());
  args.zeros = zeros.defined() ? reinterpret_cast<const uint16_t*>(zeros.data_ptr<at::Half>()) : nullptr;
  args.N = N;
  args.Kp = Kp;
  args.group_size = group_size;
  args.bits = static_cast<int>(bits);
  return args;
}

// Dense float [N, in_features] weight from the packed format (native twin of format.dequantize).
at::Tensor dequantize_cpu(const at::Tensor& packed, const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                          int64_t bits, int64_t group_size, int64_t in_features) {
  at::Tensor packed_c = packed.contiguous(), scales_c = scales.contiguous();
  at::Tensor zeros_c = zeros.has_value() ? zeros->contiguous() : at::Tensor();
  const quasr::QGemmArgs args = canonical_args(packed_c, scales_c, zeros_c, bits, group_size, "quasr::dequantize");
  const int64_t N = args.N, Kp = args.Kp;
  TORCH_CHECK(in_features > 0 && in_features <= Kp, "quasr::dequantize: in_features ", in_features, " > padded K ", Kp);
  at::Tensor out = at::empty({N, Kp}, packed.options().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t b, int64_t e) { quasr::dequantize_rows(args, b, e, op + b * Kp); });
  return Kp == in_features ? out : out.narrow(1, 0, in_features);
}

// Row parts (rows x K / order) from which a dense last factor runs as one BLAS GEMM (bench/rotation.py).
constexpr int64_t kGemmLastMinRows = 256;

// y = (x * signs) (F_0 kron ... kron F_{n-1}) * scale along the last dim (rotate.h): the online
// rotation of QuaRot/SpinQuant layers. dense[i] None: Sylvester Hadamard of orders[i].
at::Tensor rotate_cpu(const at::Tensor& x, const std::optional<at::Tensor>& signs, at::IntArrayRef orders,
                      const c10::List<std::optional<at::Tensor>>& dense, double scale, int64_t kernel) {
  TORCH_CHECK(x.device().is_cpu(), "quasr::rotate: CPU kernel got a non-CPU tensor");
  TORCH_CHECK(x.dim() >= 1, "quasr::rotate: x must have a last dimension");
  TORCH_CHECK(kernel == 0 || kernel == 3, "quasr::rotate: kernel must be 0 (auto) or 3 (scalar), got ", kernel);
  TORCH_CHECK(!orders.empty() && static_cast<int64_t>(dense.size()) == static_cast<int64_t>(orders.size()),
              "quasr::rotate: one dense entry (or None) per order");
  const int64_t K = x.size(-1);
  int64_t prod = 1;
  std::vector<at::Tensor> keep;
  std::vector<quasr::RotationFactor> factors;
  for (size_t i = 0; i < orders.size(); ++i) {
    const int64_t n = orders[i];
    TORCH_CHECK(n >= 1, "quasr::rotate: orders must be positive");
    prod *= n;
    const std::optional<at::Tensor> d = dense.get(i);
    if (d.has_value()) {
      TORCH_CHECK(d->scalar_type() == at::kFloat && d->dim() == 2 && d->size(0) == n && d->size(1) == n,
                  "quasr::rotate: dense factor ", i, " must be float32 [", n, ", ", n, "]");
      keep.push_back(d->contiguous());
      factors.push_back({n, keep.back().data_ptr<float>()});
    } else {
      TORCH_CHECK((n & (n - 1)) == 0, "quasr::rotate: a Sylvester factor needs a power-of-two order, got ", n);
      factors.push_back({n, nullptr});
    }
  }
  TORCH_CHECK(prod == K, "quasr::rotate: the orders multiply to ", prod, " but rows have ", K, " elements");
  at::Tensor signs_c;
  if (signs.has_value()) {
    TORCH_CHECK(signs->numel() == K, "quasr::rotate: signs must have ", K, " elements");
    signs_c = signs->to(at::kChar).contiguous();
  }
  at::Tensor xc = x.to(at::kFloat).contiguous();
  at::Tensor y = at::empty(xc.sizes(), xc.options());
  quasr::RotateArgs args{};
  args.x = xc.data_ptr<float>();
  args.signs = signs_c.defined() ? signs_c.data_ptr<int8_t>() : nullptr;
  args.y = y.data_ptr<float>();
  args.K = K;
  args.M = xc.numel() / K;  // K >= 1: the orders multiply to it
  args.factors = factors.data();
  args.n_factors = args.n_applied = static_cast<int>(factors.size());
  args.scale = static_cast<float>(scale);
  // A dense last factor (a Paley core or a learned factor, contiguous along the row) is one GEMM over
  // all row parts: BLAS reuses each loaded factor entry across many rows, the per-row path cannot.
  const quasr::RotationFactor last = factors.back();
  const bool gemm_last = kernel == 0 && last.dense != nullptr && args.M * (K / last.order) >= kGemmLastMinRows;
  if (gemm_last) {
    args.n_applied -= 1;
    args.scale = 1.f;
  }
  const int64_t scratch = quasr::rotate_scratch_floats(args);
  at::parallel_for(0, args.M, 16, [&](int64_t b, int64_t e) {
    std::vector<float> buf(scratch);
    if (kernel == 3) quasr::rotate_rows_scalar(args, b, e, buf.data()); else quasr::rotate_rows(args, b, e, buf.data());
  });
  if (!gemm_last) return y;
  at::Tensor parts = y.view({-1, last.order});
  return at::mm(parts, keep.back()).mul_(scale).view(xc.sizes());
}

// Unmasked, non-causal attention with bf16 operands (attention.h). q [B, H, Tq, D], k and v
// [B, H, Tk, D], float32 with a contiguous last dimension (any other strides: transformers passes
// [B, T, H, D] views). The result is [B, H, Tq, D] laid out as [B, Tq, H, D], so transformers'
// transpose back to [B, Tq, H*D] copies nothing. kernel: 0 the AVX-512 BF16 path where the CPU has
// it, else the portable one; 1 the AVX-512 BF16 path (an error without it); 2 the portable path.
// attention_pack + attention_packed split the same computation for keys and values that serve many
// calls (a decoder's cross-attention: packed once per clip, read at every step).
// The first 64-byte boundary at or after p (buffers are allocated 64 bytes longer than they need).
uint8_t* align64(uint8_t* p) {
  return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}

at::Tensor rows_of(const at::Tensor& t) {
  at::Tensor f = t.to(at::kFloat);
  return f.stride(3) == 1 ? f : f.contiguous();
}

void check_kv(const char* op, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(k.device().is_cpu() && v.device().is_cpu(), op, ": CPU kernel got a non-CPU tensor");
  TORCH_CHECK(k.dim() == 4 && v.dim() == 4, op, ": k and v must be [B, H, T, D]");
  TORCH_CHECK(k.sizes() == v.sizes(), op, ": k and v must have the same shape, got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK(k.size(2) >= 1 && k.size(3) >= 1, op, ": needs at least one key and one dimension");
}

quasr::AttentionHead head_of(const at::Tensor& qf, const at::Tensor* kf, const at::Tensor* vf, const at::Tensor& out,
                             int64_t bh, int64_t tk, double scale) {
  const int64_t H = qf.size(1), Tq = qf.size(2), D = qf.size(3), b = bh / H, h = bh % H;
  return quasr::AttentionHead{qf.data_ptr<float>() + b * qf.stride(0) + h * qf.stride(1),
                              kf ? kf->data_ptr<float>() + b * kf->stride(0) + h * kf->stride(1) : nullptr,
                              vf ? vf->data_ptr<float>() + b * vf->stride(0) + h * vf->stride(1) : nullptr,
                              out.data_ptr<float>() + b * Tq * H * D + h * D,
                              Tq, tk, D, qf.stride(2), kf ? kf->stride(2) : 0, vf ? vf->stride(2) : 0, H * D,
                              static_cast<float>(scale)};
}

constexpr int64_t kAttentionRows = 16;  // query rows per task: four register tiles

// The AVX-512 BF16 rows of every head from packs (pack_bytes apart, 64-byte aligned).
void attention_rows_packed(const at::Tensor& qf, const at::Tensor& out, const uint8_t* packs, int64_t pack_bytes,
                           int64_t tk, double scale) {
  const int64_t BH = qf.size(0) * qf.size(1), Tq = qf.size(2);
  const int64_t blocks = (Tq + kAttentionRows - 1) / kAttentionRows;
  const int64_t scratch = quasr::attention_scratch_bytes(tk, qf.size(3));
  at::parallel_for(0, BH * blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<uint8_t> buf(scratch + 64);
    uint8_t* aligned = align64(buf.data());
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bh = t / blocks, r0 = (t % blocks) * kAttentionRows;
      quasr::attention_rows(head_of(qf, nullptr, nullptr, out, bh, tk, scale), packs + bh * pack_bytes, r0,
                            std::min(Tq, r0 + kAttentionRows), aligned);
    }
  });
}

uint8_t* aligned64(const at::Tensor& bytes) { return align64(bytes.data_ptr<uint8_t>()); }

// Packs of every head of k and v: uint8 [B*H, pack_bytes + 64] rows whose data starts 64-byte
// aligned at a fixed offset (see aligned64 on the whole tensor: rows are pack_bytes apart).
at::Tensor pack_heads(const at::Tensor& kf, const at::Tensor& vf) {
  const int64_t B = kf.size(0), H = kf.size(1), Tk = kf.size(2), D = kf.size(3);
  const int64_t pack_bytes = quasr::attention_pack_bytes(Tk, D);
  at::Tensor packs = at::empty({B * H * pack_bytes + 64}, kf.options().dtype(at::kByte));
  uint8_t* base = aligned64(packs);
  at::parallel_for(0, B * H, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bh = b0; bh < b1; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      quasr::AttentionHead head{nullptr, kf.data_ptr<float>() + b * kf.stride(0) + h * kf.stride(1),
                                vf.data_ptr<float>() + b * vf.stride(0) + h * vf.stride(1), nullptr,
                                0, Tk, D, 0, kf.stride(2), vf.stride(2), 0, 1.f};
      quasr::attention_pack(head, base + bh * pack_bytes);
    }
  });
  return packs;
}

at::Tensor attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, int64_t kernel) {
  check_kv("quasr::attention", k, v);
  TORCH_CHECK(q.device().is_cpu() && q.dim() == 4, "quasr::attention: q must be a CPU tensor [B, H, T, D]");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "quasr::attention: q ", q.sizes(), " and k ", k.sizes(), " differ in batch, heads or head size "
              "(grouped-query attention is not supported here: repeat the key/value heads first)");
  TORCH_CHECK(kernel >= 0 && kernel <= 2, "quasr::attention: kernel must be 0 (auto), 1 (avx512-bf16) or 2 "
              "(portable), got ", kernel);
  const bool simd = kernel == 1 || (kernel == 0 && quasr::attention_bf16_supported());
  TORCH_CHECK(!simd || quasr::attention_bf16_supported(), "quasr::attention: kernel 1 needs AVX-512 BF16, which "
              "this CPU does not have (use kernel 0 or 2)");
  const at::Tensor qf = rows_of(q), kf = rows_of(k), vf = rows_of(v);
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2), D = q.size(3);
  at::Tensor out = at::empty({B, Tq, H, D}, qf.options());
  if (!simd) {
    const int64_t blocks = (Tq + kAttentionRows - 1) / kAttentionRows;
    at::parallel_for(0, B * H * blocks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<float> e(Tk);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = (t % blocks) * kAttentionRows;
        quasr::attention_rows_scalar(head_of(qf, &kf, &vf, out, t / blocks, Tk, scale), r0,
                                     std::min(Tq, r0 + kAttentionRows), e.data());
      }
    });
    return out.transpose(1, 2);
  }
  const at::Tensor packs = pack_heads(kf, vf);
  attention_rows_packed(qf, out, aligned64(packs), quasr::attention_pack_bytes(Tk, D), Tk, scale);
  return out.transpose(1, 2);
}

at::Tensor attention_pack_cpu(const at::Tensor& k, const at::Tensor& v) {
  check_kv("quasr_cpu::attention_pack", k, v);
  TORCH_CHECK(quasr::attention_bf16_supported(), "quasr_cpu::attention_pack: needs AVX-512 BF16, which this CPU "
              "does not have (use quasr::attention, whose portable path needs no pack)");
  return pack_heads(rows_of(k), rows_of(v));
}

// q [B, H, Tq, D] against keys and values packed by attention_pack from [B, H, tk, D].
at::Tensor attention_packed_cpu(const at::Tensor& q, const at::Tensor& packs, int64_t tk, double scale) {
  TORCH_CHECK(q.device().is_cpu() && q.dim() == 4, "quasr_cpu::attention_packed: q must be a CPU tensor [B, H, T, D]");
  TORCH_CHECK(quasr::attention_bf16_supported(), "quasr_cpu::attention_packed: needs AVX-512 BF16");
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), D = q.size(3);
  TORCH_CHECK(tk >= 1, "quasr_cpu::attention_packed: tk must be positive");
  const int64_t pack_bytes = quasr::attention_pack_bytes(tk, D);
  TORCH_CHECK(packs.scalar_type() == at::kByte && packs.dim() == 1 && packs.is_contiguous() &&
                  packs.numel() == B * H * pack_bytes + 64,
              "quasr_cpu::attention_packed: the pack does not hold ", B * H, " heads of ", tk, " keys of size ", D,
              " (make it with quasr_cpu::attention_pack from k and v of that shape)");
  const at::Tensor qf = rows_of(q);
  at::Tensor out = at::empty({B, Tq, H, D}, qf.options());
  attention_rows_packed(qf, out, aligned64(packs), pack_bytes, tk, scale);
  return out.transpose(1, 2);
}

bool cpu_has_bf16_attention() { return quasr::attention_bf16_supported(); }

int64_t attention_pack_bytes(int64_t tk, int64_t d) { return quasr::attention_pack_bytes(tk, d); }

bool cpu_has_avx2() { return quasr::cpu_has_avx2_fma(); }

int64_t best_isa() { return static_cast<int64_t>(quasr::best_isa()); }

// The i8 runtime layout (qgemm_i8.h) of a canonical packed weight: (codes uint8, params float32).
std::tuple<at::Tensor, at::Tensor> repack_i8_cpu(const at::Tensor& packed, const at::Tensor& scales,
                                                 const std::optional<at::Tensor>& zeros, int64_t bits, int64_t group_size) {
  at::Tensor packed_c = packed.contiguous(), scales_c = scales.contiguous();
  at::Tensor zeros_c = zeros.has_value() ? zeros->contiguous() : at::Tensor();
  const quasr::QGemmArgs args = canonical_args(packed_c, scales_c, zeros_c, bits, group_size, "quasr_cpu::repack_i8");
  at::Tensor codes = at::empty({quasr::i8_code_bytes(args.N, args.Kp, args.bits)}, packed.options());
  at::Tensor params = at::empty({quasr::i8_param_floats(args.N, args.Kp, group_size)}, packed.options().dtype(at::kFloat));
  uint8_t* cp = codes.data_ptr<uint8_t>();
  float* pp = params.data_ptr<float>();
  at::parallel_for(0, quasr::i8_padded_n(args.N) / 16, 4,
                   [&](int64_t b, int64_t e) { quasr::repack_i8(args, b, e, cp, pp); });
  return {codes, params};
}

// y = x @ W^T (+ bias) with x quantized to int8 codes (act_* as quasr::qlinear; act_range 0 per
// token, 1 static per tensor, 2 per token and weight group) and W in the i8 layout.
at::Tensor qlinear_i8_cpu(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& params,
                          const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size, int64_t in_features,
                          int64_t out_features, const std::optional<at::Tensor>& input_mul, int64_t act_bits,
                          int64_t act_range, bool act_symmetric, double act_scale, double act_zero, int64_t isa) {
  const char* op = "quasr_cpu::qlinear_i8";
  TORCH_CHECK(bits >= 2 && bits <= 8, op, ": bits must be 2..8, got ", bits);
  TORCH_CHECK(act_bits >= 2 && act_bits <= 8, op, ": act_bits must be 2..8, got ", act_bits);
  TORCH_CHECK(act_range >= 0 && act_range <= 2, op, ": act_range must be 0 (token), 1 (tensor) or 2 (group)");
  TORCH_CHECK(x.is_cpu() && codes.is_cpu() && params.is_cpu(), op, ": CPU kernel got a non-CPU tensor");
  TORCH_CHECK(x.size(-1) == in_features, op, ": input has ", x.size(-1), " features, layer expects ", in_features);
  TORCH_CHECK(group_size > 0 && group_size % 32 == 0 && quasr::i8_group_fits(group_size), op, ": bad group_size ",
              group_size);
  const int64_t Kp = (in_features + group_size - 1) / group_size * group_size, N = out_features;
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.numel() == quasr::i8_code_bytes(N, Kp, static_cast<int>(bits)),
              op, ": codes do not match the layer (repack it with quasr_cpu::repack_i8)");
  TORCH_CHECK(params.scalar_type() == at::kFloat && params.numel() == quasr::i8_param_floats(N, Kp, group_size), op,
              ": params do not match the layer");
  if (act_range == 1)
    TORCH_CHECK(act_scale > 0 && act_zero == std::nearbyint(act_zero), op,
                ": a static range needs scale > 0 and a whole-number zero, got ", act_scale, ", ", act_zero);
  if (input_mul.has_value())
    TORCH_CHECK(input_mul->numel() == in_features && input_mul->scalar_type() == at::kFloat, op,
                ": input_mul must be float32 [in_features]");
  if (bias.has_value()) TORCH_CHECK(bias->numel() == N, op, ": bias must have ", N, " elements");
  const quasr::Isa chosen = isa < 0 ? quasr::best_isa() : static_cast<quasr::Isa>(isa);
  TORCH_CHECK(isa <= 3 && quasr::isa_supported(chosen), op, ": this CPU cannot run ISA ", isa, " (best: ",
              quasr::isa_name(quasr::best_isa()), ")");

  at::Tensor x2 = x.reshape({-1, in_features}).to(at::kFloat).contiguous();
  const int64_t M = x2.size(0), ng = Kp / group_size;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor y = at::empty({M, N}, x2.options());
  if (M == 0) return y.view(out_shape).to(x.scalar_type());
  at::Tensor a = at::empty({M, Kp}, x2.options().dtype(at::kChar));
  at::Tensor rowp = at::empty({M, ng, 3}, x2.options());
  at::Tensor mul_c = input_mul.has_value() ? input_mul->contiguous() : at::Tensor();
  const quasr::I8ActQuant q{static_cast<int>(act_bits), act_symmetric, static_cast<quasr::ActRange>(act_range),
                            static_cast<float>(act_scale), static_cast<float>(act_zero)};
  const float* xp = x2.data_ptr<float>();
  const float* mul = mul_c.defined() ? mul_c.data_ptr<float>() : nullptr;
  int8_t* ap = a.data_ptr<int8_t>();
  float* rp = rowp.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t b, int64_t e) {
    quasr::quantize_activations_i8(chosen, xp, in_features, in_features, Kp, group_size, mul, q, b, e, ap, rp);
  });
  bool zero_points = false;
  for (int64_t i = 0; i < M * ng && !zero_points; ++i) zero_points = rp[i * 3 + 2] != 0.f;

  at::Tensor bias_c = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const quasr::I8Layout w{codes.data_ptr<uint8_t>(), params.data_ptr<float>(), N, Kp, group_size, static_cast<int>(bits)};
  const quasr::I8Acts acts{ap, rp, M, zero_points};
  const float* bp = bias_c.defined() ? bias_c.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t scratch = quasr::i8_scratch_bytes(chosen, w, M);
  at::parallel_for(0, quasr::i8_padded_n(N) / 64, 1, [&](int64_t b, int64_t e) {
    std::vector<uint8_t> buf(scratch + 64);
    uint8_t* aligned = align64(buf.data());
    quasr::qgemm_i8_chunks(chosen, w, acts, bp, yp, b, e, aligned);
  });
  return y.view(out_shape).to(x.scalar_type());
}

}  // namespace

// The op schemas are declared in Python (quasr/kernels/schemas.py) so they exist whichever backend
// is built; this library only registers their CPU kernels, and the CPU feature probe in its own
// namespace.
TORCH_LIBRARY(quasr_cpu, m) {
  m.def("has_avx2() -> bool", &cpu_has_avx2);
  m.def("best_isa() -> int", &best_isa);
  m.def("has_bf16_attention() -> bool", &cpu_has_bf16_attention);
  m.def("attention_pack_bytes(int tk, int d) -> int", &attention_pack_bytes);
  m.def("attention_pack(Tensor k, Tensor v) -> Tensor");
  m.def("attention_packed(Tensor q, Tensor pack, int tk, float scale) -> Tensor");
  // CPU kernels only (below), so that the fake implementations in kernels/registry.py can trace them
  m.def("repack_i8(Tensor packed, Tensor scales, Tensor? zeros, int bits, int group_size) -> (Tensor, Tensor)");
  m.def("qlinear_i8(Tensor x, Tensor codes, Tensor params, Tensor? bias, int bits, int group_size, int in_features, "
        "int out_features, Tensor? input_mul, int act_bits, int act_range, bool act_symmetric, float act_scale, "
        "float act_zero, int isa=-1) -> Tensor");
}

TORCH_LIBRARY_IMPL(quasr_cpu, CPU, m) {
  m.impl("repack_i8", &repack_i8_cpu);
  m.impl("qlinear_i8", &qlinear_i8_cpu);
  m.impl("attention_pack", &attention_pack_cpu);
  m.impl("attention_packed", &attention_packed_cpu);
}

TORCH_LIBRARY_IMPL(quasr, CPU, m) {
  m.impl("qlinear", &qlinear_cpu);
  m.impl("dequantize", &dequantize_cpu);
  m.impl("rotate", &rotate_cpu);
  m.impl("attention", &attention_cpu);
}

// `import quasr._C` loads this library, which runs the registrations above. No Python API here.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
