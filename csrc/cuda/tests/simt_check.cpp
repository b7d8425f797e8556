// A warp simulator that runs the CUDA kernels' own code on the host (g++ -std=c++20 -pthread):
// every CUDA thread of a block is an OS thread, __syncthreads is a block barrier, and each
// warp-collective instruction (mma.sync, ldmatrix, shfl) is a warp barrier around an exchange of
// the lanes' registers, evaluated from the PTX ISA's fragment tables (written here, independently
// of tile_layout.cuh). Blocks run one after another. tests/test_cuda_simt.py loads it with ctypes
// and checks every kernel against the plain-torch reference on small shapes: the index arithmetic,
// the pipeline's stage bookkeeping, the split-K reduction and the int8 group folds run here as
// they are written, without a GPU. (Not covered: timing, memory ordering of cp.async, real PTX.)
#include <barrier>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "../act_quant_kernel.cuh"
#include "../qgemm_f16_kernel.cuh"
#include "../qgemm_i8_kernel.cuh"
#include "../qgemv_kernel.cuh"
#include "../tile_kernel.cuh"

thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace quasr_sim {

constexpr size_t kSmemBytes = 256 * 1024;

struct Warp {
  std::barrier<> bar{32};
  uint32_t regs[32][8];
};

struct Block {
  explicit Block(int threads) : bar(threads), warps(threads / 32) {}
  std::barrier<> bar;
  std::vector<Warp> warps;
};

alignas(16) static uint8_t g_smem[kSmemBytes];
static Block* g_block = nullptr;
static std::mutex g_atomic;
thread_local Warp* t_warp = nullptr;
thread_local int t_lane = 0;

uint8_t* dynamic_smem() { return g_smem; }

// Runs `kernel` (a call of the kernel function with its arguments) over the grid, one block at a
// time, `threads` OS threads per block. Shared memory starts as garbage (0xA5), as on a GPU.
void launch(dim3 grid, int threads, const std::function<void()>& kernel) {
  gridDim = grid;
  blockDim = dim3{static_cast<unsigned>(threads), 1, 1};
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      memset(g_smem, 0xA5, kSmemBytes);
      Block block(threads);
      g_block = &block;
      std::vector<std::thread> pool;
      pool.reserve(threads);
      for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
          threadIdx = dim3{static_cast<unsigned>(t), 0, 0};
          blockIdx = dim3{bx, by, 0};
          t_warp = &block.warps[t / 32];
          t_lane = t % 32;
          kernel();
        });
      for (auto& th : pool) th.join();
      g_block = nullptr;
    }
}

// Lane l's 32-bit register r of the warp, after every lane has deposited its own.
template <int N>
static void exchange(const uint32_t (&mine)[N]) {
  for (int i = 0; i < N; ++i) t_warp->regs[t_lane][i] = mine[i];
  t_warp->bar.arrive_and_wait();
}
static void done() { t_warp->bar.arrive_and_wait(); }

static float half_bits(uint32_t v, int which) {
  const uint16_t h = static_cast<uint16_t>(v >> (16 * which));
  _Float16 f;
  memcpy(&f, &h, 2);
  return static_cast<float>(f);
}

}  // namespace quasr_sim

using namespace quasr_sim;

void __syncthreads() { g_block->bar.arrive_and_wait(); }

float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  uint32_t mine[1];
  memcpy(mine, &v, 4);
  exchange(mine);
  const uint32_t other = t_warp->regs[t_lane ^ lane_mask][0];
  done();
  float out;
  memcpy(&out, &other, 4);
  return out;
}

int __shfl_xor_sync(unsigned, int v, int lane_mask) {
  const uint32_t mine[1] = {static_cast<uint32_t>(v)};
  exchange(mine);
  const int out = static_cast<int>(t_warp->regs[t_lane ^ lane_mask][0]);
  done();
  return out;
}

float atomicAdd(float* p, float v) {
  std::lock_guard<std::mutex> lock(g_atomic);
  const float old = *p;
  *p = old + v;
  return old;
}

int atomicAdd(int* p, int v) {
  std::lock_guard<std::mutex> lock(g_atomic);
  const int old = *p;
  *p = old + v;
  return old;
}

namespace quasr_cuda {

uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(static_cast<const uint8_t*>(p) - g_smem);
}

void cp_async16(uint32_t dst, const void* src, bool valid) {
  if (valid)
    memcpy(g_smem + dst, src, 16);
  else
    memset(g_smem + dst, 0, 16);
}

// PTX ISA, "Matrix fragments for mma.m16n8k16" (.f16): lane l, g = l / 4, t = l % 4;
// A (16 x 16): a0 a1 at (g, 2t + i), a2 a3 at (g + 8, 2t + i), a4 a5 at (g, 2t + 8 + i), a6 a7 at (g + 8, 2t + 8 + i);
// B (16 x 8): b0 b1 at (2t + i, g), b2 b3 at (2t + 8 + i, g); C/D: c0 c1 at (g, 2t + i), c2 c3 at (g + 8, 2t + i).
void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  exchange(mine);
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const uint32_t* r = t_warp->regs[l];
    const int g = l / 4, t = l % 4;
    for (int i = 0; i < 2; ++i) {
      A[g][2 * t + i] = half_bits(r[0], i);
      A[g + 8][2 * t + i] = half_bits(r[1], i);
      A[g][2 * t + 8 + i] = half_bits(r[2], i);
      A[g + 8][2 * t + 8 + i] = half_bits(r[3], i);
      B[2 * t + i][g] = half_bits(r[4], i);
      B[2 * t + 8 + i][g] = half_bits(r[5], i);
    }
  }
  done();
  const int g = t_lane / 4, t = t_lane % 4;
  for (int j = 0; j < 4; ++j) {
    const int row = g + (j >= 2 ? 8 : 0), col = 2 * t + (j & 1);
    float acc = d[j];
    for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
    d[j] = acc;
  }
}

