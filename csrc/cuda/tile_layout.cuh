// The CUDA backend's runtime layout of a packed weight (docs/FORMAT.md is the saved form), and the
// per-lane decode the kernels run. Plain functions usable on the host (g++: tests/test_cuda_host.py
// checks them bit for bit against quasr.format) and on the device (nvcc: every kernel here).
//
// Super-tile: 32 input features (K) x 32 output features (N), read by one warp. Each lane owns 32
// codes, as 16 pairs p = tile * 2 + r, tile = kt * 4 + nt (kt: the two 16-deep k-tiles, nt: the four
// 8-wide n-tiles), pair p holding the codes of column n = 8 nt + lane / 4 at k = 16 kt + 2 (lane % 4)
// + 8 r and k + 1. That is exactly the B fragment (b0 b1 | b2 b3) of mma.m16n8k16, so a decoded pair
// is one half2 register of the fragment. The int8 path (mma.m16n8k32) packs the bytes of two pairs
// into one register and stores the activations with the matching permutation of k (act_position).
//
// A code's bit planes (format.py: 8 / 4+2+1 / 4+2 / 4+1 / 4 / 2+1 / 2) stay separate: plane width
// w keeps 16 / w pairs per 32-bit word, the pair's low code at bit j w and its high code at bit
// 16 + j w (j: the pair's slot in the word), so one shift and one mask give both codes of a pair
// at bits 0 and 16, ready for the fp16 magic number 0x6400 (1024 + code). A lane's words of a
// plane lie in 16-byte chunks, chunk-major across the warp ([chunk][lane][min(w, 4) words]), so a
// warp reads each chunk with one coalesced 128-bit load per lane.
//
// Order of super-tiles: [N / 32][Kp / 32], each 32 * bits words (planes in format order); N is
// padded to a multiple of 32 with zero codes (their scales are zero).
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define QUASR_HD __host__ __device__ __forceinline__
#else
#define QUASR_HD inline
#endif

namespace quasr_cuda {

constexpr int kTileK = 32, kTileN = 32, kLanes = 32, kPairs = 16;

// format.py's plane widths, low bits first.
QUASR_HD constexpr int plane_count(int bits) { return bits == 7 ? 3 : (bits == 6 || bits == 5 || bits == 3) ? 2 : 1; }
QUASR_HD constexpr int plane_width(int bits, int plane) {
  return bits == 8 ? 8 : bits == 4 ? 4 : bits == 2 ? 2
       : bits == 7 ? (plane == 0 ? 4 : plane == 1 ? 2 : 1)
       : bits == 6 ? (plane == 0 ? 4 : 2)
       : bits == 5 ? (plane == 0 ? 4 : 1)
       : /* 3 */ (plane == 0 ? 2 : 1);
}
// Bits of the code below this plane (= words of a lane before this plane in a super-tile).
QUASR_HD constexpr int plane_shift(int bits, int plane) {
  return plane == 0 ? 0 : plane_width(bits, 0) + (plane == 2 ? plane_width(bits, 1) : 0);
}
QUASR_HD constexpr int chunk_words(int width) { return width < 4 ? width : 4; }

QUASR_HD constexpr int64_t tile_words(int bits) { return int64_t(kLanes) * bits; }
QUASR_HD constexpr int64_t padded_n(int64_t n) { return (n + kTileN - 1) / kTileN * kTileN; }
QUASR_HD constexpr int64_t tiled_words(int64_t n, int64_t kp, int bits) { return padded_n(n) / kTileN * (kp / kTileK) * tile_words(bits); }

// Where pair p of `lane` sits in the super-tile: its column and its first k (the pair is k, k + 1).
QUASR_HD int pair_col(int lane, int p) { return 8 * ((p >> 1) & 3) + lane / 4; }
QUASR_HD int pair_k(int lane, int p) { return 16 * (p >> 3) + 2 * (lane % 4) + 8 * (p & 1); }

// Offset (in words, within a super-tile) of word i of `lane`'s slice of plane `plane`.
QUASR_HD int lane_word_offset(int bits, int plane, int lane, int i) {
  const int w = plane_width(bits, plane), cw = chunk_words(w);
  return kLanes * plane_shift(bits, plane) + (i / cw) * kLanes * cw + lane * cw + i % cw;
}

// One code's slice of a plane, read from the canonical format (row n of `packed`, padded K kp).
QUASR_HD uint32_t canonical_plane_bits(const uint8_t* packed, int64_t row_bytes, int64_t kp, int bits, int plane,
                                       int64_t n, int64_t k) {
  const int w = plane_width(bits, plane);
  const uint8_t byte = packed[n * row_bytes + kp * plane_shift(bits, plane) / 8 + k * w / 8];
  return (byte >> ((k * w) % 8)) & ((1u << w) - 1u);
}

// Word `index` of the tiled layout of an [n, kp] weight in the canonical format (any order of calls:
// the host loops over it, the device repack kernel runs one thread per word).
QUASR_HD uint32_t tiled_word(const uint8_t* packed, int64_t n, int64_t kp, int bits, int64_t index) {
  const int64_t row_bytes = kp * bits / 8, ks = kp / kTileK;
  const int64_t tile = index / tile_words(bits);
  int rem = static_cast<int>(index % tile_words(bits));
  const int64_t n0 = tile / ks * kTileN, k0 = tile % ks * kTileK;
  int plane = 0;
  while (rem >= kLanes * (plane_shift(bits, plane) + plane_width(bits, plane))) ++plane;
  const int w = plane_width(bits, plane), cw = chunk_words(w), per = kPairs / w;
  const int in_plane = rem - kLanes * plane_shift(bits, plane);
  const int chunk = in_plane / (kLanes * cw), lane = in_plane % (kLanes * cw) / cw;
  const int i = chunk * cw + in_plane % cw;  // the lane's word within the plane
  uint32_t word = 0;
  for (int slot = 0; slot < per; ++slot) {
    const int p = i * per + slot;
    const int64_t col = n0 + pair_col(lane, p), k = k0 + pair_k(lane, p);
    if (col >= n) continue;  // padding columns: zero codes
    word |= canonical_plane_bits(packed, row_bytes, kp, bits, plane, col, k) << (slot * w);
    word |= canonical_plane_bits(packed, row_bytes, kp, bits, plane, col, k + 1) << (16 + slot * w);
  }
  return word;
}

// A lane's `bits` words of one super-tile (`tile`: its first word), planes in order: one 16-, 8- or
// 4-byte load per chunk (chunks are 16-byte aligned: a super-tile is 128 * bits bytes).
template <int BITS>
QUASR_HD void load_lane_words(const uint32_t* tile, int lane, uint32_t* words) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int plane = 0; plane < plane_count(BITS); ++plane) {
    const int w = plane_width(BITS, plane), cw = chunk_words(w);
#if defined(__CUDACC__)
#pragma unroll
#endif
    for (int c = 0; c < w / cw; ++c) {
      const uint32_t* src = tile + lane_word_offset(BITS, plane, lane, c * cw);
      uint32_t* dst = words + plane_shift(BITS, plane) + c * cw;
#if defined(__CUDA_ARCH__)
      if (cw == 4) {
        const uint4 v = *reinterpret_cast<const uint4*>(src);
        dst[0] = v.x, dst[1] = v.y, dst[2] = v.z, dst[3] = v.w;
      } else if (cw == 2) {
        const uint2 v = *reinterpret_cast<const uint2*>(src);
        dst[0] = v.x, dst[1] = v.y;
      } else {
        dst[0] = *src;
      }
#else
      for (int j = 0; j < cw; ++j) dst[j] = src[j];
#endif
    }
  }
}

