// Torch binding of the CUDA kernels (launch.h): the ops of the `quasr_cuda` library, for the CUDA
// dispatch key, over the backend's runtime layout (python/quasr/kernels/cuda_layout.py). The seam's
// own `quasr::qlinear` gets its CUDA kernel from kernels/registry.py (NativeCUDA), which makes the
// layout and calls these. Only the ATen headers this file needs; the .cu files see no torch.
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <Python.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "launch.h"
#include "tile_layout.cuh"

namespace {

// The M limit of the GEMV (one 16-row A fragment).
constexpr int64_t kGemvMaxM = 16;
constexpr int64_t kPathAuto = 0, kPathGemv = 1, kPathGemm = 2;

void check_launch(int status, const char* what) {
  TORCH_CHECK(status != -1, "quasr_cuda::", what, ": the kernel cannot take these arguments (a bug in the caller)");
  TORCH_CHECK(status == 0, "quasr_cuda::", what, ": launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(status)));
}

// The GEMMs' block rows (32 * m_tiles): 128-row blocks where they still give every multiprocessor two
// blocks (Whisper's 512-wide layers at M = 1500 give only 48 of them), else 64-row blocks.
int m_tiles_for(int64_t m, int64_t n) {
  const int64_t tall_blocks = (m + 127) / 128 * ((n + 127) / 128);
  return tall_blocks >= 2 * quasr_cuda_sm_count() ? 4 : 2;
}

void* stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

struct Shape {
  int64_t m, k, kp, n;
};

Shape check_layout(const at::Tensor& x, const at::Tensor& words, int64_t bits, int64_t group_size, int64_t in_features,
                   int64_t out_features, const char* op) {
  TORCH_CHECK(x.is_cuda() && words.is_cuda() && words.device() == x.device(), "quasr_cuda::", op,
              ": x and the layout must be on the same CUDA device");
  TORCH_CHECK(words.scalar_type() == at::kInt && words.is_contiguous(), "quasr_cuda::", op,
              ": words must be the contiguous int32 tiled layout (quasr_cuda::tile)");
  TORCH_CHECK(bits >= 2 && bits <= 8, "quasr_cuda::", op, ": bits must be 2..8, got ", bits);
  const int64_t np = quasr_cuda::padded_n(out_features);
  TORCH_CHECK(words.numel() * 32 % (np * bits) == 0, "quasr_cuda::", op, ": layout size does not match the shape");
  const int64_t kp = words.numel() * 32 / (np * bits);
  TORCH_CHECK(kp % 32 == 0 && kp >= in_features && group_size % 32 == 0 && kp % group_size == 0, "quasr_cuda::", op,
              ": inconsistent K (in_features ", in_features, ", padded ", kp, ", group_size ", group_size, ")");
  // x has the layer's features, or is already padded to kp (act_prologue's output)
  TORCH_CHECK(x.size(-1) == in_features || x.size(-1) == kp, "quasr_cuda::", op, ": input has ", x.size(-1),
              " features, layer expects ", in_features);
  const int64_t k = x.size(-1);
  return {x.numel() / std::max<int64_t>(k, 1), k, kp, out_features};
}

at::Tensor finish(const at::Tensor& out, const at::Tensor& x, int64_t n) {
  auto sizes = x.sizes().vec();
  sizes.back() = n;
  return (out.scalar_type() == x.scalar_type() ? out : out.to(x.scalar_type())).view(sizes);
}

std::optional<at::Tensor> float_vector(const std::optional<at::Tensor>& v, int64_t size, const char* what) {
  if (!v.has_value()) return std::nullopt;
  TORCH_CHECK(v->numel() == size, "quasr_cuda: ", what, " must have ", size, " elements, got ", v->numel());
  return v->to(at::kFloat).contiguous();
}

at::Tensor tile_cuda(const at::Tensor& packed, int64_t bits) {
  TORCH_CHECK(packed.is_cuda() && packed.dim() == 2 && packed.scalar_type() == at::kByte,
              "quasr_cuda::tile: packed must be a uint8 [N, Kp*bits/8] CUDA tensor");
  TORCH_CHECK(bits >= 2 && bits <= 8 && packed.size(1) * 8 % (32 * bits) == 0,
              "quasr_cuda::tile: packed rows do not hold a whole number of 32-code blocks of ", bits, " bits");
  c10::cuda::CUDAGuard guard(packed.device());
  const auto p = packed.contiguous();
  const int64_t n = p.size(0), kp = p.size(1) * 8 / bits;
  auto words = at::empty({quasr_cuda::tiled_words(n, kp, static_cast<int>(bits))}, p.options().dtype(at::kInt));
  check_launch(quasr_cuda_tile(p.data_ptr<uint8_t>(), n, kp, static_cast<int>(bits),
                               reinterpret_cast<uint32_t*>(words.data_ptr<int32_t>()), stream_of(p)),
               "tile");
  return words;
}

at::Tensor qlinear_f16_cuda(const at::Tensor& x, const at::Tensor& words, const at::Tensor& params, bool frac,
                            const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size,
                            int64_t in_features, int64_t out_features, int64_t path, int64_t splits) {
  const Shape s = check_layout(x, words, bits, group_size, in_features, out_features, "qlinear_f16");
  TORCH_CHECK(params.is_cuda() && params.scalar_type() == at::kHalf && params.is_contiguous(),
              "quasr_cuda::qlinear_f16: params must be the contiguous float16 layout (cuda_layout.f16_params)");
  c10::cuda::CUDAGuard guard(x.device());
  auto x2 = x.reshape({s.m, s.k});
  if (x2.scalar_type() != at::kHalf) x2 = x2.to(at::kHalf);  // the kernels take fp16 activations
  if (s.kp != s.k) x2 = at::constant_pad_nd(x2, {0, s.kp - s.k});
  x2 = x2.contiguous();
  auto out = at::empty({s.m, s.n}, x2.options().dtype(at::kHalf));
  if (s.m == 0) return finish(out, x, s.n);
  const auto b = float_vector(bias, s.n, "bias");
  const float* bias_ptr = b ? b->data_ptr<float>() : nullptr;
  void* stream = stream_of(x2);
  const bool gemv = path == kPathGemv || (path == kPathAuto && s.m <= kGemvMaxM);
  if (gemv && s.m <= kGemvMaxM) {
    const int64_t ks = s.kp / 32, blocks = (s.n + 31) / 32;
    if (splits <= 0) {  // enough blocks for two per multiprocessor, each warp keeping >= 2 super-tiles
      const int64_t want = (2 * quasr_cuda_sm_count() + blocks - 1) / blocks;
      splits = std::max<int64_t>(1, std::min<int64_t>(want, ks / 8));
    }
    splits = std::min<int64_t>(splits, ks);
    at::Tensor ws;
    if (splits > 1) ws = at::zeros({s.m, s.n}, x2.options().dtype(at::kFloat));
    check_launch(quasr_cuda_gemv_f16(x2.data_ptr(), static_cast<int>(s.m),
                                     reinterpret_cast<const uint32_t*>(words.data_ptr<int32_t>()), params.data_ptr(),
                                     frac, static_cast<int>(s.n), static_cast<int>(s.kp), static_cast<int>(group_size),
                                     static_cast<int>(bits), bias_ptr, out.data_ptr(),
                                     splits > 1 ? ws.data_ptr<float>() : nullptr, static_cast<int>(splits), stream),
                 "qlinear_f16 (gemv)");
    if (splits > 1)
      check_launch(quasr_cuda_splitk_epilogue(ws.data_ptr<float>(), bias_ptr, out.data_ptr(),
                                              static_cast<int>(s.m), static_cast<int>(s.n), stream),
                   "qlinear_f16 (split-K epilogue)");
  } else {
    check_launch(quasr_cuda_gemm_f16(x2.data_ptr(), static_cast<int>(s.m),
                                     reinterpret_cast<const uint32_t*>(words.data_ptr<int32_t>()), params.data_ptr(),
                                     frac, static_cast<int>(s.n), static_cast<int>(s.kp), static_cast<int>(group_size),
                                     static_cast<int>(bits), bias_ptr, out.data_ptr(),
                                     m_tiles_for(s.m, s.n), stream),
                 "qlinear_f16 (gemm)");
  }
  return finish(out, x, s.n);
}

int x_dtype_code(at::ScalarType t) { return t == at::kHalf ? 0 : t == at::kFloat ? 1 : t == at::kBFloat16 ? 2 : -1; }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> act_quant_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& input_mul, int64_t kp, int64_t group_size, int64_t act_bits,
    bool act_symmetric, double act_scale, double act_zero) {
  TORCH_CHECK(x.is_cuda(), "quasr_cuda::act_quant: x must be a CUDA tensor");
  TORCH_CHECK(act_bits >= 2 && act_bits <= 8, "quasr_cuda::act_quant: act_bits must be 2..8, got ", act_bits);
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t k = x.size(-1), m = x.numel() / std::max<int64_t>(k, 1);
  TORCH_CHECK(kp % 32 == 0 && kp >= k && group_size % 32 == 0 && kp % group_size == 0,
              "quasr_cuda::act_quant: inconsistent K (", k, " of padded ", kp, ", group_size ", group_size, ")");
  auto x2 = x.reshape({m, k});
  if (x_dtype_code(x2.scalar_type()) < 0) x2 = x2.to(at::kFloat);
  x2 = x2.contiguous();
  const auto mul = float_vector(input_mul, k, "input_mul");
  auto opts = x2.options();
  auto e = at::empty({m, kp}, opts.dtype(at::kChar));
  auto sx = at::empty({m}, opts.dtype(at::kFloat)), c = at::empty({m}, opts.dtype(at::kFloat));
  auto esum = at::empty({m, kp / group_size}, opts.dtype(at::kInt));
  if (m == 0) return {e, sx, c, esum};
  check_launch(quasr_cuda_act_quant(x2.data_ptr(), x_dtype_code(x2.scalar_type()), k, static_cast<int>(m),
                                    static_cast<int>(k), static_cast<int>(kp), static_cast<int>(group_size),
                                    mul ? mul->data_ptr<float>() : nullptr, static_cast<int>(act_bits), act_symmetric,
                                    static_cast<float>(act_scale), static_cast<float>(act_zero), e.data_ptr<int8_t>(),
                                    sx.data_ptr<float>(), c.data_ptr<float>(), esum.data_ptr<int32_t>(), stream_of(x2)),
               "act_quant");
  return {e, sx, c, esum};
}

at::Tensor act_prologue_cuda(const at::Tensor& x, const std::optional<at::Tensor>& input_mul, int64_t kp,
                             int64_t act_bits, bool act_symmetric, double act_scale, double act_zero) {
  TORCH_CHECK(x.is_cuda(), "quasr_cuda::act_prologue: x must be a CUDA tensor");
  TORCH_CHECK(act_bits == 0 || (act_bits >= 2 && act_bits <= 8), "quasr_cuda::act_prologue: act_bits must be 0 "
              "(multiply only) or 2..8, got ", act_bits);
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t k = x.size(-1), m = x.numel() / std::max<int64_t>(k, 1);
  TORCH_CHECK(kp % 32 == 0 && kp >= k, "quasr_cuda::act_prologue: padded K ", kp, " for ", k, " features");
  auto x2 = x.reshape({m, k});
  if (x_dtype_code(x2.scalar_type()) < 0) x2 = x2.to(at::kFloat);
  x2 = x2.contiguous();
  const auto mul = float_vector(input_mul, k, "input_mul");
  auto out = at::empty({m, kp}, x2.options().dtype(at::kHalf));
  if (m == 0) return out;
  check_launch(quasr_cuda_act_prologue(x2.data_ptr(), x_dtype_code(x2.scalar_type()), k, static_cast<int>(m),
                                       static_cast<int>(k), static_cast<int>(kp),
                                       mul ? mul->data_ptr<float>() : nullptr, static_cast<int>(act_bits),
                                       act_symmetric, static_cast<float>(act_scale), static_cast<float>(act_zero),
                                       out.data_ptr(), stream_of(x2)),
               "act_prologue");
  return out;
}

at::Tensor qlinear_i8_cuda(const at::Tensor& x, const at::Tensor& words, const at::Tensor& params,
                           const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size,
                           int64_t in_features, int64_t out_features, const std::optional<at::Tensor>& input_mul,
                           int64_t act_bits, bool act_symmetric, double act_scale, double act_zero) {
  const Shape s = check_layout(x, words, bits, group_size, in_features, out_features, "qlinear_i8");
  TORCH_CHECK(params.is_cuda() && params.scalar_type() == at::kFloat && params.is_contiguous(),
              "quasr_cuda::qlinear_i8: params must be the contiguous float32 layout (cuda_layout.i8_params)");
  c10::cuda::CUDAGuard guard(x.device());
  auto [e, sx, c, esum] = act_quant_cuda(x, input_mul, s.kp, group_size, act_bits, act_symmetric, act_scale, act_zero);
  auto out = at::empty({s.m, s.n}, e.options().dtype(at::kHalf));
  if (s.m == 0) return finish(out, x, s.n);
  const auto b = float_vector(bias, s.n, "bias");
  check_launch(quasr_cuda_gemm_i8(e.data_ptr<int8_t>(), sx.data_ptr<float>(), c.data_ptr<float>(),
                                  esum.data_ptr<int32_t>(), static_cast<int>(s.m),
                                  reinterpret_cast<const uint32_t*>(words.data_ptr<int32_t>()), params.data_ptr<float>(),
                                  static_cast<int>(s.n), static_cast<int>(s.kp), static_cast<int>(group_size),
                                  static_cast<int>(bits), b ? b->data_ptr<float>() : nullptr, out.data_ptr(),
                                  m_tiles_for(s.m, s.n), stream_of(e)),
               "qlinear_i8");
  return finish(out, x, s.n);
}

int64_t sm_count() { return quasr_cuda_sm_count(); }

}  // namespace

