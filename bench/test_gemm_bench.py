"""pytest-benchmark wrapper: `pytest bench/ --benchmark-only` (not part of the test suite)."""

import pytest
import torch

from gemm import packed_weight
from quasr import ops


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("m", [1, 8, 64])
def test_qlinear_384x1536(benchmark, bits, m):
    pw = packed_weight(1536, 384, bits)
    x = torch.randn(m, 384)
    benchmark(ops.qlinear, x, pw)


@pytest.mark.parametrize("m", [1, 8, 64])
def test_fp32_matmul_384x1536(benchmark, m):
    w, x = torch.randn(1536, 384), torch.randn(m, 384)
    benchmark(torch.matmul, x, w.T)
