"""The packed low-bit weight format, and its plain-torch reference (pack, unpack, dequantize).

Every kernel (C++ AVX2, scalar, CUDA, Triton) reads exactly this layout; docs/FORMAT.md explains it.

A weight W of shape [N, K] (N output features, K input features) is quantized group-wise along K:
    W[n, k] ~= (code[n, k] - zero[n, g]) * scale[n, g],   g = k // group_size
with integer codes in [0, 2**bits - 1]. Symmetric quantization stores no zeros: the zero point is
the constant 2**(bits - 1), so codes are signed values offset into the unsigned range.

Bit planes. A b-bit code is split into sub-planes of power-of-two widths, low bits first:
    8 -> (8,)   7 -> (4, 2, 1)   6 -> (4, 2)   5 -> (4, 1)   4 -> (4,)   3 -> (2, 1)   2 -> (2,)
Each plane packs its slice of every code of a row back to back, little-endian: element k of a plane
of width w sits in byte k * w // 8 at bit (k * w) % 8. A row is its planes concatenated, so it takes
exactly K_padded * b / 8 bytes: no padding to a power of two. Reading 8 consecutive codes of one
plane is one 32-, 16- or 8-bit load, a broadcast, a per-lane shift and a mask (see FORMAT.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)
# K is padded to a multiple of this so that every plane row is a whole number of 32-bit words and
# every SIMD step (8 codes) stays inside one group.
K_ALIGN = 32

_PLANES = {8: (8,), 7: (4, 2, 1), 6: (4, 2), 5: (4, 1), 4: (4,), 3: (2, 1), 2: (2,)}


def check_bits(bits: int) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be an integer from 2 to 8, got {bits!r}")
    return bits


def plane_widths(bits: int) -> tuple[int, ...]:
    """Widths of the sub-planes that store a code of `bits` bits, low bits first."""
    return _PLANES[check_bits(bits)]


def resolve_group_size(group_size: int | None, in_features: int) -> tuple[int, int]:
    """Return (effective group size, padded K) for a layer with `in_features` inputs.

    group_size None or -1 means one group per output channel (the whole padded row), and so does a
    group at least as wide as the row (a group past K would only store padding). Otherwise it must
    be a positive multiple of 32; K is zero-padded up to a multiple of it (never refused), and the
    padding is counted in the model size.
    """
    if in_features <= 0:
        raise ValueError(f"in_features must be positive, got {in_features}")
    if group_size is None or group_size == -1:
        padded = -(-in_features // K_ALIGN) * K_ALIGN
        return padded, padded
    if not isinstance(group_size, int) or group_size <= 0 or group_size % K_ALIGN:
        raise ValueError(
            f"group_size must be a positive multiple of {K_ALIGN} (e.g. 32, 64, 128) or -1 for "
            f"per-channel, got {group_size!r}"
        )
    aligned = -(-in_features // K_ALIGN) * K_ALIGN
    if group_size >= aligned:
        return aligned, aligned
    padded = -(-in_features // group_size) * group_size
    return group_size, padded


@dataclass
class PackedWeight:
    """A quantized [out_features, in_features] weight in the packed format."""

    packed: torch.Tensor  # uint8 [N, K_padded * bits // 8]
    scales: torch.Tensor  # float16 [N, K_padded // group_size]
    zeros: torch.Tensor | None  # float16 [N, n_groups] (asymmetric) or None (symmetric)
    bits: int
    group_size: int  # effective: K_padded for per-channel
    in_features: int  # K before padding

    @property
    def out_features(self) -> int:
        return self.packed.shape[0]

    @property
    def padded_in_features(self) -> int:
        return self.packed.shape[1] * 8 // self.bits

    @property
    def symmetric(self) -> bool:
        return self.zeros is None

    @property
    def nbytes(self) -> int:
        n = self.packed.numel() + self.scales.numel() * self.scales.element_size()
        if self.zeros is not None:
            n += self.zeros.numel() * self.zeros.element_size()
        return n

    def validate(self) -> None:
        """Check the invariants every kernel relies on; raise ValueError naming what is wrong."""
        check_bits(self.bits)
        n, row_bytes = self.packed.shape
        kp = self.padded_in_features
        if self.packed.dtype != torch.uint8 or row_bytes * 8 % self.bits:
            raise ValueError(f"packed must be uint8 [N, K_padded*bits/8], got {self.packed.dtype} {tuple(self.packed.shape)}")
        if kp % K_ALIGN or kp % self.group_size or not (0 < self.in_features <= kp):
            raise ValueError(f"inconsistent K: in_features={self.in_features}, padded={kp}, group_size={self.group_size}")
        if kp - self.in_features >= self.group_size and self.group_size != kp:
            raise ValueError(f"padding of {kp - self.in_features} columns is a whole group or more")
        groups = kp // self.group_size
        if tuple(self.scales.shape) != (n, groups) or self.scales.dtype != torch.float16:
            raise ValueError(f"scales must be float16 [{n}, {groups}], got {self.scales.dtype} {tuple(self.scales.shape)}")
        if self.zeros is not None and (tuple(self.zeros.shape) != (n, groups) or self.zeros.dtype != torch.float16):
            raise ValueError(f"zeros must be float16 [{n}, {groups}], got {self.zeros.dtype} {tuple(self.zeros.shape)}")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes [N, Kp] (0 <= code < 2**bits, Kp % 32 == 0) into uint8 [N, Kp*bits/8]."""
    check_bits(bits)
    if codes.dim() != 2 or codes.shape[1] % K_ALIGN:
        raise ValueError(f"codes must be [N, K] with K a multiple of {K_ALIGN}, got {tuple(codes.shape)}")
    c = codes.to(torch.int32)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise ValueError(f"codes out of range for {bits} bits")
    n, kp = c.shape
    planes, shift = [], 0
    for w in plane_widths(bits):
        sub = (c >> shift) & ((1 << w) - 1)
        per_byte = 8 // w
        sub = sub.view(n, kp // per_byte, per_byte)
        weights = torch.tensor([1 << (i * w) for i in range(per_byte)], dtype=torch.int32, device=c.device)
        planes.append((sub * weights).sum(-1).to(torch.uint8))
        shift += w
    return torch.cat(planes, dim=1).contiguous()


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of pack_codes: uint8 [N, Kp*bits/8] -> int32 codes [N, Kp]."""
    check_bits(bits)
    n, row_bytes = packed.shape
    kp = row_bytes * 8 // bits
    p = packed.to(torch.int32)
    codes = torch.zeros(n, kp, dtype=torch.int32, device=packed.device)
    offset, shift = 0, 0
    for w in plane_widths(bits):
        nbytes = kp * w // 8
        per_byte = 8 // w
        plane = p[:, offset : offset + nbytes]
        shifts = torch.tensor([i * w for i in range(per_byte)], dtype=torch.int32, device=packed.device)
        sub = (plane.unsqueeze(-1) >> shifts) & ((1 << w) - 1)
        codes |= sub.reshape(n, kp) << shift
        offset += nbytes
        shift += w
    return codes


def dequantize(pw: PackedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reference dequantization: PackedWeight -> dense [N, in_features] weight, on the packed
    weight's device (so packed modules on a GPU never round-trip through host memory)."""
    codes = unpack_codes(pw.packed, pw.bits).to(torch.float32)
    n, kp = codes.shape
    g = pw.group_size
    scales = pw.scales.to(codes.device, torch.float32).unsqueeze(-1)
    if pw.zeros is None:
        zeros = torch.full_like(scales, float(1 << (pw.bits - 1)))
    else:
        zeros = pw.zeros.to(codes.device, torch.float32).unsqueeze(-1)
    w = (codes.view(n, kp // g, g) - zeros) * scales
    return w.view(n, kp)[:, : pw.in_features].to(dtype)


def quantize_to_codes(
    weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int, group_size: int
) -> torch.Tensor:
    """Round a float [N, K] weight to codes [N, Kp] with the given per-group scales/zeros.

    Padding columns (K..Kp) get the code that dequantizes nearest to 0.
    """
    n, k = weight.shape
    g = group_size
    kp = scales.shape[1] * g
    w = torch.zeros(n, kp, dtype=torch.float32, device=weight.device)
    w[:, :k] = weight.to(torch.float32)
    s = scales.to(torch.float32).unsqueeze(-1)
    z = torch.full_like(s, float(1 << (bits - 1))) if zeros is None else zeros.to(torch.float32).unsqueeze(-1)
    q = torch.round(w.view(n, kp // g, g) / s + z).clamp_(0, (1 << bits) - 1)
    return q.view(n, kp).to(torch.int32)
