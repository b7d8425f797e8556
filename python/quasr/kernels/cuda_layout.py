"""The CUDA backend's runtime layout of a packed weight (csrc/cuda/tile_layout.cuh explains it): the
codes re-tiled into mma fragment order (by the device kernel `quasr_cuda::tile`, or here on the
host for tests), and the group parameters of its fp16 and int8 kernels, made here in plain torch on
the weight's device. Never saved: the checkpoint keeps the canonical format (docs/FORMAT.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..format import PackedWeight, unpack_codes

TILE = 32  # a super-tile is 32 (K) x 32 (N)


@dataclass
class CudaLayout:
    words: torch.Tensor  # int32 [N/32 * Kp/32 * 32 * bits], fragment order
    f16_params: torch.Tensor  # float16 [N/32, groups, 8, 4, 2]: (scale, zb)
    frac_zeros: bool  # some zero is fractional (HQQ): zb is the zero itself, not 1024 + zero
    i8_params: torch.Tensor | None  # float32 [N/32, groups, 3, 4, 4, 2]: (s, s*z, Wsum), made on first int8 use
    bits: int
    group_size: int
    in_features: int
    out_features: int


def zero_points(pw: PackedWeight) -> torch.Tensor:
    """float32 [N, groups]: the stored zeros, or 2^(b-1) for symmetric weights."""
    if pw.zeros is None:
        return torch.full(pw.scales.shape, float(1 << (pw.bits - 1)), device=pw.scales.device)
    return pw.zeros.to(torch.float32)


def _pad_rows(t: torch.Tensor, rows: int, value: float = 0.0) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 1) + (0, rows - t.shape[0]), value=value)


def f16_params(pw: PackedWeight) -> tuple[torch.Tensor, bool]:
    """(params, frac_zeros): half2 (scale, zb) in the lane order of tile_layout.cuh f16_param_index."""
    n, groups = pw.scales.shape
    z = zero_points(pw)
    frac = bool((z != z.round()).any())
    zb = z if frac else z + 1024.0  # 1024 + z is exact in fp16 for integer z < 1024
    both = torch.stack([pw.scales.to(torch.float32), zb], dim=-1)
    both = _pad_rows(both, -(-n // TILE) * TILE)  # padding columns: scale 0
    ns = both.shape[0] // TILE
    return both.view(ns, 4, 8, groups, 2).permute(0, 3, 2, 1, 4).contiguous().to(torch.float16), frac


def i8_params(pw: PackedWeight) -> torch.Tensor:
    """float32 (s, s*z, Wsum = s * (sum of the group's codes - z * group_size)) per column and group,
    in the accumulator order of tile_layout.cuh i8_param_index."""
    n, groups = pw.scales.shape
    codes = unpack_codes(pw.packed, pw.bits).to(torch.float32)
    qsum = codes.view(n, groups, pw.group_size).sum(-1)
    s, z = pw.scales.to(torch.float32), zero_points(pw)
    params = torch.stack([s, s * z, s * (qsum - z * pw.group_size)], dim=-1)
    params = _pad_rows(params, -(-n // TILE) * TILE)
    ns = params.shape[0] // TILE
    # column 8 nt + 2 t + i -> [ns][group][kind][t][nt][i]
    return params.view(ns, 4, 4, 2, groups, 3).permute(0, 4, 5, 2, 1, 3).contiguous()
