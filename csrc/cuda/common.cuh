// Small pieces every kernel file shares: the bit-width switch and output stores.
#pragma once

#include "device.cuh"

// Runs the statement with `B` a compile-time constant equal to `bits` (2..8); else returns -1.
#define QUASR_BITS_SWITCH(bits, B, ...)          \
  switch (bits) {                                \
    case 2: { constexpr int B = 2; __VA_ARGS__; } break; \
    case 3: { constexpr int B = 3; __VA_ARGS__; } break; \
    case 4: { constexpr int B = 4; __VA_ARGS__; } break; \
    case 5: { constexpr int B = 5; __VA_ARGS__; } break; \
    case 6: { constexpr int B = 6; __VA_ARGS__; } break; \
    case 7: { constexpr int B = 7; __VA_ARGS__; } break; \
    case 8: { constexpr int B = 8; __VA_ARGS__; } break; \
    default: return -1;                          \
  }

namespace quasr_cuda {

__device__ __forceinline__ void store_out(half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }

#if defined(__CUDACC__)
inline int launch_status() { return static_cast<int>(cudaGetLastError()); }
#endif

}  // namespace quasr_cuda
