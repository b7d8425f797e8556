// The CUDA kernels' launchers: plain C over raw device pointers (no torch headers), so the .cu files
// compile anywhere nvcc does and binding.cpp is the only file that sees torch. Each returns 0 or
// the cudaError_t of the launch (-1: arguments the kernels cannot take). `stream` is a cudaStream_t.
//
// Shapes: x [m, kp] contiguous (kp: K padded to the group, a multiple of 32); words: the tiled
// weight (tile_layout.cuh); params: cuda_layout.f16_params / i8_params; bias float32 [n] or null;
// out [m, n] row-major float16 (the
// binding converts for float32 / bfloat16 callers; the sums themselves are float32).
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int quasr_cuda_sm_count(void);

// The tiled layout of a canonical packed weight [n, kp * bits / 8], one thread per word.
int quasr_cuda_tile(const uint8_t* packed, int64_t n, int64_t kp, int bits, uint32_t* words, void* stream);

// fp16 activations, M <= 16: tensor-core GEMV over K slices. splits > 1: every split adds its fp32
// partial sums into `workspace` [m, n] (zeroed by the caller), then quasr_cuda_splitk_epilogue.
int quasr_cuda_gemv_f16(const void* x, int m, const uint32_t* words, const void* params, int frac, int n, int kp,
                        int group_size, int bits, const float* bias, void* out, float* workspace,
                        int splits, void* stream);
int quasr_cuda_splitk_epilogue(const float* workspace, const float* bias, void* out, int m, int n,
                               void* stream);

// fp16 activations, any M: the mma.sync GEMM, block tile (32 * m_tiles) x 128 (m_tiles 2 or 4).
int quasr_cuda_gemm_f16(const void* x, int m, const uint32_t* words, const void* params, int frac, int n, int kp,
                        int group_size, int bits, const float* bias, void* out, int m_tiles,
                        void* stream);

// Activation quantization for the int8 GEMM: x [m, k] (x_dtype 0 float16, 1 float32, 2 bfloat16,
// row stride ldx) times input_mul (float32 [k] or null) -> e [m, kp] int8 in act_position_k order,
// per-row scale sx and c = 128 - zero, per-group sums esum [m, kp / group_size] (zeroed here).
// scale > 0: one static range (scale, zero); else per-token dynamic ranges.
int quasr_cuda_act_quant(const void* x, int x_dtype, int64_t ldx, int m, int k, int kp, int group_size,
                         const float* input_mul, int bits, int symmetric, float scale, float zero, int8_t* e,
                         float* sx, float* c, int32_t* esum, void* stream);

// The fp16 kernels' activation prologue: x (as above) times input_mul, fake-quantized on the b-bit
// grid when bits > 0 (dynamic per-token ranges, or the static (scale, zero) when scale > 0), written
// as fp16 [m, kp] (zeros past k).
int quasr_cuda_act_prologue(const void* x, int x_dtype, int64_t ldx, int m, int k, int kp, const float* input_mul,
                            int bits, int symmetric, float scale, float zero, void* out, void* stream);

// int8 activations x codes on integer tensor cores (mma s8 x u8, int32 sums folded per group).
int quasr_cuda_gemm_i8(const int8_t* e, const float* sx, const float* c, const int32_t* esum, int m,
                       const uint32_t* words, const float* params, int n, int kp, int group_size, int bits,
                       const float* bias, void* out, int m_tiles, void* stream);

#ifdef __cplusplus
}
#endif