// Both codes of pair p from a lane's words of one super-tile (`words`: its `bits` words, planes in
// order, as lane_word_offset lays them out per lane): low code at bits 0-7, high code at bits 16-23.
template <int BITS>
QUASR_HD uint32_t pair_codes(const uint32_t* words, int p) {
  uint32_t v = 0;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int plane = 0; plane < plane_count(BITS); ++plane) {
    const int w = plane_width(BITS, plane), per = kPairs / w;
    const uint32_t mask = ((1u << w) - 1u) * 0x00010001u;
    v |= ((words[plane_shift(BITS, plane) + p / per] >> ((p % per) * w)) & mask) << plane_shift(BITS, plane);
  }
  return v;
}

// The fp16 fragment register of pair p: half2 bits of (1024 + low code, 1024 + high code).
template <int BITS>
QUASR_HD uint32_t pair_half2_biased(const uint32_t* words, int p) { return pair_codes<BITS>(words, p) | 0x64006400u; }

// The int8 B-fragment register j (0, 1) of n-tile nt for mma.m16n8k32: the codes of pairs
// (kt = j, nt, r = 0) and (kt = j, nt, r = 1) as bytes [lo0, lo1, hi0, hi1] (unsigned).
template <int BITS>
QUASR_HD uint32_t int8_register(const uint32_t* words, int nt, int j) {
  const int p = (j * 4 + nt) * 2;
  return pair_codes<BITS>(words, p) | (pair_codes<BITS>(words, p + 1) << 8);
}

// The fp16 kernels' group parameters: half2 (scale, zb) per column, [N / 32][groups][lane / 4][nt]
// (a lane's four columns in one 16-byte load), zb = 1024 + zero (or the zero itself when some zero
// is fractional, HQQ: then the kernels subtract 1024 first). Written by quasr.kernels.cuda_layout.
QUASR_HD int64_t f16_param_index(int64_t ns, int64_t group, int64_t groups, int lane, int nt) {
  return ((ns * groups + group) * 8 + lane / 4) * 4 + nt;
}

// The int8 kernels' group parameters, float32 (s, s * z, Wsum) per column, laid out for the mma
// accumulator (column 8 nt + 2 t + i of lane t = lane % 4): [N / 32][groups][3][t][nt][i].
QUASR_HD int64_t i8_param_index(int64_t ns, int64_t group, int64_t groups, int kind, int col) {
  const int nt = col / 8, t = (col % 8) / 2, i = col % 2;
  return ((ns * groups + group) * 3 + kind) * 32 + t * 8 + nt * 2 + i;
}

// The k (within a 32-block) whose activation the int8 kernels store at position `pos`: mma.m16n8k32
// gives lane (t = lane % 4) the k positions 4t..4t+3 (+16), and int8_register's bytes hold the
// codes of k = 2t, 2t + 8, 2t + 1, 2t + 9 (+16); the activations are stored in that order.
QUASR_HD int act_position_k(int pos) {
  const int half = pos & 16, t = (pos & 15) >> 2, byte = pos & 3;
  return half + 2 * t + (byte & 2 ? 1 : 0) + (byte & 1 ? 8 : 0);
}

}  // namespace quasr_cuda
