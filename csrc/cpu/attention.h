// Unmasked, non-causal attention over one head with bf16 operands and fp32 accumulation, for the
// long encoder self-attention of speech models (Whisper: 1500 x 1500 per head), where torch's fp32
// flash kernel was half of a quantized encoder's time (bench/RESULTS.md, issue 22).
//
// The math, for query rows i and key rows j of one head (docs/DESIGN.md, "Encoder attention"):
//   q~ = bf16(q * scale), k~ = bf16(k), v~ = bf16(v)            round to nearest even
//   s[i, j] = sum_d q~[i, d] k~[j, d]                           fp32
//   e[i, j] = exp(s[i, j] - max_j s[i, j])                      fp32 (exp_poly below)
//   o[i, :] = sum_j bf16(e[i, j]) v~[j, :] / sum_j e[i, j]      fp32
// The AVX-512 BF16 path (vdpbf16ps) and the portable path compute the same sums in different orders.
// Raw pointers only, no torch headers (as qgemm.h).
#pragma once
#include <cstdint>

namespace quasr {

// One head: rows of q [tq, d], k [tk, d], v [tk, d] and o [tq, d], each with its own row stride
// (in floats; the last dimension is contiguous).
struct AttentionHead {
  const float* q;
  const float* k;
  const float* v;
  float* o;
  int64_t tq, tk, d;
  int64_t q_stride, k_stride, v_stride, o_stride;
  float scale;
};

// Whether this CPU runs the AVX-512 BF16 path (checked at run time, never at build time).
bool attention_bf16_supported();

// Bytes of the per-head packed keys and values (bf16 pairs in the operand order of vdpbf16ps).
int64_t attention_pack_bytes(int64_t tk, int64_t d);
// Pack one head's keys and values into `pack` (attention_pack_bytes, 64-byte aligned).
void attention_pack(const AttentionHead& h, uint8_t* pack);

// Bytes of scratch one worker needs for attention_rows.
int64_t attention_scratch_bytes(int64_t tk, int64_t d);
// Output rows [r0, r1) of one head from its pack (AVX-512 BF16; attention_bf16_supported() must hold).
// `scratch`: attention_scratch_bytes, 64-byte aligned.
void attention_rows(const AttentionHead& h, const uint8_t* pack, int64_t r0, int64_t r1, uint8_t* scratch);

// The portable path: rows [r0, r1) from the unpacked head. `scratch`: tk floats.
void attention_rows_scalar(const AttentionHead& h, int64_t r0, int64_t r1, float* scratch);

}  // namespace quasr
