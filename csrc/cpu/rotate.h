// Online rotation of activation rows for QuaRot/SpinQuant layers (python/quasr/rotation.py):
// y = (x * signs) (A_0 kron A_1 kron ... kron A_{n-1}) * scale, row-vector convention, where each
// factor A_i is either a Sylvester Hadamard matrix of order 2^m (applied as a fast Walsh-Hadamard
// transform: log2(order) add/sub passes) or a dense [order, order] matrix (a Paley Hadamard core or a
// learned SpinQuant factor). A row of length K is viewed as a tensor of shape [order_0, ..., order_{n-1}]
// and each factor contracts its own axis, so nothing K x K is ever formed.
// Raw pointers only, no torch headers (as qgemm.h).
#pragma once
#include <cstdint>

namespace quasr {

struct RotationFactor {
  int64_t order;       // size of this axis
  const float* dense;  // [order, order] row-major, or nullptr for the Sylvester Hadamard of this order
};

struct RotateArgs {
  const float* x;      // [M, K] row-major
  const int8_t* signs; // [K] (+-1), or nullptr
  float* y;            // [M, K] row-major (may equal x)
  int64_t M, K;
  const RotationFactor* factors;
  int n_factors;       // product of the orders == K
  int n_applied;       // factors 0..n_applied-1 are applied (a binding may run the rest another way)
  float scale;
};

// Scratch floats one worker needs (per thread).
int64_t rotate_scratch_floats(const RotateArgs& a);

// Rotate rows [m0, m1). `scratch` holds rotate_scratch_floats() floats.
void rotate_rows(const RotateArgs& a, int64_t m0, int64_t m1, float* scratch);

// The portable path (tests compare the AVX2 path with it).
void rotate_rows_scalar(const RotateArgs& a, int64_t m0, int64_t m1, float* scratch);

}  // namespace quasr