// PTX ISA, "Matrix fragments for mma.m16n8k32" (.s8/.u8): A (16 x 32): a_i of register r at row
// g + 8 (r % 2), column 4t + i + 16 (r / 2); B (32 x 8): byte i of register r at row 4t + i + 16 r,
// column g; C/D as for m16n8k16.
void mma_s8u8(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  exchange(mine);
  int A[16][32], B[32][8];
  for (int l = 0; l < 32; ++l) {
    const uint32_t* r = t_warp->regs[l];
    const int g = l / 4, t = l % 4;
    for (int reg = 0; reg < 4; ++reg)
      for (int i = 0; i < 4; ++i)
        A[g + 8 * (reg % 2)][4 * t + i + 16 * (reg / 2)] = static_cast<int8_t>((r[reg] >> (8 * i)) & 0xff);
    for (int reg = 0; reg < 2; ++reg)
      for (int i = 0; i < 4; ++i) B[4 * t + i + 16 * reg][g] = static_cast<int>((r[4 + reg] >> (8 * i)) & 0xff);
  }
  done();
  const int g = t_lane / 4, t = t_lane % 4;
  for (int j = 0; j < 4; ++j) {
    const int row = g + (j >= 2 ? 8 : 0), col = 2 * t + (j & 1);
    int32_t acc = d[j];
    for (int k = 0; k < 32; ++k) acc += A[row][k] * B[k][col];
    d[j] = acc;
  }
}

// ldmatrix.x4: lanes 8i .. 8i + 7 give the row addresses of matrix i; lane l receives, of each
// matrix, the 4 bytes of row l / 4 at byte (l % 4) * 4.
void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  const uint32_t mine[1] = {addr};
  exchange(mine);
  for (int i = 0; i < 4; ++i) {
    const uint32_t row = t_warp->regs[8 * i + t_lane / 4][0];
    memcpy(&r[i], g_smem + row + (t_lane % 4) * 4, 4);
  }
  done();
}

}  // namespace quasr_cuda

using namespace quasr_cuda;

extern "C" {

void sim_tile(const uint8_t* packed, int64_t n, int64_t kp, int bits, uint32_t* words) {
  const int64_t total = tiled_words(n, kp, bits);
  launch(dim3{2, 1, 1}, 64, [&] { tile_kernel(packed, n, kp, bits, words, total); });
}

int sim_gemv(const half* x, int m, const uint32_t* words, const half2* params, int frac, int n, int kp,
             int group_size, int bits, const float* bias, half* out, float* workspace, int splits) {
  const GemvShape shape = gemv_shape(n, kp, splits);
  QUASR_BITS_SWITCH(bits, B, launch(shape.grid, kGemvWarps * 32, [&] {
    gemv_f16_kernel<B, half>(x, m, words, reinterpret_cast<const uint4*>(params), frac, n, kp, group_size, bias, out,
                             splits > 1 ? workspace : nullptr, shape.per_split);
  }));
  if (splits > 1) {
    const int64_t total = int64_t(m) * n;
    launch(dim3{1, 1, 1}, 32, [&] { splitk_epilogue_kernel<half>(workspace, bias, out, total, n); });
  }
  return 0;
}

int sim_gemm_f16(const half* x, int m, const uint32_t* words, const half2* params, int frac, int n, int kp,
                 int group_size, int bits, const float* bias, half* out, int m_tiles) {
  const dim3 grid = gemm_grid(m, n, m_tiles);
  QUASR_BITS_SWITCH(bits, B, {
    if (m_tiles == 2)
      launch(grid, kGemmThreads, [&] { gemm_f16_kernel<B, 2, half>(x, m, words, params, frac, n, kp, group_size, bias, out); });
    else
      launch(grid, kGemmThreads, [&] { gemm_f16_kernel<B, 4, half>(x, m, words, params, frac, n, kp, group_size, bias, out); });
  });
  return 0;
}

int sim_act_quant(const float* x, int m, int k, int kp, int group_size, const float* input_mul, int bits,
                  int symmetric, float scale, float zero, int8_t* e, float* sx, float* c, int32_t* esum) {
  memset(esum, 0, sizeof(int32_t) * m * (kp / group_size));
  launch(dim3{static_cast<unsigned>(m), 1, 1}, kQuantThreads, [&] {
    act_quant_kernel<float>(x, k, k, kp, group_size, input_mul, bits, symmetric, scale, zero, e, sx, c, esum);
  });
  return 0;
}

int sim_act_prologue(const float* x, int m, int k, int kp, const float* input_mul, int bits, int symmetric,
                     float scale, float zero, half* out) {
  launch(dim3{static_cast<unsigned>(m), 1, 1}, kQuantThreads, [&] {
    act_prologue_kernel<float>(x, k, k, kp, input_mul, bits, symmetric, scale, zero, out);
  });
  return 0;
}

int sim_gemm_i8(const int8_t* e, const float* sx, const float* c, const int32_t* esum, int m, const uint32_t* words,
                const float* params, int n, int kp, int group_size, int bits, const float* bias, half* out,
                int m_tiles) {
  const dim3 grid = gemm_grid(m, n, m_tiles);
  QUASR_BITS_SWITCH(bits, B, {
    if (m_tiles == 2)
      launch(grid, kGemmThreads, [&] { gemm_i8_kernel<B, 2, half>(e, sx, c, esum, m, words, params, n, kp, group_size, bias, out); });
    else
      launch(grid, kGemmThreads, [&] { gemm_i8_kernel<B, 4, half>(e, sx, c, esum, m, words, params, n, kp, group_size, bias, out); });
  });
  return 0;
}

}  // extern "C"