TORCH_LIBRARY(quasr_cuda, m) {
  m.def("sm_count() -> int", &sm_count);
  m.def("tile(Tensor packed, int bits) -> Tensor");
  m.def("qlinear_f16(Tensor x, Tensor words, Tensor params, bool frac, Tensor? bias, int bits, int group_size, "
        "int in_features, int out_features, int path=0, int splits=0) -> Tensor");
  m.def("act_quant(Tensor x, Tensor? input_mul, int kp, int group_size, int act_bits, bool act_symmetric, "
        "float act_scale, float act_zero) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("act_prologue(Tensor x, Tensor? input_mul, int kp, int act_bits, bool act_symmetric, float act_scale, "
        "float act_zero) -> Tensor");
  m.def("qlinear_i8(Tensor x, Tensor words, Tensor params, Tensor? bias, int bits, int group_size, int in_features, "
        "int out_features, Tensor? input_mul, int act_bits, bool act_symmetric, float act_scale, float act_zero) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(quasr_cuda, CUDA, m) {
  m.impl("tile", &tile_cuda);
  m.impl("qlinear_f16", &qlinear_f16_cuda);
  m.impl("act_quant", &act_quant_cuda);
  m.impl("act_prologue", &act_prologue_cuda);
  m.impl("qlinear_i8", &qlinear_i8_cuda);
}

// `import quasr._C_cuda` loads this library, which runs the registrations above. No Python API here.
extern "C" PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
