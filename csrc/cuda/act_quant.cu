// The fused activation transforms in front of the GEMMs, one block per row: the multiply by the
// smoothing vector, then the row's range (per-token dynamic) or the static one, and
//   act_quant:    int8 codes e = code - 128 in the int8 GEMM's k order (act_position_k), with the
//                 row's scale, c = 128 - zero and the per-group sums of e;
//   act_prologue: the fake-quantized values in fp16, for the fp16 kernels (small M, where the int8
//                 GEMM's 64-row tiles would leave most multiprocessors idle), or just the multiply.
// The arithmetic is act_quant.cuh's, shared with the host check.
#include "act_quant_kernel.cuh"
#include "launch.h"

namespace quasr_cuda {

template <typename T>
int launch_act_quant(const void* x, int64_t ldx, int m, int k, int kp, int group_size, const float* input_mul,
                     int bits, int symmetric, float scale, float zero, int8_t* e, float* sx, float* c, int32_t* esum,
                     cudaStream_t stream) {
  const cudaError_t err = cudaMemsetAsync(esum, 0, sizeof(int32_t) * m * (kp / group_size), stream);
  if (err != cudaSuccess) return static_cast<int>(err);
  act_quant_kernel<T><<<m, kQuantThreads, 0, stream>>>(static_cast<const T*>(x), ldx, k, kp, group_size, input_mul,
                                                       bits, symmetric, scale, zero, e, sx, c, esum);
  return launch_status();
}

template <typename T>
int launch_act_prologue(const void* x, int64_t ldx, int m, int k, int kp, const float* input_mul, int bits,
                        int symmetric, float scale, float zero, void* out, cudaStream_t stream) {
  act_prologue_kernel<T><<<m, kQuantThreads, 0, stream>>>(static_cast<const T*>(x), ldx, k, kp, input_mul, bits,
                                                          symmetric, scale, zero, static_cast<half*>(out));
  return launch_status();
}

}  // namespace quasr_cuda

using namespace quasr_cuda;

extern "C" int quasr_cuda_act_prologue(const void* x, int x_dtype, int64_t ldx, int m, int k, int kp,
                                       const float* input_mul, int bits, int symmetric, float scale, float zero,
                                       void* out, void* stream) {
  if (m < 1 || k < 1 || k > kp || kp % kTileK || bits == 1 || bits < 0 || bits > 8) return -1;
  auto s = static_cast<cudaStream_t>(stream);
  switch (x_dtype) {
    case 0: return launch_act_prologue<half>(x, ldx, m, k, kp, input_mul, bits, symmetric, scale, zero, out, s);
    case 1: return launch_act_prologue<float>(x, ldx, m, k, kp, input_mul, bits, symmetric, scale, zero, out, s);
    case 2: return launch_act_prologue<__nv_bfloat16>(x, ldx, m, k, kp, input_mul, bits, symmetric, scale, zero, out, s);
    default: return -1;
  }
}

extern "C" int quasr_cuda_act_quant(const void* x, int x_dtype, int64_t ldx, int m, int k, int kp, int group_size,
                                    const float* input_mul, int bits, int symmetric, float scale, float zero,
                                    int8_t* e, float* sx, float* c, int32_t* esum, void* stream) {
  if (m < 1 || k < 1 || k > kp || kp % kTileK || group_size % kTileK || kp % group_size || bits < 2 || bits > 8)
    return -1;
  auto s = static_cast<cudaStream_t>(stream);
  switch (x_dtype) {
    case 0: return launch_act_quant<half>(x, ldx, m, k, kp, group_size, input_mul, bits, symmetric, scale, zero, e, sx, c, esum, s);
    case 1: return launch_act_quant<float>(x, ldx, m, k, kp, group_size, input_mul, bits, symmetric, scale, zero, e, sx, c, esum, s);
    case 2: return launch_act_quant<__nv_bfloat16>(x, ldx, m, k, kp, group_size, input_mul, bits, symmetric, scale, zero, e, sx, c, esum, s);
    default: return -1;
  }
}
