"""The Triton backend's runtime layout of a packed weight, made once from the canonical form.

The canonical form (quasr.format.PackedWeight, the saved form) stores each output row as its bit
planes back to back: uint8 [N, K_padded*b/8]. Every plane row is a whole number of 32-bit words, so a
row is `row_words = K_padded*b/32` little-endian int32 words, and element k of the plane of width w
that starts at word `off` sits in word `off + (k*w >> 5)` at bit `(k*w) & 31`.

`repack` views the rows as int32 words and transposes them to K-major, `qweight int32 [row_words, N]`:
the threads of a warp that own consecutive output columns read consecutive words (coalesced), and one
word holds 32/w consecutive k of one column. Scales and zeros are transposed the same way,
`[groups, N]`, so a K-tile of one group reads one contiguous [BLOCK_N] vector of each. Pure torch:
works on any device (CPU tensors for the interpreter tests). No dequantized copy is ever made.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quasr.format import PackedWeight, plane_widths


@dataclass
class TritonLayout:
    qweight: torch.Tensor  # int32 [row_words, N], K-major
    scales: torch.Tensor  # float16 [groups, N]
    zeros: torch.Tensor | None  # float16 [groups, N] (asymmetric) or None (symmetric: 2^(b-1))
    bits: int
    group_size: int  # effective (k_padded for per-channel)
    in_features: int  # K before padding
    k_padded: int
    n: int
    planes: tuple  # ((width, word offset in a row), ...) low bits first

    @property
    def out_features(self) -> int:
        return self.n

    @property
    def symmetric(self) -> bool:
        return self.zeros is None

    @property
    def groups(self) -> int:
        return self.k_padded // self.group_size

    @property
    def row_words(self) -> int:
        return self.k_padded * self.bits // 32

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    @property
    def widths(self) -> tuple:
        return tuple(w for w, _ in self.planes)

    def to(self, device) -> "TritonLayout":
        return TritonLayout(self.qweight.to(device), self.scales.to(device),
                            None if self.zeros is None else self.zeros.to(device), self.bits, self.group_size,
                            self.in_features, self.k_padded, self.n, self.planes)


def plane_offsets(bits: int, k_padded: int) -> tuple:
    """((width, word offset), ...) of the planes of a row of `k_padded` codes."""
    out, off = [], 0
    for w in plane_widths(bits):
        out.append((w, off))
        off += k_padded * w // 32
    return tuple(out)


def repack(pw: PackedWeight, device=None) -> TritonLayout:
    """PackedWeight (canonical, row-major planes) -> TritonLayout (K-major int32 words)."""
    pw.validate()
    dev = torch.device(device) if device is not None else pw.packed.device
    n, row_bytes = pw.packed.shape
    kp = pw.padded_in_features
    if row_bytes % 4:
        raise ValueError(f"packed rows of {row_bytes} bytes are not whole 32-bit words")
    words = pw.packed.to(dev).contiguous().view(torch.int32)  # [N, row_words], little-endian words
    qweight = words.t().contiguous()
    scales = pw.scales.to(dev).t().contiguous()
    zeros = None if pw.zeros is None else pw.zeros.to(dev).t().contiguous()
    return TritonLayout(qweight, scales, zeros, pw.bits, pw.group_size, pw.in_features, kp, n,
                        plane_offsets(pw.bits, kp))


def layout_nbytes(layout: TritonLayout) -> int:
    """Bytes the layout holds on its device (qweight + scales + zeros): the same as the packed form."""
    n = layout.qweight.numel() * 4 + layout.scales.numel() * 2
    if layout.zeros is not None:
        n += layout.zeros.numel() * 2
    return n


def unpack_layout(layout: TritonLayout) -> torch.Tensor:
    """Codes int32 [N, k_padded] read back from the layout with the kernels' addressing (for tests)."""
    kp = layout.k_padded
    k = torch.arange(kp, device=layout.qweight.device, dtype=torch.int64)
    codes = torch.zeros(kp, layout.n, dtype=torch.int32, device=layout.qweight.device)
    shift = 0
    for w, off in layout.planes:
        word = layout.qweight[off + ((k * w) >> 5)]  # [kp, N]
        bit = ((k * w) & 31).to(torch.int32).unsqueeze(1)
        codes |= ((word >> bit) & ((1 << w) - 1)) << shift
        shift += w
    return codes.t().contiguous()
